// docs/model.md section 2: resize to size x size, /255, then the DINOv2 and SigLIP normalizations,
// in float32 and in the same order of operations as the PyTorch/numpy reference
// ((x / 255 - mean) / std), so the values match it exactly.
#include <algorithm>
#include <array>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
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
// thread of its own, started before the decode, waits for each band's rows (the decoder's
// RowsDecoded reports), resamples it horizontally and waits for the next. Once the whole image
// is decoded, finish() waits only for a band in progress and does the rest on the resize
// threads, then the vertical pass. For a photo shrunk to the encoders' size the first pass is
// most of the resize, and the decode is slower than it on one core, so little of the resize is
// left when the decode ends. The thread is detached and its state shared: a thread that the OS
// starts late (milliseconds, on some VMs after idle) delays nothing, it finds the work done and
// leaves without touching the pixels.
class BandedResize {
 public:
  BandedResize(int size, bool with_thread) : state_(std::make_shared<State>(size)) {
    if (!with_thread) return;
    try {
      std::thread([state = state_] { state->run(); }).detach();
    } catch (const std::system_error&) {
      // No thread to be had: finish() does the whole resize, as for other formats.
    }
  }
  BandedResize(const BandedResize&) = delete;
  BandedResize& operator=(const BandedResize&) = delete;
  ~BandedResize() { state_->stop(); }

  // The decoder's hook.
  void rows_decoded(const Image& image, int rows) {
    if (rows == image_codecs::kDecodeAbandoned) return state_->stop();
    state_->rows_decoded(image, rows);
  }

  // The resized image of `image`, the whole source, decoded.
  Image finish(const Image& image) {
    State& s = *state_;
    s.stop();
    if (s.error) std::rethrow_exception(s.error);
    if (!s.resize) s.plan(image);  // a decoder that does not report rows
    if (s.resize->rows_first() && s.next_row < s.resize->rows_end())
      s.resize->horizontal_rows(image.rgb.data(), s.next_row, s.resize->rows_end(), true);
    return s.resize->finish(image);
  }

 private:
  static constexpr int kBandRows = 32;

  struct State {
    explicit State(int size) : size(size) {}
    const int size;
    std::mutex mutex;
    std::condition_variable changed;
    // Set by the first report, before `rows` moves (both under the mutex).
    std::optional<BicubicResize> resize;
    const uint8_t* pixels = nullptr;
    int rows = 0;            // rows decoded so far
    int next_row = 0;        // the first source row no band has covered
    bool in_flight = false;  // the thread is resampling a band
    bool stopping = false;   // no band may start
    std::exception_ptr error;

    void plan(const Image& image) {
      resize.emplace(image.width, image.height, size, size);
      next_row = resize->rows_begin();
    }

    void rows_decoded(const Image& image, int decoded) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (!resize) {
          plan(image);
          pixels = image.rgb.data();
        }
        rows = decoded;
      }
      changed.notify_all();
    }

    void run() {
      std::unique_lock<std::mutex> lock(mutex);
      for (;;) {
        changed.wait(lock, [&] {
          return stopping || (resize && (!resize->rows_first() || next_row >= resize->rows_end() ||
                                         rows >= std::min(next_row + kBandRows, resize->rows_end())));
        });
        if (stopping || !resize->rows_first() || next_row >= resize->rows_end()) return;
        const int begin = next_row, end = std::min(next_row + kBandRows, resize->rows_end());
        in_flight = true;
        lock.unlock();
        try {
          resize->horizontal_rows(pixels, begin, end, false);
        } catch (...) {
          lock.lock();
          error = std::current_exception();
          in_flight = false;
          stopping = true;
          changed.notify_all();
          return;
        }
        lock.lock();
        next_row = end;
        in_flight = false;
        changed.notify_all();
      }
    }

    // No band starts from here on; returns once none is in progress.
    void stop() {
      std::unique_lock<std::mutex> lock(mutex);
      stopping = true;
      changed.notify_all();
      changed.wait(lock, [&] { return !in_flight; });
    }
  };

  std::shared_ptr<State> state_;
};

}  // namespace

PreprocessedImage preprocess_image(const Image& image, int size) {
  check_size(size);
  return normalize(resize_bicubic(image, size, size), image);
}

PreprocessedImage decode_and_preprocess(std::span<const uint8_t> bytes, const DecodeLimits& limits,
                                        std::string_view source, int size) {
  check_size(size);
  BandedResize resize(size, image_codecs::reports_rows(bytes));
  const image_codecs::RowsDecoded hook = [&](const Image& image, int rows) { resize.rows_decoded(image, rows); };
  const Image image = image_codecs::decode_any({bytes, limits, source, &hook});
  return normalize(resize.finish(image), image);
}

}  // namespace moxin
