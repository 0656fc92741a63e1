// Decoder behaviour that needs no reference library: a BMP built by hand from its
// specification, and refusals of bad input, which must throw moxin::Error ("[image] <source>:
// ...") and never abort (libjpeg/libpng report errors by longjmp; giflib and libwebp by return
// codes). Pixel-exactness against Pillow is tests/py/test_image_formats.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "image/image.hpp"
#include "moxin/error.hpp"

namespace moxin {
namespace {

using Bytes = std::vector<uint8_t>;

void put32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// A 24-bit BITMAPINFOHEADER BMP: 14-byte file header, 40-byte info header, rows padded to 4
// bytes, stored bottom-up (positive height) or top-down (negative height), pixels as B, G, R.
Bytes bmp24(int width, int height, const Bytes& rows_in_file_order) {
  Bytes b(54 + rows_in_file_order.size(), 0);
  b[0] = 'B', b[1] = 'M';
  put32(b, 2, static_cast<uint32_t>(b.size()));
  put32(b, 10, 54);  // pixel data offset
  put32(b, 14, 40);
  put32(b, 18, static_cast<uint32_t>(width));
  put32(b, 22, static_cast<uint32_t>(height));
  b[26] = 1;   // planes
  b[28] = 24;  // bits per pixel
  std::copy(rows_in_file_order.begin(), rows_in_file_order.end(), b.begin() + 54);
  return b;
}

// 2x2: file rows (bottom first) are [blue, green] and [red, white], each padded to 8 bytes.
const Bytes kRows = {255, 0, 0, 0, 255, 0, 0, 0, /* */ 0, 0, 255, 255, 255, 255, 0, 0};

TEST(ImageDecode, BottomUpBmp) {
  const Image im = decode_image(bmp24(2, 2, kRows), {}, "test.bmp");
  ASSERT_EQ(im.width, 2);
  ASSERT_EQ(im.height, 2);
  EXPECT_EQ(im.rgb, (Bytes{255, 0, 0, 255, 255, 255, /* */ 0, 0, 255, 0, 255, 0}));
}

TEST(ImageDecode, TopDownBmp) {
  const Image im = decode_image(bmp24(2, -2, kRows), {}, "test.bmp");
  EXPECT_EQ(im.rgb, (Bytes{0, 0, 255, 0, 255, 0, /* */ 255, 0, 0, 255, 255, 255}));
}

// Expects a moxin::Error whose message starts with "[image] <source>: " and contains `what`.
void expect_refused(const Bytes& bytes, const std::string& what, DecodeLimits limits = {}) {
  const std::string source = "input under test";
  try {
    decode_image(bytes, limits, source);
    ADD_FAILURE() << "decoded without error; expected: " << what;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("[image] " + source + ": ", 0), 0u) << message;
    EXPECT_NE(message.find(what), std::string::npos) << message;
  }
}

Bytes with_tail(std::string head, size_t garbage) {
  Bytes b(head.begin(), head.end());
  for (size_t i = 0; i < garbage; ++i) b.push_back(static_cast<uint8_t>(i * 37 + 11));
  return b;
}

TEST(ImageDecode, RefusesEmptyAndUnknownInput) {
  expect_refused({}, "empty");
  expect_refused(with_tail("<html>", 20), "3c 68 74 6d 6c 3e");  // names the first bytes
}

TEST(ImageDecode, RefusesCorruptDataOfEveryFormatWithoutAborting) {
  // Signatures followed by garbage, and files cut right after their signature or headers.
  expect_refused(with_tail("\xFF\xD8\xFF", 0), "JPEG");
  expect_refused(with_tail("\xFF\xD8\xFF", 300), "JPEG");
  expect_refused(with_tail("\x89PNG\r\n\x1A\n", 0), "PNG");
  expect_refused(with_tail("\x89PNG\r\n\x1A\n", 300), "PNG");
  expect_refused(with_tail("GIF89a", 0), "GIF");
  expect_refused(with_tail("GIF89a", 300), "GIF");
  expect_refused(with_tail(std::string("RIFF\x20\0\0\0WEBP", 12), 0), "WebP");
  expect_refused(with_tail(std::string("RIFF\x20\0\0\0WEBP", 12), 300), "WebP");
  expect_refused(with_tail("BM", 0), "BMP");
  expect_refused(with_tail("BM", 300), "BMP");
}

TEST(ImageDecode, RefusesTruncatedBmp) {
  const Bytes bmp = bmp24(2, 2, kRows);
  // A copy without the last 5 bytes, not resize(size() - 5): GCC 12 under -fsanitize=address
  // cannot tell the size is above 5 and calls the resize a 2^64-byte memset (-Wstringop-overflow).
  expect_refused(Bytes(bmp.begin(), bmp.end() - 5), "truncated");
}

TEST(ImageDecode, RefusesTruncatedJpegHeader) {
  // SOI + the start of a JFIF APP0 segment: libjpeg only warns that the data ended early and
  // would go on with made-up data; Pillow calls the file truncated, and so must we.
  const Bytes jpeg = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0x00, 0x01};
  expect_refused(jpeg, "JPEG");
}

TEST(ImageDecode, ChecksThePixelLimitBeforeDecoding) {
  // A header announcing 70000 x 70000 pixels and no pixel data at all.
  const Bytes bomb = bmp24(70000, 70000, {});
  expect_refused(bomb, "raise --max-pixels");
  expect_refused(bmp24(2, 2, kRows), "over the limit of 3 pixels", DecodeLimits{3});
  EXPECT_NO_THROW(decode_image(bmp24(2, 2, kRows), DecodeLimits{4}, "test.bmp"));
}

TEST(ImageDecode, RefusesZeroSizedImages) {
  expect_refused(bmp24(0, 2, {}), "at least one pixel");
  expect_refused(bmp24(2, 0, {}), "at least one pixel");
}

TEST(ImageRead, NamesTheMissingFile) {
  try {
    read_image_file("/nonexistent/picture.png");
    ADD_FAILURE() << "loaded a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[image] /nonexistent/picture.png: cannot open"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moxin
