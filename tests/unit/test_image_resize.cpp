// Properties of the Pillow-exact bicubic resize that follow from its definition (the bit-exact
// comparison with Pillow itself is tests/py/test_preprocess.py).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "image/image.hpp"
#include "moxin/error.hpp"

namespace moxin {
namespace {

Image filled(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  Image im{width, height, {}};
  for (int i = 0; i < width * height; ++i) im.rgb.insert(im.rgb.end(), {r, g, b});
  return im;
}

// A fresh seed each run, printed; MOXIN_TEST_SEED=<seed> replays one.
std::mt19937 seeded_rng(const char* test) {
  const char* fixed = std::getenv("MOXIN_TEST_SEED");
  const unsigned seed = fixed ? static_cast<unsigned>(std::stoul(fixed)) : std::random_device{}();
  std::printf("[seed] %s: MOXIN_TEST_SEED=%u\n", test, seed);
  return std::mt19937(seed);
}

// The taps of every output pixel are normalized to sum to one before the fixed-point rounding,
// whose error (a few units in 2^22) cannot move a constant by one level.
TEST(ImageResize, ConstantImagesStayConstant) {
  auto rng = seeded_rng("ImageResize.ConstantImagesStayConstant");
  std::uniform_int_distribution<int> side(1, 700), level(0, 255);
  for (int i = 0; i < 20; ++i) {
    const uint8_t r = level(rng), g = level(rng), b = level(rng);
    const Image src = filled(side(rng), side(rng), r, g, b);
    const int w = side(rng), h = side(rng);
    const Image out = resize_bicubic(src, w, h);
    ASSERT_EQ(out.width, w);
    ASSERT_EQ(out.height, h);
    ASSERT_EQ(out.rgb.size(), size_t(w) * h * 3);
    for (size_t p = 0; p < out.rgb.size(); p += 3) {
      ASSERT_EQ(out.rgb[p], r) << src.width << "x" << src.height << " -> " << w << "x" << h;
      ASSERT_EQ(out.rgb[p + 1], g);
      ASSERT_EQ(out.rgb[p + 2], b);
    }
  }
}

// Halving two pixels: the single output is centred between them, both taps get the cubic's
// value at +-0.25 (after the 2x support stretch), i.e. 1/2 each = 2^21 in fixed point, and the
// sum starts at 2^21: (a + b + 1) / 2 rounded down.
TEST(ImageResize, HalvingTwoPixelsAveragesRoundingHalfUp) {
  auto rng = seeded_rng("ImageResize.HalvingTwoPixelsAveragesRoundingHalfUp");
  std::uniform_int_distribution<int> level(0, 255);
  for (int i = 0; i < 200; ++i) {
    const uint8_t a = level(rng), b = level(rng);
    const uint8_t want = static_cast<uint8_t>((a + b + 1) / 2);
    const Image row{2, 1, {a, a, a, b, b, b}};
    const Image column{1, 2, {a, b, a, b, a, b}};
    EXPECT_EQ(resize_bicubic(row, 1, 1).rgb, std::vector<uint8_t>(3, want)) << +a << " " << +b;
    const Image halved = resize_bicubic(column, 1, 1);
    EXPECT_EQ(halved.rgb[0], want);
    EXPECT_EQ(halved.rgb[1], static_cast<uint8_t>((b + a + 1) / 2));
  }
}

TEST(ImageResize, SameSizeIsACopy) {
  auto rng = seeded_rng("ImageResize.SameSizeIsACopy");
  Image src{37, 11, std::vector<uint8_t>(37 * 11 * 3)};
  for (auto& v : src.rgb) v = static_cast<uint8_t>(rng());
  EXPECT_EQ(resize_bicubic(src, 37, 11).rgb, src.rgb);
}

TEST(ImageResize, RefusesBadSizes) {
  const Image src = filled(4, 4, 1, 2, 3);
  EXPECT_THROW(resize_bicubic(src, 0, 4), Error);
  EXPECT_THROW(resize_bicubic(src, 4, -1), Error);
  EXPECT_THROW(resize_bicubic(Image{4, 4, {}}, 2, 2), Error);  // pixels missing
}

TEST(ImagePreprocess, ShapesAndNormalizationEndpoints) {
  const PreprocessedImage white = preprocess_image(filled(5, 3, 255, 255, 255), 16);
  ASSERT_EQ(white.resized.size(), 16u * 16 * 3);
  ASSERT_EQ(white.dino.size(), white.resized.size());
  ASSERT_EQ(white.siglip.size(), white.resized.size());
  const PreprocessedImage black = preprocess_image(filled(300, 200, 0, 0, 0));
  ASSERT_EQ(black.resized.size(), 224u * 224 * 3);
  for (size_t i = 0; i < white.siglip.size(); ++i) {
    ASSERT_EQ(white.siglip[i], 1.0f);  // (1 - 0.5) / 0.5
  }
  for (size_t i = 0; i < black.siglip.size(); ++i) ASSERT_EQ(black.siglip[i], -1.0f);
  // DINOv2 on black: -mean / std per channel (ImageNet statistics).
  EXPECT_NEAR(black.dino[0], -0.485f / 0.229f, 1e-6);
  EXPECT_NEAR(black.dino[1], -0.456f / 0.224f, 1e-6);
  EXPECT_NEAR(black.dino[2], -0.406f / 0.225f, 1e-6);
  EXPECT_NEAR(white.dino[0], (1.0f - 0.485f) / 0.229f, 1e-6);
}

}  // namespace
}  // namespace moxin
