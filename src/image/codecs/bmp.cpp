// BMP, our own reader, accepting and refusing what Pillow's BmpImagePlugin does and returning
// the pixels its convert("RGB") gives, quirks included:
//  - headers of 12, 40, 52, 56, 64, 108 or 124 bytes; 1/4/8-bit palette, 16/24/32-bit pixels;
//    uncompressed, BI_BITFIELDS with the mask layouts Pillow knows, RLE8 and RLE4 (decoded as
//    Pillow's BmpRleDecoder does, which decides what malformed RLE data gives);
//  - a palette that is exactly a gray ramp (or black/white for two colours) makes Pillow skip
//    it and read the rows as 8-bit gray (1-bit for two colours) whatever the pixel depth;
//  - 16-bit channels are widened as c * 255 / 31 (or / 63) in integers; alpha is dropped;
//  - palette indices past the palette's end are black.
#include <algorithm>
#include <array>
#include <vector>

#include "image/codecs/codec.hpp"

namespace moxin::image_codecs {
namespace {

constexpr uint32_t kRaw = 0, kRle8 = 1, kRle4 = 2, kBitfields = 3;

// Little-endian reads from the file that fail cleanly past its end.
struct Reader {
  std::span<const uint8_t> bytes;
  const DecodeInput& in;
  bool has(size_t offset, size_t size) const {
    return offset <= bytes.size() && size <= bytes.size() - offset;
  }
  void require(size_t offset, size_t size, const char* what) const {
    if (!has(offset, size)) fail_image(in.source, "the BMP is truncated (in its ", what, ")");
  }
  uint32_t u16(size_t offset) const { return bytes[offset] | bytes[offset + 1] << 8; }
  uint32_t u32(size_t offset) const { return u16(offset) | u16(offset + 2) << 16; }
};

// How a row's pixels become RGB.
enum class PixelKind {
  kBilevel,  // Pillow mode "1": one bit per pixel, 0 -> black, 1 -> white
  kGray8,    // Pillow mode "L": one byte per pixel, the value is the gray level
  kIndexed,  // Pillow mode "P": 1/4/8-bit indices into the palette
  kRgb555,
  kRgb565,
  kBytes,  // 3 or 4 bytes per pixel; red, green and blue at byte offsets r, g, b
};

struct PixelFormat {
  PixelKind kind = PixelKind::kBytes;
  int bits = 0;  // bits per pixel as unpacked (may differ from the header's, see above)
  int r = 2, g = 1, b = 0;
};

struct Header {
  uint32_t size = 0;
  uint64_t width = 0, height = 0;
  bool top_down = false;
  int bits = 0;
  uint32_t compression = kRaw;
  uint64_t colors = 0;
  int palette_entry_size = 4;       // BGRX, or BGR in 12-byte headers
  std::array<uint32_t, 4> masks{};  // r, g, b, a for BI_BITFIELDS
};

Header read_header(const Reader& file, size_t& position) {
  Header h;
  file.require(14, 4, "header");
  h.size = file.u32(14);
  if (h.size != 12 && h.size != 40 && h.size != 52 && h.size != 56 && h.size != 64 &&
      h.size != 108 && h.size != 124) {
    fail_image(file.in.source, "unsupported BMP header size ", h.size,
               " (Pillow reads 12, 40, 52, 56, 64, 108 or 124)");
  }
  file.require(14, h.size, "header");
  const size_t fields = 18;  // the info header's fields, after its size
  position = 14 + h.size;
  if (h.size == 12) {  // OS/2 1.x / BITMAPCOREHEADER: 16-bit sizes, always bottom-up
    h.width = file.u16(fields);
    h.height = file.u16(fields + 2);
    h.bits = static_cast<int>(file.u16(fields + 6));
    h.palette_entry_size = 3;
    return h;
  }
  // Pillow treats the height as negative (top-down) exactly when its top byte is 0xFF.
  h.top_down = file.bytes[fields + 7] == 0xFF;
  h.width = file.u32(fields);
  h.height = h.top_down ? (uint64_t{1} << 32) - file.u32(fields + 4) : file.u32(fields + 4);
  h.bits = static_cast<int>(file.u16(fields + 10));
  h.compression = file.u32(fields + 12);
  h.colors = file.u32(fields + 28);
  if (h.compression == kBitfields) {
    if (h.size >= 52) {  // masks inside the header; alpha only from 56 bytes on
      for (int i = 0; i < (h.size >= 56 ? 4 : 3); ++i) h.masks[i] = file.u32(fields + 36 + 4 * i);
    } else {  // 40-byte header: three masks follow it
      file.require(position, 12, "bitfield masks");
      for (int i = 0; i < 3; ++i) h.masks[i] = file.u32(position + 4 * i);
      position += 12;
    }
  }
  return h;
}

// Byte offset of a channel whose mask is one whole byte of a 32-bit pixel.
int byte_of(uint32_t mask) {
  int offset = 0;
  while (mask > 0xFF) mask >>= 8, ++offset;
  return offset;
}

PixelFormat bitfields_format(const Header& h, const DecodeInput& in) {
  using Masks = std::array<uint32_t, 4>;
  // The layouts Pillow accepts (BmpImagePlugin's SUPPORTED table).
  static const Masks k32[] = {
      {0xFF0000, 0xFF00, 0xFF, 0x0},        {0xFF000000, 0xFF0000, 0xFF00, 0x0},
      {0xFF000000, 0xFF00, 0xFF, 0x0},      {0xFF000000, 0xFF0000, 0xFF00, 0xFF},
      {0xFF, 0xFF00, 0xFF0000, 0xFF000000}, {0xFF0000, 0xFF00, 0xFF, 0xFF000000},
      {0xFF000000, 0xFF00, 0xFF, 0xFF0000}, {0x0, 0x0, 0x0, 0x0}};
  const Masks& m = h.masks;
  const Masks rgb{m[0], m[1], m[2], 0};
  if (h.bits == 32 && std::find(std::begin(k32), std::end(k32), m) != std::end(k32)) {
    if (m == Masks{}) return {PixelKind::kBytes, 32, 2, 1, 0};  // read as BGRA
    return {PixelKind::kBytes, 32, byte_of(m[0]), byte_of(m[1]), byte_of(m[2])};
  }
  if (h.bits == 24 && rgb == Masks{0xFF0000, 0xFF00, 0xFF, 0}) return {PixelKind::kBytes, 24};
  if (h.bits == 16 && rgb == Masks{0xF800, 0x7E0, 0x1F, 0}) return {PixelKind::kRgb565, 16};
  if (h.bits == 16 && rgb == Masks{0x7C00, 0x3E0, 0x1F, 0}) return {PixelKind::kRgb555, 16};
  fail_image(in.source, "unsupported BMP bitfields layout (", h.bits, "-bit, masks ", std::hex,
             m[0], " ", m[1], " ", m[2], " ", m[3], ")");
}

using Palette = std::vector<std::array<uint8_t, 3>>;

// Reads the palette that follows the header (Pillow reads what is there, even if short) and
// decides between Pillow's modes "1", "L" (gray ramp, palette ignored) and "P".
PixelFormat read_palette(const Reader& file, const Header& h, size_t& position, Palette& palette) {
  if (h.colors == 0 || h.colors > 65536) {
    fail_image(file.in.source, "unsupported BMP palette size (", h.colors, " colors)");
  }
  const size_t entry = h.palette_entry_size;
  const size_t start = std::min(position, file.bytes.size());
  const size_t available = std::min<size_t>(entry * h.colors, file.bytes.size() - start);
  const uint8_t* p = file.bytes.data() + start;
  position += available;

  bool gray_ramp = true;
  for (uint64_t i = 0; i < h.colors && gray_ramp; ++i) {
    const uint8_t level = static_cast<uint8_t>(h.colors == 2 ? (i ? 255 : 0) : i);
    gray_ramp = i * entry + 3 <= available && p[i * entry] == level && p[i * entry + 1] == level &&
                p[i * entry + 2] == level;
  }
  if (gray_ramp)
    return {h.colors <= 2 ? PixelKind::kBilevel : PixelKind::kGray8, h.colors <= 2 ? 1 : 8};

  const size_t entries = available / entry;
  if (entries > 256) {
    fail_image(file.in.source, "the BMP palette has ", entries,
               " colors; at most 256 are supported");
  }
  palette.assign(256, {0, 0, 0});
  for (size_t i = 0; i < entries; ++i)
    palette[i] = {p[i * entry + 2], p[i * entry + 1], p[i * entry]};
  return {PixelKind::kIndexed, h.bits};
}

struct RowWriter {
  const PixelFormat& format;
  const Palette& palette;
  // `in` holds one row as stored (indices or gray levels one byte each for RLE-decoded rows).
  void operator()(const uint8_t* in, uint8_t* rgb, int width, bool one_byte_per_index) const {
    auto put = [&rgb](int x, uint8_t r, uint8_t g, uint8_t b) {
      rgb[3 * x] = r, rgb[3 * x + 1] = g, rgb[3 * x + 2] = b;
    };
    const int bits = one_byte_per_index ? 8 : format.bits;
    auto packed = [in, bits](int x) {  // the x-th sub-byte value, most significant bits first
      const int bit = x * bits;
      return (in[bit >> 3] >> (8 - bits - (bit & 7))) & ((1 << bits) - 1);
    };
    for (int x = 0; x < width; ++x) {
      switch (format.kind) {
        case PixelKind::kBilevel: {  // any nonzero value is white
          const uint8_t v = packed(x) ? 255 : 0;
          put(x, v, v, v);
          break;
        }
        case PixelKind::kGray8:
          put(x, in[x], in[x], in[x]);
          break;
        case PixelKind::kIndexed: {
          const auto& c = palette[bits == 8 ? in[x] : packed(x)];
          put(x, c[0], c[1], c[2]);
          break;
        }
        case PixelKind::kRgb555:
        case PixelKind::kRgb565: {
          const int v = in[2 * x] | in[2 * x + 1] << 8;
          const bool wide_green = format.kind == PixelKind::kRgb565;
          put(x, static_cast<uint8_t>(((v >> (wide_green ? 11 : 10)) & 31) * 255 / 31),
              static_cast<uint8_t>(wide_green ? ((v >> 5) & 63) * 255 / 63
                                              : ((v >> 5) & 31) * 255 / 31),
              static_cast<uint8_t>((v & 31) * 255 / 31));
          break;
        }
        case PixelKind::kBytes: {
          const uint8_t* p = in + static_cast<size_t>(x) * (format.bits / 8);
          put(x, p[format.r], p[format.g], p[format.b]);
          break;
        }
      }
    }
  }
};

// Pillow's BmpRleDecoder, step for step (it decides which malformed files decode and how):
// runs are clipped to the row, end-of-line pads with index 0, deltas skip with index 0, absolute
// runs are word-aligned on the file offset, and the data must cover every pixel.
std::vector<uint8_t> decode_rle(const Reader& file, size_t position, uint64_t width,
                                uint64_t height, bool rle4) {
  const std::span<const uint8_t> b = file.bytes;
  const size_t total = static_cast<size_t>(width * height);
  std::vector<uint8_t> out;
  out.reserve(total);
  uint64_t x = 0;
  auto left = [&] { return b.size() - std::min(position, b.size()); };
  while (out.size() < total) {
    if (left() < 2) break;
    uint64_t count = b[position];
    const uint8_t value = b[position + 1];
    position += 2;
    if (count > 0) {  // a run of one byte (RLE8) or of alternating nibbles (RLE4)
      if (x + count > width) count = x < width ? width - x : 0;
      for (uint64_t i = 0; i < count; ++i) {
        out.push_back(rle4 ? (i % 2 == 0 ? value >> 4 : value & 0x0F) : value);
      }
      x += count;
    } else if (value == 0) {  // end of line
      while (out.size() % width != 0) out.push_back(0);
      x = 0;
    } else if (value == 1) {  // end of bitmap
      break;
    } else if (value == 2) {  // delta: skip right and up
      if (left() < 2) break;
      const uint64_t skip = b[position] + uint64_t{b[position + 1]} * width;
      position += 2;
      out.resize(out.size() + std::min<uint64_t>(total - out.size(), skip), 0);
      x = out.size() % width;
    } else {  // absolute run of `value` literal pixels
      const size_t wanted = std::min<size_t>(total - out.size(), value);
      const size_t byte_count = rle4 ? (wanted + 1) / 2 : wanted;
      const size_t got = std::min(byte_count, left());
      for (size_t i = 0; i < got; ++i) {
        const uint8_t v = b[position + i];
        if (!rle4) {
          out.push_back(v);
          continue;
        }
        out.push_back(v >> 4);
        if (i * 2 + 1 < wanted) out.push_back(v & 0x0F);
      }
      position += got;
      if (got < byte_count || out.size() == total) break;
      x += value;
      if (position % 2 != 0) ++position;
    }
  }
  if (out.size() < total) {
    fail_image(file.in.source, "the BMP's RLE data ends after ", out.size(), " of ", total,
               " pixels (truncated or corrupt)");
  }
  return out;
}

}  // namespace

Image decode_bmp(const DecodeInput& in) {
  const Reader file{in.bytes, in};
  file.require(0, 14, "file header");
  size_t position = 0;
  Header h = read_header(file, position);

  if (h.bits != 1 && h.bits != 4 && h.bits != 8 && h.bits != 16 && h.bits != 24 && h.bits != 32) {
    fail_image(in.source, "unsupported BMP pixel depth (", h.bits, " bits per pixel)");
  }
  if (h.colors == 0) h.colors = uint64_t{1} << h.bits;
  size_t offset = file.u32(10);
  if (offset == 14 + h.size && h.bits <= 8) offset += h.palette_entry_size * h.colors;

  const bool rle = h.compression == kRle8 || h.compression == kRle4;
  PixelFormat format;
  if (h.compression == kBitfields) {
    format = bitfields_format(h, in);
  } else if (h.compression == kRaw || rle) {
    switch (h.bits) {
      case 16:
        format = {PixelKind::kRgb555, 16};
        break;
      case 24:
        format = {PixelKind::kBytes, 24};
        break;
      case 32:
        format = {PixelKind::kBytes, 32};
        break;
      default:
        format = {PixelKind::kIndexed, h.bits};
    }
  } else {
    fail_image(in.source, "unsupported BMP compression (", h.compression,
               "); Pillow reads uncompressed, RLE8, RLE4 and bitfields BMPs");
  }
  Palette palette;
  if (format.kind == PixelKind::kIndexed) format = read_palette(file, h, position, palette);
  if (offset == 0) offset = position;

  Image out = allocate_image(in, "BMP", h.width, h.height);
  const RowWriter write_row{format, palette};
  const size_t out_stride = static_cast<size_t>(out.width) * 3;
  auto row_of = [&](uint64_t stored) {  // rows are stored bottom-up unless top_down
    return out.rgb.data() + (h.top_down ? stored : h.height - 1 - stored) * out_stride;
  };

  if (rle) {
    // Pillow sets RLE-decoded bytes as raw "P" or "L" data (nonzero is white in mode "1");
    // it has no such path for 16/24/32-bit images.
    if (h.bits > 8) {
      fail_image(in.source, "unsupported BMP: ", h.compression == kRle8 ? "RLE8" : "RLE4",
                 " compression with ", h.bits, "-bit pixels");
    }
    const std::vector<uint8_t> indices =
        decode_rle(file, offset, h.width, h.height, h.compression == kRle4);
    for (uint64_t y = 0; y < h.height; ++y) {
      write_row(indices.data() + y * h.width, row_of(y), out.width, true);
    }
    return out;
  }

  const uint64_t stride = ((h.width * h.bits + 31) >> 3) & ~uint64_t{3};
  const uint64_t row_bytes = (h.width * format.bits + 7) / 8;
  if (stride < row_bytes) {
    fail_image(in.source, "the BMP's ", stride, "-byte rows are too short for ", h.width,
               " pixels of its gray palette (Pillow cannot decode it either)");
  }
  // Pillow's raw decoder needs every row but only the pixels, not the padding, of the last.
  const uint64_t needed = (h.height - 1) * stride + row_bytes;
  if (offset > in.bytes.size() || needed > in.bytes.size() - offset) {
    fail_image(in.source, "the BMP is truncated (its pixels need ", needed, " bytes from offset ",
               offset, ", the file has ", in.bytes.size(), " bytes)");
  }
  for (uint64_t y = 0; y < h.height; ++y) {
    write_row(in.bytes.data() + offset + y * stride, row_of(y), out.width, false);
  }
  return out;
}

}  // namespace moxin::image_codecs
