// Internal interface between the format sniffer (decode.cpp) and the per-format decoders.
// Each decoder reproduces Pillow's `Image.open(...).convert("RGB")` for its format.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <utility>

#include "core/check.hpp"
#include "image/image.hpp"

namespace moxin::image_codecs {

// Told, as a decoder goes, that the first `rows` rows of `image` (allocated at its full size and
// filled from the top) hold their final pixels. Decoders that finish rows in order report them
// (JPEG); the others never call it. A decoder that has reported rows and then fails reports
// kDecodeAbandoned before it frees `image`, so that no reader outlives the pixels.
using RowsDecoded = std::function<void(const Image& image, int rows)>;
constexpr int kDecodeAbandoned = -1;

struct DecodeInput {
  std::span<const uint8_t> bytes;
  const DecodeLimits& limits;
  std::string_view source;
  const RowsDecoded* rows_decoded = nullptr;
};

// Sniffs the format and decodes (decode_image() with the hook).
Image decode_any(const DecodeInput& in);

// Whether decode_any() reports rows for these bytes (a JPEG, with the JPEG codec built in).
bool reports_rows(std::span<const uint8_t> bytes);

template <typename... Args>
[[noreturn]] void fail_image(std::string_view source, Args&&... args) {
  fail("[image] ", source, ": ", std::forward<Args>(args)...);
}

// Validates the size a header announces (non-zero, within the pixel limit) before anything is
// decoded, and returns an image of that size with its pixel buffer allocated.
Image allocate_image(const DecodeInput& in, std::string_view format, uint64_t width,
                     uint64_t height);

// Pillow's MULDIV255 and CLIP8: a * b / 255 rounded (exactly as Pillow computes it) and the
// clamp Pillow applies to converted channel values.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}
inline uint8_t clip8(int v) { return static_cast<uint8_t>(v <= 0 ? 0 : v < 256 ? v : 255); }

// Decoders for the formats whose codec was found at configure time (MOXIN_HAVE_*); BMP is
// always built.
Image decode_jpeg(const DecodeInput& in);
Image decode_png(const DecodeInput& in);
Image decode_webp(const DecodeInput& in);
Image decode_gif(const DecodeInput& in);
Image decode_bmp(const DecodeInput& in);

}  // namespace moxin::image_codecs
