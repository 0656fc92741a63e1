// One image codec, then the resize and the model's preprocessing (both ways: after the decode, and
// banded during it). Built once per format with
// MOXIN_FUZZ_MAGIC, the format's signature, put in front of inputs that lack it so that every
// input reaches that codec. Decoded images are small (a pixel limit keeps iterations fast).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "image/image.hpp"
#include "moxin/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  static const std::string_view magic(MOXIN_FUZZ_MAGIC, sizeof(MOXIN_FUZZ_MAGIC) - 1);
  std::vector<uint8_t> bytes;
  if (size < magic.size() || std::memcmp(data, magic.data(), magic.size()) != 0) bytes.assign(magic.begin(), magic.end());
  bytes.insert(bytes.end(), data, data + size);
  try {
    const Image image = decode_image(bytes, DecodeLimits{1 << 18}, "fuzz input");
    if (image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3) __builtin_trap();
    // A resize to a size drawn from the input, then the real preprocessing at a small size.
    const int width = 1 + bytes.back() % 40, height = 1 + bytes[bytes.size() / 2] % 40;
    const Image resized = resize_bicubic(image, width, height);
    if (resized.width != width || resized.height != height) __builtin_trap();
    // The banded path (the first resize pass on rows as they decode) gives the two-step bytes.
    const PreprocessedImage whole = preprocess_image(image, 28);
    const PreprocessedImage banded = decode_and_preprocess(bytes, DecodeLimits{1 << 18}, "fuzz input", 28);
    if (banded.resized != whole.resized || banded.dino != whole.dino || banded.siglip != whole.siglip) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
