// Pillow's BICUBIC resize (libImaging/Resample.c) reimplemented to give the same bytes:
//  - separable, with the intermediate image rounded and clamped to uint8, so the order of the
//    passes matters. Pillow 13 runs the vertical pass first when it removes rows and removes
//    more than twice as many rows as the horizontal pass removes columns (a cost heuristic
//    found in its compiled Resample.c and checked against it); otherwise the horizontal pass
//    runs first, over only the source rows the vertical pass will read. A pass whose output
//    size equals its input size is skipped;
//  - per output pixel, taps cover center +- support where center = (i + 0.5) * scale and
//    support = 2 * max(scale, 1) (antialiasing when shrinking), clipped to the image;
//  - the filter is the a = -0.5 cubic evaluated at (tap - center + 0.5) / max(scale, 1); the taps
//    are normalized to sum to 1 in double, then rounded half away from zero to fixed point with
//    22 fractional bits; sums start at one half and are shifted back and clamped.
// The double-precision steps must be evaluated exactly as written (no fused multiply-add):
// CMakeLists.txt compiles this file with -ffp-contract=off.
// Both passes run as one vectorized kernel over whole rows: the vertical pass directly, the
// horizontal one on the transposed image (a per-pixel loop over 3 interleaved channels does not
// vectorize). The sums are integers, so the bytes do not depend on the order or the ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/check.hpp"
#include "core/thread_pool.hpp"
#include "image/bicubic_resize.hpp"
#include "image/image.hpp"

namespace moxin {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

using Taps = ResizeTaps;

Taps compute_taps(int in_size, int out_size) {
  // Pillow receives the source box as floats; (0, in_size) is exact in float for any image
  // that fits in memory, but the arithmetic keeps Pillow's types anyway.
  const float box_start = 0.0f, box_end = static_cast<float>(in_size);
  const double scale = static_cast<double>(box_end - box_start) / out_size;
  const double filter_scale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filter_scale;
  const double inverse_filter_scale = 1.0 / filter_scale;

  Taps taps;
  taps.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.stride, 0);
  std::vector<double> w(taps.stride);
  for (int i = 0; i < out_size; ++i) {
    const double center = box_start + (i + 0.5) * scale;
    int lo = static_cast<int>(center - support + 0.5);  // truncation, as Pillow's (int) cast
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = hi - lo;
    double sum = 0.0;
    for (int t = 0; t < n; ++t) {
      w[t] = bicubic((t + lo - center + 0.5) * inverse_filter_scale);
      sum += w[t];
    }
    int32_t* fixed = &taps.weights[static_cast<size_t>(i) * taps.stride];
    for (int t = 0; t < n; ++t) {
      const double normalized = sum != 0.0 ? w[t] / sum : w[t];
      fixed[t] = static_cast<int32_t>(normalized < 0 ? -0.5 + normalized * (1 << kPrecisionBits)
                                                     : 0.5 + normalized * (1 << kPrecisionBits));
    }
    taps.first[i] = lo;
    taps.count[i] = n;
  }
  return taps;
}

// Fixed-point sum to uint8: Pillow's clip8 (arithmetic shift, then clamp).
inline uint8_t to_u8(int32_t sum) {
  const int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Shrinking a photo to 224 x 224 is ~5 M multiply-adds, three quarters in the horizontal pass:
// output rows are independent, so every step deals them over a few threads. The bytes do not
// depend on the split.
ThreadPool& resize_pool() {
  static ThreadPool pool(static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u)));
  return pool;
}
constexpr int64_t kMinRowsPerThread = 32;

// Runs fn over [0, n) on the resize pool, or inline on this thread when `parallel` is false.
void for_rows(bool parallel, int64_t n, const ThreadPool::RangeFn& fn, int64_t min_chunk) {
  if (parallel)
    resize_pool().parallel_for(n, fn, min_chunk);
  else
    fn(0, n);
}

