// Image decoding and the vision tower's preprocessing (docs/model.md section 2). Every step
// reproduces Pillow bit for bit: `Image.open(path).convert("RGB")` for decoding and
// `Image.resize((w, h), Image.BICUBIC)` for resizing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moxin {

// RGB8, row-major, interleaved: rgb[(y * width + x) * 3 + channel].
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

struct DecodeLimits {
  // Pillow's MAX_IMAGE_PIXELS (its decompression-bomb guard). Pillow only warns above it and
  // raises above twice it; we refuse anything above it, before any pixel is decoded.
  uint64_t max_pixels = 89478485;
};

// Decodes JPEG, PNG, WebP, GIF (first frame) or BMP, chosen by content sniffing (never by file
// extension). `source` names the input in error messages ("photo.jpg", "request image 2").
// Throws moxin::Error ("[image] <source>: ...") for unknown, truncated, corrupt, empty or
// oversized inputs and for formats whose codec was not built in.
Image decode_image(std::span<const uint8_t> bytes, const DecodeLimits& limits,
                   std::string_view source);

// The bytes of an image file (the path names it in errors: missing, a directory, unreadable).
std::vector<uint8_t> read_image_file(const std::string& path);

// Separable bicubic (a = -0.5), antialiased when shrinking: the horizontal pass first, its
// output rounded and clamped to uint8, then the vertical pass; a pass whose dimension does not
// change is skipped, as in Pillow. Throws moxin::Error on a non-positive target size.
Image resize_bicubic(const Image& src, int width, int height);

// "resize-naive": resize to size x size ignoring the aspect ratio, scale to [0, 1], then
// normalize once for DINOv2 and once for SigLIP. All three hold size * size * 3 values (HWC,
// i.e. NHWC with N = 1).
struct PreprocessedImage {
  std::vector<uint8_t> resized;
  std::vector<float> dino, siglip;
  int source_width = 0, source_height = 0;  // the image before resizing
};
PreprocessedImage preprocess_image(const Image& image, int size = 224);

// preprocess_image(decode_image(bytes, limits, source), size), the same values, sooner: a JPEG's
// horizontal resize pass runs on bands of rows on another thread while the rest decodes.
PreprocessedImage decode_and_preprocess(std::span<const uint8_t> bytes, const DecodeLimits& limits,
                                        std::string_view source, int size = 224);

}  // namespace moxin
