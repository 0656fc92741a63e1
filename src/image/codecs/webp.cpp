// WebP through libwebp's animation decoder, as Pillow decodes every WebP (still or animated):
// default options (RGBA output, fancy upsampling), first frame composed on the canvas; the
// alpha channel is then dropped, as convert("RGB") does.
#include <webp/decode.h>
#include <webp/demux.h>

#include <memory>

#include "image/codecs/codec.hpp"

namespace moxin::image_codecs {
namespace {

struct AnimDecoderDeleter {
  void operator()(WebPAnimDecoder* decoder) const { WebPAnimDecoderDelete(decoder); }
};

}  // namespace

Image decode_webp(const DecodeInput& in) {
  // The header's canvas size first: the decoder allocates the canvas as soon as it is created.
  WebPBitstreamFeatures features;
  if (WebPGetFeatures(in.bytes.data(), in.bytes.size(), &features) != VP8_STATUS_OK) {
    fail_image(in.source, "cannot read the WebP header (the file is truncated or corrupt)");
  }
  Image out = allocate_image(in, "WebP", static_cast<uint64_t>(features.width),
                             static_cast<uint64_t>(features.height));

  const WebPData data{in.bytes.data(), in.bytes.size()};
  WebPAnimDecoderOptions options;
  WebPAnimDecoderOptionsInit(&options);
  std::unique_ptr<WebPAnimDecoder, AnimDecoderDeleter> decoder(WebPAnimDecoderNew(&data, &options));
  WebPAnimInfo info;
  if (!decoder || !WebPAnimDecoderGetInfo(decoder.get(), &info)) {
    fail_image(in.source, "cannot decode the WebP (the file is truncated or corrupt)");
  }
  if (info.canvas_width != static_cast<uint32_t>(out.width) ||
      info.canvas_height != static_cast<uint32_t>(out.height)) {
    fail_image(in.source, "the WebP canvas is ", info.canvas_width, "x", info.canvas_height,
               " but its header says ", out.width, "x", out.height);
  }
  uint8_t* rgba = nullptr;
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(decoder.get(), &rgba, &timestamp)) {
    fail_image(in.source,
               "cannot decode the WebP's first frame (the file is truncated or corrupt)");
  }
  const size_t pixels = static_cast<size_t>(out.width) * out.height;
  for (size_t i = 0; i < pixels; ++i) {
    out.rgb[3 * i] = rgba[4 * i];
    out.rgb[3 * i + 1] = rgba[4 * i + 1];
    out.rgb[3 * i + 2] = rgba[4 * i + 2];
  }
  return out;
}

}  // namespace moxin::image_codecs
