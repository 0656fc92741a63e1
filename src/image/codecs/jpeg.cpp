// JPEG through libjpeg(-turbo) with the settings Pillow's decoder uses: ISLOW IDCT, fancy
// upsampling, the library's own colour-space guess; 1 component -> gray, 3 -> RGB, 4 -> CMYK.
#include <algorithm>
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "image/codecs/codec.hpp"

namespace moxin::image_codecs {
namespace {

struct ErrorManager {
  jpeg_error_mgr pub;  // first: libjpeg hands callbacks a pointer to it
  std::jmp_buf jump;
  // libjpeg pads a file that ends early with a fake end-of-image marker and only warns; Pillow
  // reports "image file is truncated" instead, except when just the markers after the last
  // scanline are missing. So running out of data is fatal until every scanline is read.
  bool eof_is_fatal = true;
  char message[JMSG_LENGTH_MAX] = {};
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  cinfo->err->format_message(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings about corrupt data that libjpeg recovered from are ignored, as Pillow ignores them.
void on_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && err->eof_is_fatal) {
    std::snprintf(err->message, sizeof err->message, "the file is truncated");
    std::longjmp(err->jump, 1);
  }
}

// Owns libjpeg's state; lives in the caller's frame so that the longjmp error path skips no
// destructor.
struct JpegState {
  jpeg_decompress_struct cinfo{};
  ErrorManager err;
  bool created = false;
  std::vector<uint8_t> row;
  ~JpegState() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// Pillow reads 4-component JPEGs as Adobe-style inverted CMYK ("CMYK;I") and converts CMYK to
// RGB as r = (255 - k) - (255 - k) * c / 255 with its MULDIV255 rounding.
void cmyk_row_to_rgb(const uint8_t* cmyk, uint8_t* rgb, int width) {
  for (int x = 0; x < width; ++x, cmyk += 4, rgb += 3) {
    const int not_k = cmyk[3];  // 255 - (255 - raw k)
    for (int c = 0; c < 3; ++c) rgb[c] = clip8(not_k - muldiv255(255 - cmyk[c], not_k));
  }
}

void convert_row(const uint8_t* in, uint8_t* rgb, int width, int components) {
  switch (components) {
    case 1:
      for (int x = 0; x < width; ++x) rgb[3 * x] = rgb[3 * x + 1] = rgb[3 * x + 2] = in[x];
      break;
    case 3:
      std::copy(in, in + 3 * static_cast<size_t>(width), rgb);
      break;
    default:
      cmyk_row_to_rgb(in, rgb, width);
  }
}

constexpr JDIMENSION kRowsPerReport = 16;

// The libjpeg calls. Any of them may longjmp back to run_libjpeg: no local here may have a
// destructor. C++ exceptions (the size limit) propagate normally.
void decode_with_libjpeg(JpegState& state, const DecodeInput& in, Image& out) {
  jpeg_decompress_struct& cinfo = state.cinfo;
  jpeg_create_decompress(&cinfo);
  state.created = true;
  jpeg_mem_src(&cinfo, in.bytes.data(), static_cast<unsigned long>(in.bytes.size()));
  jpeg_read_header(&cinfo, TRUE);

  const int components = cinfo.num_components;
  switch (components) {
    case 1:
      cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case 3:
      cinfo.out_color_space = JCS_RGB;
      break;
    case 4:
      cinfo.out_color_space = JCS_CMYK;
      break;
    default:
      std::snprintf(state.err.message, sizeof state.err.message,
                    "cannot handle a JPEG with %d components (Pillow reads 1, 3 or 4)", components);
      std::longjmp(state.err.jump, 1);
  }
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  out = allocate_image(in, "JPEG", cinfo.image_width, cinfo.image_height);

  jpeg_start_decompress(&cinfo);
  const size_t stride = static_cast<size_t>(out.width) * 3;
  // RGB rows go straight into the image, several per call (libjpeg then skips its own
  // spare-row copy); gray and CMYK rows through a row buffer and a conversion.
  const bool direct = components == 3;
  state.row.resize(direct ? 0 : static_cast<size_t>(cinfo.output_width) * cinfo.output_components);
  JDIMENSION reported = 0;
  while (cinfo.output_scanline < cinfo.output_height) {
    const JDIMENSION y = cinfo.output_scanline;
    if (direct) {
      JSAMPROW rows[kRowsPerReport];
      const JDIMENSION count = std::min(kRowsPerReport, cinfo.output_height - y);
      for (JDIMENSION r = 0; r < count; ++r) rows[r] = out.rgb.data() + (y + r) * stride;
      jpeg_read_scanlines(&cinfo, rows, count);
    } else {
      JSAMPROW row = state.row.data();
      jpeg_read_scanlines(&cinfo, &row, 1);
      convert_row(row, out.rgb.data() + y * stride, out.width, components);
    }
    // Reported every kRowsPerReport rows or more: a listener wakes at most ~30 times for a photo.
    if (in.rows_decoded != nullptr &&
        (cinfo.output_scanline >= reported + kRowsPerReport || cinfo.output_scanline == cinfo.output_height)) {
      reported = cinfo.output_scanline;
      (*in.rows_decoded)(out, static_cast<int>(reported));
    }
  }
  state.err.eof_is_fatal = false;
  jpeg_finish_decompress(&cinfo);
}

// Returns false, with state.err.message set, when libjpeg reported an error.
bool run_libjpeg(JpegState& state, const DecodeInput& in, Image& out) {
  state.cinfo.err = jpeg_std_error(&state.err.pub);
  state.err.pub.error_exit = on_error;
  state.err.pub.emit_message = on_message;
  if (setjmp(state.err.jump)) return false;
  decode_with_libjpeg(state, in, out);
  return true;
}

}  // namespace

Image decode_jpeg(const DecodeInput& in) {
  JpegState state;
  Image out;
  if (!run_libjpeg(state, in, out)) {
    // The only way out of a decode that has reported rows, other than success (libjpeg reports
    // every error, its allocations' included, by longjmp).
    if (in.rows_decoded != nullptr) (*in.rows_decoded)(out, image_codecs::kDecodeAbandoned);
    fail_image(in.source, "cannot decode the JPEG: ", state.err.message);
  }
  return out;
}

}  // namespace moxin::image_codecs
