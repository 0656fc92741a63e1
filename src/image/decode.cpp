// Format sniffing and dispatch, the pixel limit, and reading image files.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "image/codecs/codec.hpp"

namespace moxin {
namespace image_codecs {

Image allocate_image(const DecodeInput& in, std::string_view format, uint64_t width,
                     uint64_t height) {
  if (width == 0 || height == 0) {
    fail_image(in.source, "the ", format, " header gives a size of ", width, "x", height,
               " pixels; an image needs at least one pixel in each direction");
  }
  // The products below cannot overflow: both factors are at most 2^32.
  const uint64_t pixels = width * height;
  if (pixels > in.limits.max_pixels) {
    fail_image(in.source, "the ", format, " image is ", width, "x", height, " = ", pixels,
               " pixels, over the limit of ", in.limits.max_pixels,
               " pixels (a guard against decompression bombs); raise --max-pixels to allow it");
  }
  constexpr uint64_t kMaxSide = std::numeric_limits<int>::max();
  if (width > kMaxSide || height > kMaxSide || pixels > std::numeric_limits<size_t>::max() / 3) {
    fail_image(in.source, "the ", format, " image is ", width, "x", height,
               " pixels, too large to hold in memory");
  }
  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.rgb.resize(static_cast<size_t>(pixels) * 3);
  return image;
}

}  // namespace image_codecs

namespace {

using image_codecs::DecodeInput;
using image_codecs::fail_image;

enum class Format { kJpeg, kPng, kGif, kWebp, kBmp, kUnknown };

bool starts_with(std::span<const uint8_t> bytes, size_t offset, std::string_view magic) {
  return bytes.size() >= offset + magic.size() &&
         std::memcmp(bytes.data() + offset, magic.data(), magic.size()) == 0;
}

// The same signatures Pillow's plugins accept (their `_accept` functions).
Format sniff(std::span<const uint8_t> bytes) {
  if (starts_with(bytes, 0, "\xFF\xD8\xFF")) return Format::kJpeg;
  if (starts_with(bytes, 0, "\x89PNG\r\n\x1A\n")) return Format::kPng;
  if (starts_with(bytes, 0, "GIF87a") || starts_with(bytes, 0, "GIF89a")) return Format::kGif;
  if (starts_with(bytes, 0, "RIFF") && starts_with(bytes, 8, "WEBP")) return Format::kWebp;
  if (starts_with(bytes, 0, "BM")) return Format::kBmp;
  return Format::kUnknown;
}

// "89 50 4e 47 ... ("?PNG....")": the first bytes in hex and as text, to tell what it is.
std::string describe_first_bytes(std::span<const uint8_t> bytes) {
  const size_t n = std::min<size_t>(bytes.size(), 12);
  std::string hex, text;
  for (size_t i = 0; i < n; ++i) {
    char buf[4];
    std::snprintf(buf, sizeof buf, i ? " %02x" : "%02x", bytes[i]);
    hex += buf;
    text += (bytes[i] >= 0x20 && bytes[i] < 0x7F) ? static_cast<char>(bytes[i]) : '.';
  }
  return cat(hex, " (\"", text, "\")");
}

[[noreturn, maybe_unused]] void fail_not_built(std::string_view source, std::string_view format,
                                               std::string_view library) {
  fail_image(source, format, " support was not built in (install ", library, " and rebuild)");
}

}  // namespace

Image image_codecs::decode_any(const DecodeInput& in) {
  const std::span<const uint8_t> bytes = in.bytes;
  const std::string_view source = in.source;
  if (bytes.empty()) fail_image(source, "the image is empty (0 bytes)");
  switch (sniff(bytes)) {
    case Format::kJpeg:
#ifdef MOXIN_HAVE_JPEG
      return image_codecs::decode_jpeg(in);
#else
      fail_not_built(source, "JPEG", "libjpeg-turbo");
#endif
    case Format::kPng:
#ifdef MOXIN_HAVE_PNG
      return image_codecs::decode_png(in);
#else
      fail_not_built(source, "PNG", "libpng");
#endif
    case Format::kGif:
#ifdef MOXIN_HAVE_GIF
      return image_codecs::decode_gif(in);
#else
      fail_not_built(source, "GIF", "giflib");
#endif
    case Format::kWebp:
#ifdef MOXIN_HAVE_WEBP
      return image_codecs::decode_webp(in);
#else
      fail_not_built(source, "WebP", "libwebp");
#endif
    case Format::kBmp:
      return image_codecs::decode_bmp(in);
    case Format::kUnknown:
      break;
  }
  fail_image(source, "not a supported image format (JPEG, PNG, WebP, GIF or BMP); it starts with ",
             describe_first_bytes(bytes));
}

bool image_codecs::reports_rows(std::span<const uint8_t> bytes) {
#ifdef MOXIN_HAVE_JPEG
  return sniff(bytes) == Format::kJpeg;
#else
  (void)bytes;
  return false;
#endif
}

Image decode_image(std::span<const uint8_t> bytes, const DecodeLimits& limits, std::string_view source) {
  return image_codecs::decode_any({bytes, limits, source});
}

std::vector<uint8_t> read_image_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_image(path, "cannot open the image file: ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail_image(path, "the path is a directory, not an image file");
  }
  // Read until EOF rather than trusting st_size, so pipes and special files work too.
  if (st.st_size > 0) bytes.reserve(static_cast<size_t>(st.st_size));
  uint8_t chunk[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail_image(path, "cannot read the image file: ", std::strerror(err));
    }
    bytes.insert(bytes.end(), chunk, chunk + n);
  }
  ::close(fd);
  return bytes;
}

}  // namespace moxin
