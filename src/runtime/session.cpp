#include "runtime/session.hpp"

#include <chrono>

#include "core/check.hpp"
#include "image/image.hpp"
#include "runtime/prompt_layout.hpp"

namespace moxin {
namespace {

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Session::Session(Engine& engine, uint64_t max_image_pixels)
    : engine_(engine), max_image_pixels_(max_image_pixels) {}

Session::~Session() { engine_.release(state_); }

std::vector<float> Session::to_host(const Tensor& logits) {
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  engine_.backend().to_host_f32(logits, host.data());
  return host;
}

std::vector<float> Session::run(Tensor embeddings) {
  SequenceChunk chunk{&state_, std::move(embeddings)};
  return to_host(engine_.step(std::span<SequenceChunk>(&chunk, 1)));
}

PrefillResult Session::prefill(const std::vector<ChatTurn>& turns, std::span<const uint8_t> image) {
  MOXIN_CHECK(state_.length == 0, "[session] prefill() on a conversation that already has ",
              state_.length, " positions; start a new conversation");
  PrefillResult result;
  result.input_ids = tokenize_prompt(engine_.tokenizer(), turns);
  Tensor image_rows;
  if (!image.empty()) {
    const auto vision_start = std::chrono::steady_clock::now();
    const PreprocessedImage pre =
        decode_and_preprocess(image, DecodeLimits{max_image_pixels_}, "the prompt's image", engine_.config().dino.image_size);
    result.image = engine_.encode_images(pre.dino, pre.siglip, 1);
    engine_.backend().synchronize();
    result.vision_ms = ms_since(vision_start);
    image_rows = result.image->projected;
  }
  const std::vector<PositionInput> inputs =
      layout_prompt(result.input_ids, image_rows.data ? static_cast<int>(image_rows.rows()) : 0);
  Tensor embeddings = embed_positions(engine_, inputs, image_rows);
  result.prompt_tokens = static_cast<int>(embeddings.rows());
  const auto prefill_start = std::chrono::steady_clock::now();
  result.logits = run(std::move(embeddings));
  result.prefill_ms = ms_since(prefill_start);
  return result;
}

std::vector<float> Session::decode(int32_t token) {
  MOXIN_CHECK(state_.length > 0, "[session] decode() before prefill()");
  SequenceState* sequence = &state_;
  return to_host(engine_.decode(std::span<SequenceState* const>(&sequence, 1),
                                std::span<const int32_t>(&token, 1)));
}

}  // namespace moxin