// Output rows [begin, end) of a vertical pass over `src` (rows `stride` bytes apart; `row_shift`
// maps the taps' source rows to rows of src): whole rows accumulated tap by tap into `sums`
// (stride ints), the same integer sums as Pillow's, in an order that vectorizes.
__attribute__((always_inline)) inline void vertical_rows(const uint8_t* src, size_t stride, const Taps& taps,
                                                         int row_shift, int64_t begin, int64_t end, uint8_t* out,
                                                         int32_t* sums) {
  for (int64_t y = begin; y < end; ++y) {
    const int32_t* k = &taps.weights[static_cast<size_t>(y) * taps.stride];
    const uint8_t* row = src + static_cast<size_t>(taps.first[y] - row_shift) * stride;
    std::fill(sums, sums + stride, 1 << (kPrecisionBits - 1));
    for (int t = 0; t < taps.count[y]; ++t, row += stride)
      for (size_t i = 0; i < stride; ++i) sums[i] += row[i] * k[t];
    uint8_t* line = out + static_cast<size_t>(y) * stride;
    for (size_t i = 0; i < stride; ++i) line[i] = to_u8(sums[i]);
  }
}

#if defined(__x86_64__)
// The same loop compiled for AVX2 (8 lanes of 32-bit products: 2.6x the baseline build's SSE2 on
// a 224 x 224 target), taken where the CPU has it and MOXIN_CPU_KERNELS does not force the
// generic kernels (which tests use to run the portable loop on any machine).
__attribute__((target("avx2"))) void vertical_rows_avx2(const uint8_t* src, size_t stride, const Taps& taps,
                                                         int row_shift, int64_t begin, int64_t end, uint8_t* out,
                                                         int32_t* sums) {
  vertical_rows(src, stride, taps, row_shift, begin, end, out, sums);
}

bool use_avx2() {
  static const bool avx2 = [] {
    const char* forced = std::getenv("MOXIN_CPU_KERNELS");
    return __builtin_cpu_supports("avx2") && !(forced != nullptr && std::string(forced) == "generic");
  }();
  return avx2;
}
#endif

// Resamples `src` (rows of `width` pixels) vertically into out_rows rows of `out` (same width).
void vertical_pass(const uint8_t* src, int width, const Taps& taps, int row_shift, int out_rows, uint8_t* out,
                   bool parallel) {
  const size_t stride = static_cast<size_t>(width) * 3;
  for_rows(parallel, out_rows, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> sums(stride);
#if defined(__x86_64__)
    if (use_avx2()) return vertical_rows_avx2(src, stride, taps, row_shift, begin, end, out, sums.data());
#endif
    vertical_rows(src, stride, taps, row_shift, begin, end, out, sums.data());
  }, kMinRowsPerThread);
}

// dst = `rows` rows of src (rows of `width` pixels) transposed: dst holds `width` rows of `rows`
// pixels, pixel (x, y) of dst being pixel (y, x) of src. In square blocks, so that both sides
// stay in cache.
void transpose(const uint8_t* src, int width, int rows, uint8_t* dst, bool parallel) {
  constexpr int kBlock = 32;
  const int column_blocks = (width + kBlock - 1) / kBlock;
  for_rows(parallel, column_blocks, [&](int64_t begin, int64_t end) {
    for (int c0 = static_cast<int>(begin) * kBlock; c0 < std::min(static_cast<int>(end) * kBlock, width); c0 += kBlock)
      for (int r0 = 0; r0 < rows; r0 += kBlock)
        for (int r = r0; r < std::min(r0 + kBlock, rows); ++r) {
          const uint8_t* s = src + (static_cast<size_t>(r) * width + c0) * 3;
          for (int c = c0; c < std::min(c0 + kBlock, width); ++c, s += 3) {
            uint8_t* d = dst + (static_cast<size_t>(c) * rows + r) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
          }
        }
  }, 2);
}

Image blank(int width, int height) {
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(static_cast<size_t>(width) * height * 3);
  return image;
}

// Resamples `rows` rows of src (rows of `width` pixels) horizontally into `rows` rows of out
// (rows of taps.first.size() pixels): as a vertical pass over those rows transposed, transposed
// back.
void horizontal_pass(const uint8_t* src, int width, int rows, const Taps& taps, uint8_t* out, bool parallel) {
  const int out_width = static_cast<int>(taps.first.size());
  std::vector<uint8_t> columns(static_cast<size_t>(width) * rows * 3), resampled(static_cast<size_t>(out_width) * rows * 3);
  transpose(src, width, rows, columns.data(), parallel);
  vertical_pass(columns.data(), rows, taps, 0, out_width, resampled.data(), parallel);
  transpose(resampled.data(), rows, out_width, out, parallel);
}

}  // namespace

