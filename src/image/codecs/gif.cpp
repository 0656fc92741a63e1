// GIF through giflib: the first frame, on the logical screen, as Pillow composes it.
//  - The canvas is the logical screen, enlarged when the frame extends past it; pixels outside
//    the frame hold the frame's transparent index when its graphic control extension sets one,
//    else index 0.
//  - Indices go through the local colour table, else the global one, skipping a table that is
//    exactly the gray ramp (entry i == (i, i, i)); with neither, a pixel's gray level is its
//    index (Pillow's mode "L"). Indices past the table's end are black.
#include <gif_lib.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "image/codecs/codec.hpp"

namespace moxin::image_codecs {
namespace {

struct MemoryReader {
  std::span<const uint8_t> bytes;
  size_t position = 0;
};

int read_bytes(GifFileType* gif, GifByteType* out, int length) {
  auto* reader = static_cast<MemoryReader*>(gif->UserData);
  const size_t n = std::min(static_cast<size_t>(length), reader->bytes.size() - reader->position);
  std::memcpy(out, reader->bytes.data() + reader->position, n);
  reader->position += n;
  return static_cast<int>(n);
}

struct GifCloser {
  void operator()(GifFileType* gif) const {
    int error = 0;
    DGifCloseFile(gif, &error);
  }
};
using GifHandle = std::unique_ptr<GifFileType, GifCloser>;

[[noreturn]] void fail_gif(const DecodeInput& in, int error) {
  const char* what =
      error == D_GIF_ERR_READ_FAILED ? "the file is truncated" : GifErrorString(error);
  fail_image(in.source, "cannot decode the GIF: ", what ? what : "unknown giflib error");
}

bool is_gray_ramp(const ColorMapObject* map) {
  for (int i = 0; i < map->ColorCount; ++i) {
    const GifColorType& c = map->Colors[i];
    if (c.Red != i || c.Green != i || c.Blue != i) return false;
  }
  return true;
}

// The table Pillow ends up using; nullptr means mode "L" (value = index). A gray-ramp local
// table does not hide a coloured global one: Pillow then opens the frame as "L" but applies
// the global palette to it when the pixels are loaded.
const ColorMapObject* frame_palette(const GifFileType* gif) {
  for (const ColorMapObject* map : {gif->Image.ColorMap, gif->SColorMap}) {
    if (map && !is_gray_ramp(map)) return map;
  }
  return nullptr;
}

// Reads records up to the first image descriptor; returns the transparent index of the last
// graphic control extension that sets one, or -1.
int read_to_first_frame(GifFileType* gif, const DecodeInput& in) {
  int transparent = -1;
  for (;;) {
    GifRecordType type = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(gif, &type) == GIF_ERROR) fail_gif(in, gif->Error);
    if (type == IMAGE_DESC_RECORD_TYPE) {
      if (DGifGetImageDesc(gif) == GIF_ERROR) fail_gif(in, gif->Error);
      return transparent;
    }
    if (type == TERMINATE_RECORD_TYPE) fail_image(in.source, "the GIF contains no image");
    if (type != EXTENSION_RECORD_TYPE) continue;
    int code = 0;
    GifByteType* block = nullptr;
    if (DGifGetExtension(gif, &code, &block) == GIF_ERROR) fail_gif(in, gif->Error);
    // giflib's blocks start with their length; GCE: flags, delay (2 bytes), transparent index.
    if (code == GRAPHICS_EXT_FUNC_CODE && block && block[0] >= 4 && (block[1] & 1)) {
      transparent = block[4];
    }
    while (block) {
      if (DGifGetExtensionNext(gif, &block) == GIF_ERROR) fail_gif(in, gif->Error);
    }
  }
}

}  // namespace

Image decode_gif(const DecodeInput& in) {
  MemoryReader reader{in.bytes};
  int error = 0;
  GifHandle gif(DGifOpen(&reader, read_bytes, &error));
  if (!gif) fail_gif(in, error);
  const int transparent = read_to_first_frame(gif.get(), in);

  const GifImageDesc& frame = gif->Image;
  const uint64_t width = std::max<uint64_t>(gif->SWidth, uint64_t(frame.Left) + frame.Width);
  const uint64_t height = std::max<uint64_t>(gif->SHeight, uint64_t(frame.Top) + frame.Height);
  Image out = allocate_image(in, "GIF", width, height);

  std::vector<uint8_t> indices(static_cast<size_t>(out.width) * out.height,
                               static_cast<uint8_t>(transparent >= 0 ? transparent : 0));
  std::vector<GifPixelType> line(std::max(frame.Width, 1));
  auto read_row = [&](int row) {
    if (DGifGetLine(gif.get(), line.data(), frame.Width) == GIF_ERROR) fail_gif(in, gif->Error);
    std::copy(line.begin(), line.begin() + frame.Width,
              indices.begin() + (static_cast<size_t>(frame.Top) + row) * out.width + frame.Left);
  };
  if (frame.Interlace) {
    // The four interlace passes: rows 0, 8, 16...; 4, 12...; 2, 6, 10...; 1, 3, 5...
    constexpr int kStart[] = {0, 4, 2, 1}, kStep[] = {8, 8, 4, 2};
    for (int pass = 0; pass < 4; ++pass) {
      for (int row = kStart[pass]; row < frame.Height; row += kStep[pass]) read_row(row);
    }
  } else {
    for (int row = 0; row < frame.Height; ++row) read_row(row);
  }

  const ColorMapObject* palette = frame_palette(gif.get());
  for (size_t i = 0; i < indices.size(); ++i) {
    const int index = indices[i];
    uint8_t* rgb = out.rgb.data() + 3 * i;
    if (!palette) {
      rgb[0] = rgb[1] = rgb[2] = static_cast<uint8_t>(index);
    } else if (index < palette->ColorCount) {
      const GifColorType& c = palette->Colors[index];
      rgb[0] = c.Red, rgb[1] = c.Green, rgb[2] = c.Blue;
    } else {
      rgb[0] = rgb[1] = rgb[2] = 0;
    }
  }
  return out;
}

}  // namespace moxin::image_codecs
