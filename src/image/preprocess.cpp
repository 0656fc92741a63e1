// docs/model.md section 2: resize to size x size, /255, then the DINOv2 and SigLIP normalizations,
// in float32 and in the same order of operations as the PyTorch/numpy reference
// ((x / 255 - mean) / std), so the values match it exactly.
#include <algorithm>
#include <array>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "core/check.hpp"
#include "image/bicubic_resize.hpp"
#include "image/codecs/codec.hpp"
#include "image/image.hpp"

namespace moxin {
namespace {

void check_size(int size) { MOXIN_CHECK(size > 0, "[image] preprocess: the target size ", size, " must be positive"); }

// Both normalizations of a resized image.
PreprocessedImage normalize(Image resized, const Image& source) {
  constexpr float kDinoMean[3] = {0.485f, 0.456f, 0.406f};
  constexpr float kDinoStd[3] = {0.229f, 0.224f, 0.225f};
  constexpr float kSiglipMean = 0.5f, kSiglipStd = 0.5f;

  // A byte has 256 values: each channel's normalized values are computed once, by the same
  // expression, and looked up (two divisions per element cost as much as the resize).
  std::array<std::array<float, 256>, 3> dino{};
  std::array<float, 256> siglip{};
  for (int b = 0; b < 256; ++b) {
    const float v = static_cast<float>(b) / 255.0f;
    for (int c = 0; c < 3; ++c) dino[c][b] = (v - kDinoMean[c]) / kDinoStd[c];
    siglip[b] = (v - kSiglipMean) / kSiglipStd;
  }

  PreprocessedImage out;
  out.source_width = source.width;
  out.source_height = source.height;
  out.resized = std::move(resized.rgb);
  const size_t n = out.resized.size();
  out.dino.resize(n);
  out.siglip.resize(n);
  for (size_t i = 0; i < n; i += 3)
    for (size_t c = 0; c < 3; ++c) {
      const uint8_t b = out.resized[i + c];
      out.dino[i + c] = dino[c][b];
      out.siglip[i + c] = siglip[b];
    }
  return out;
}

// The resize's first pass run on bands of rows while a decoder fills the rest of the image: a
// thread of its own waits for each band's rows (the decoder's RowsDecoded reports), resamples
// it horizontally and waits for the next. Once the whole image is decoded, what the thread has
// not reached is done on the resize threads, then the vertical pass. For a photo shrunk to the
// encoders' size the first pass is most of the resize, and the decode is slower than it on one
// core, so little of the resize is left when the decode ends.
class BandedResize {
 public:
  explicit BandedResize(int size) : size_(size) {}
  BandedResize(const BandedResize&) = delete;
  BandedResize& operator=(const BandedResize&) = delete;
  ~BandedResize() { stop(); }

  // The decoder's hook.
  void rows_decoded(const Image& image, int rows) {
    if (rows == image_codecs::kDecodeAbandoned) return stop();
    if (!resize_) {
      resize_.emplace(image.width, image.height, size_, size_);
      next_row_ = resize_->rows_begin();
      if (!resize_->rows_first()) return;
      pixels_ = image.rgb.data();
      worker_ = std::thread([this] { run(); });
    }
    if (!worker_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rows_ = rows;
    }
    ready_.notify_one();
  }

  // The resized image of `image`, the whole source, decoded.
  Image finish(const Image& image) {
    stop();
    if (error_) std::rethrow_exception(error_);
    if (!resize_) {  // a decoder that does not report rows
      resize_.emplace(image.width, image.height, size_, size_);
      next_row_ = resize_->rows_begin();
    }
    if (resize_->rows_first() && next_row_ < resize_->rows_end())
      resize_->horizontal_rows(image.rgb.data(), next_row_, resize_->rows_end(), true);
    return resize_->finish(image);
  }

 private:
  static constexpr int kBandRows = 32;

  void run() {
    try {
      while (next_row_ < resize_->rows_end()) {
        const int end = std::min(next_row_ + kBandRows, resize_->rows_end());
        {
          std::unique_lock<std::mutex> lock(mutex_);
          ready_.wait(lock, [&] { return rows_ >= end || stopping_; });
          if (stopping_) return;  // finish() takes the rest on all the resize threads
        }
        resize_->horizontal_rows(pixels_, next_row_, end, false);
        next_row_ = end;
      }
    } catch (...) {
      error_ = std::current_exception();
    }
  }

  // Ends the thread at its next band boundary; next_row_ is then where it stopped.
  void stop() {
    if (!worker_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_one();
    worker_.join();
  }

  const int size_;
  std::optional<BicubicResize> resize_;
  const uint8_t* pixels_ = nullptr;
  int next_row_ = 0;  // the first source row the thread has not resampled (its own until joined)
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable ready_;
  int rows_ = 0;           // rows decoded so far (under mutex_)
  bool stopping_ = false;  // under mutex_
  std::exception_ptr error_;
};

}  // namespace

PreprocessedImage preprocess_image(const Image& image, int size) {
  check_size(size);
  return normalize(resize_bicubic(image, size, size), image);
}

PreprocessedImage decode_and_preprocess(std::span<const uint8_t> bytes, const DecodeLimits& limits,
                                        std::string_view source, int size) {
  check_size(size);
  BandedResize resize(size);
  const image_codecs::RowsDecoded hook = [&](const Image& image, int rows) { resize.rows_decoded(image, rows); };
  const Image image = image_codecs::decode_any({bytes, limits, source, &hook});
  return normalize(resize.finish(image), image);
}

}  // namespace moxin