BicubicResize::BicubicResize(int src_width, int src_height, int width, int height)
    : src_width_(src_width), src_height_(src_height), width_(width), height_(height) {
  MOXIN_CHECK(width > 0 && height > 0, "[image] resize: target size ", width, "x", height,
              " must be positive");
  MOXIN_CHECK(src_width > 0 && src_height > 0, "[image] resize: source image ", src_width, "x", src_height,
              " has no pixels");
  const bool horizontal = width != src_width;
  const bool vertical = height != src_height;
  if (vertical) vertical_taps_ = compute_taps(src_height, height);
  if (horizontal) horizontal_taps_ = compute_taps(src_width, width);
  const int64_t rows_removed = int64_t{src_height} - height;
  const int64_t columns_removed = int64_t{src_width} - width;
  if (!horizontal || (vertical && rows_removed > 0 && rows_removed > 2 * columns_removed)) return;
  // Only the source rows some output row reads go through the horizontal pass.
  rows_first_ = true;
  rows_begin_ = vertical ? vertical_taps_.first.front() : 0;
  rows_end_ = vertical ? vertical_taps_.first.back() + vertical_taps_.count.back() : src_height;
  wide_ = blank(width, rows_end_ - rows_begin_);
}

BicubicResize::~BicubicResize() = default;

void BicubicResize::horizontal_rows(const uint8_t* src, int begin, int end, bool parallel) {
  MOXIN_CHECK(rows_first_ && begin >= rows_begin_ && begin <= end && end <= rows_end_,
              "[image] resize: source rows [", begin, ", ", end, ") are not within the horizontal pass's [",
              rows_begin_, ", ", rows_end_, ")");
  horizontal_pass(src + static_cast<size_t>(begin) * src_width_ * 3, src_width_, end - begin, horizontal_taps_,
                  wide_.rgb.data() + static_cast<size_t>(begin - rows_begin_) * width_ * 3, parallel);
}

namespace {

// The source a resize planned for src_width x src_height reads: that size, and its pixels.
void check_source(const Image& src, int src_width, int src_height) {
  MOXIN_CHECK(src.width == src_width && src.height == src_height &&
                  src.rgb.size() == static_cast<size_t>(src.width) * src.height * 3,
              "[image] resize: source image ", src.width, "x", src.height, " holds ", src.rgb.size(),
              " bytes, not ", src_width, " x ", src_height, " x 3");
}

}  // namespace

Image BicubicResize::finish(const Image& src) {
  check_source(src, src_width_, src_height_);
  const bool vertical = height_ != src_height_;
  if (rows_first_) {
    if (!vertical) return std::move(wide_);
    Image out = blank(width_, height_);
    vertical_pass(wide_.rgb.data(), width_, vertical_taps_, rows_begin_, height_, out.rgb.data(), true);
    return out;
  }
  if (width_ == src_width_ && !vertical) return src;
  Image out = blank(width_, height_);
  if (width_ == src_width_) {
    vertical_pass(src.rgb.data(), width_, vertical_taps_, 0, height_, out.rgb.data(), true);
    return out;
  }
  // The vertical pass first (it removes most of the rows), then the horizontal one.
  Image tall = blank(src_width_, height_);
  vertical_pass(src.rgb.data(), src_width_, vertical_taps_, 0, height_, tall.rgb.data(), true);
  horizontal_pass(tall.rgb.data(), src_width_, height_, horizontal_taps_, out.rgb.data(), true);
  return out;
}

Image resize_bicubic(const Image& src, int width, int height) {
  BicubicResize resize(src.width, src.height, width, height);  // refuses sizes that are not positive
  check_source(src, src.width, src.height);  // before the first pass reads the pixels
  if (resize.rows_first()) resize.horizontal_rows(src.rgb.data(), resize.rows_begin(), resize.rows_end(), true);
  return resize.finish(src);
}

}  // namespace moxin
