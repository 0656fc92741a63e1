// SHA-256 (FIPS 180-4), written here for the server's caches: image features are keyed by the
// digest of the image file's bytes, KV prefix blocks by a digest chain over their inputs. A
// cryptographic hash because the caches are shared by every client: a collision would hand one
// request another's image or KV cache, and a weak hash can be attacked on purpose.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace moxin {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  Sha256& update(std::span<const uint8_t> bytes);
  Sha256& update(const Digest& digest) { return update(std::span<const uint8_t>(digest)); }
  // Pads and returns the digest; the object must not be updated afterwards.
  Digest finish();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

Digest sha256(std::span<const uint8_t> bytes);
std::string to_hex(const Digest& digest);

// For unordered containers keyed by a digest: its first 8 bytes are already uniform.
struct DigestHash {
  size_t operator()(const Digest& d) const noexcept {
    size_t h = 0;
    for (int i = 0; i < 8; ++i) h = (h << 8) | d[static_cast<size_t>(i)];
    return h;
  }
};

}  // namespace moxin
