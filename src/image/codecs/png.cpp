// PNG through libpng. libpng only de-interlaces; the conversion to RGB is ours, because Pillow
// has its own PNG reader and modes whose convert("RGB") differs from libpng's transforms:
// 16-bit gray is Pillow mode "I;16", converted by clamping the value to 255 (not scaling);
// 16-bit colour keeps the most significant byte; alpha is dropped, never composited. Like
// Pillow, we stop once every row is decoded: a file cut after its last IDAT chunk's data
// (missing that chunk's CRC or the IEND chunk) still decodes.
#include <png.h>

#include <algorithm>
#include <array>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "image/codecs/codec.hpp"

namespace moxin::image_codecs {
namespace {

struct PngLayout {
  int bit_depth = 0, color_type = 0;
  bool interlaced = false;
  // PLTE entries; Pillow's palette is black past the entries the file defines.
  std::array<std::array<uint8_t, 3>, 256> palette{};
};

// Owns libpng's state; lives in the caller's frame so that the longjmp error path skips no
// destructor.
struct PngState {
  std::span<const uint8_t> bytes;
  size_t position = 0;
  png_structp png = nullptr;
  png_infop info = nullptr;
  char message[256] = {};
  PngLayout layout;
  std::vector<uint8_t> raw;  // one row, or the whole image when interlaced
  std::vector<png_bytep> row_pointers;
  bool reading_rows = false;     // past the header and the size check
  int rows_converted = 0;        // non-interlaced rows already converted to RGB
  bool pixels_complete = false;  // set when the data ran out only after the last row
  ~PngState() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

// Jumps back to run_libpng itself: if it returned, libpng would print the message to stderr.
[[noreturn]] void on_error(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof state->message, "%s", message);
  png_longjmp(png, 1);
}

// libpng warns about recoverable problems (bad ancillary-chunk CRCs, extra data); Pillow also
// decodes such files.
void on_warning(png_structp, png_const_charp) {}

// After the last row of the last pass libpng reads on to the end of the zlib stream; by then
// its row counter has passed the last row (non-interlaced) or its pass counter the last pass.
bool all_rows_read(png_structp png, png_infop info) {
  if (png_get_interlace_type(png, info) != PNG_INTERLACE_NONE) {
    return png_get_current_pass_number(png) >= 7;
  }
  return png_get_current_row_number(png) >= png_get_image_height(png, info);
}

void read_bytes(png_structp png, png_bytep out, png_size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (state->bytes.size() - state->position < length) {
    state->pixels_complete = state->reading_rows && all_rows_read(png, state->info);
    png_error(png, "the file is truncated");
  }
  std::memcpy(out, state->bytes.data() + state->position, length);
  state->position += length;
}

// One raw PNG row (big-endian samples, sub-byte pixels packed from the most significant bit)
// to RGB8, as Pillow's unpacker for the PNG's mode followed by convert("RGB").
void convert_row(const PngLayout& layout, const uint8_t* in, uint8_t* rgb, int width) {
  const int depth = layout.bit_depth;
  auto put = [&rgb](int x, uint8_t r, uint8_t g, uint8_t b) {
    rgb[3 * x] = r;
    rgb[3 * x + 1] = g;
    rgb[3 * x + 2] = b;
  };
  auto packed = [in, depth](int x) {  // the x-th sub-byte sample
    const int bit = x * depth;
    return (in[bit >> 3] >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
  };
  switch (layout.color_type) {
    case PNG_COLOR_TYPE_GRAY:
      for (int x = 0; x < width; ++x) {
        uint8_t v;
        if (depth == 16) {
          v = in[2 * x] == 0 ? in[2 * x + 1] : 255;  // Pillow's I;16 -> RGB clamps
        } else if (depth == 8) {
          v = in[x];
        } else {
          v = static_cast<uint8_t>(packed(x) * 255 / ((1 << depth) - 1));  // 1/2/4-bit scaled
        }
        put(x, v, v, v);
      }
      break;
    case PNG_COLOR_TYPE_PALETTE:
      for (int x = 0; x < width; ++x) {
        const auto& c = layout.palette[depth == 8 ? in[x] : packed(x)];
        put(x, c[0], c[1], c[2]);
      }
      break;
    default: {  // gray+alpha, RGB, RGBA: keep the colour samples' most significant bytes
      const int channels = layout.color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                           : layout.color_type == PNG_COLOR_TYPE_RGB      ? 3
                                                                          : 4;
      const int sample = depth / 8;
      const int pixel = channels * sample;
      const bool gray = layout.color_type == PNG_COLOR_TYPE_GRAY_ALPHA;
      for (int x = 0; x < width; ++x) {
        const uint8_t* p = in + x * pixel;
        if (gray) {
          put(x, p[0], p[0], p[0]);
        } else {
          put(x, p[0], p[sample], p[2 * sample]);
        }
      }
    }
  }
}

// The libpng calls. Any of them may longjmp back to run_libpng: no local here may have a
// destructor. C++ exceptions (the size limit) propagate normally.
void decode_with_libpng(PngState& state, const DecodeInput& in, Image& out) {
  png_structp png = state.png;
  png_infop info = state.info;
  png_set_read_fn(png, &state, read_bytes);
  // Only our pixel limit applies (libpng's default caps each side at one million).
  png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_read_info(png, info);

  PngLayout& layout = state.layout;
  layout.bit_depth = png_get_bit_depth(png, info);
  layout.color_type = png_get_color_type(png, info);
  layout.interlaced = png_get_interlace_type(png, info) != PNG_INTERLACE_NONE;
  if (layout.color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp entries = nullptr;
    int count = 0;
    if (png_get_PLTE(png, info, &entries, &count) != 0) {
      for (int i = 0; i < std::min(count, 256); ++i) {
        layout.palette[i] = {entries[i].red, entries[i].green, entries[i].blue};
      }
    }
  }
  out = allocate_image(in, "PNG", png_get_image_width(png, info), png_get_image_height(png, info));

  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  state.reading_rows = true;
  const size_t row_bytes = png_get_rowbytes(png, info);
  if (!layout.interlaced) {
    state.raw.resize(row_bytes);
    for (int y = 0; y < out.height; ++y) {
      png_read_row(png, state.raw.data(), nullptr);
      convert_row(layout, state.raw.data(), out.rgb.data() + y * size_t(out.width) * 3, out.width);
      state.rows_converted = y + 1;
    }
  } else {
    // Adam7 passes each fill part of every row: keep the whole raw image.
    state.raw.resize(row_bytes * out.height);
    state.row_pointers.resize(out.height);
    for (int y = 0; y < out.height; ++y) state.row_pointers[y] = state.raw.data() + y * row_bytes;
    png_read_image(png, state.row_pointers.data());
  }
  // No png_read_end: like Pillow, whatever follows the pixel data does not matter.
}

// Returns false, with state.message set, when libpng reported an error.
bool run_libpng(PngState& state, const DecodeInput& in, Image& out) {
  if (setjmp(png_jmpbuf(state.png))) return false;
  decode_with_libpng(state, in, out);
  return true;
}

}  // namespace

Image decode_png(const DecodeInput& in) {
  PngState state;
  state.bytes = in.bytes;
  state.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, on_error, on_warning);
  if (state.png) state.info = png_create_info_struct(state.png);
  if (!state.png || !state.info) fail_image(in.source, "cannot initialize libpng");
  Image out;
  if (!run_libpng(state, in, out) && !state.pixels_complete) {
    fail_image(in.source, "cannot decode the PNG: ", state.message);
  }
  // The rows not converted yet: all of an interlaced image, or the last row when libpng failed
  // only while reading on after it.
  const size_t stride = size_t(out.width) * 3;
  if (state.layout.interlaced) {
    for (int y = 0; y < out.height; ++y) {
      convert_row(state.layout, state.row_pointers[y], out.rgb.data() + y * stride, out.width);
    }
  } else if (state.rows_converted < out.height) {
    convert_row(state.layout, state.raw.data(), out.rgb.data() + (out.height - 1) * stride,
                out.width);
  }
  return out;
}

}  // namespace moxin::image_codecs
