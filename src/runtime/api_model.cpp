// The public Model / Conversation API (include/moxin/moxin.hpp) over the engine.
#include <chrono>
#include <fstream>
#include <iterator>

#include "core/check.hpp"
#include "moxin/moxin.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/engine.hpp"
#include "runtime/scheduler.hpp"
#include "runtime/session.hpp"

namespace moxin {

Prompt Prompt::single(std::string question, std::vector<uint8_t> image) {
  Prompt p;
  p.turns.push_back({std::move(question), {}});
  p.image = std::move(image);
  return p;
}

double Timings::decode_tokens_per_s() const {
  return decode_ms > 0 ? 1000.0 * (generated_tokens - 1) / decode_ms : 0.0;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOXIN_CHECK(in.good(), "[io] cannot open '", path, "' (does it exist and is it readable?)");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MOXIN_CHECK(!in.bad(), "[io] error while reading '", path, "'");
  return bytes;
}

std::unique_ptr<Model> Model::load(const std::string& model_dir, const LoadOptions& options) {
  MOXIN_CHECK(options.threads >= 0, "[load] threads must be >= 0 (0 = all cores), got ", options.threads);
  // Checked before the (long) load; the engine checks the upper bound of max_context.
  MOXIN_CHECK(options.max_context >= 1, "[load] max_context must be >= 1 KV cache tokens, got ", options.max_context);
  MOXIN_CHECK(options.max_image_pixels >= 1, "[load] max_image_pixels must be >= 1 (every image would be refused)");
  const auto start = std::chrono::steady_clock::now();
  auto engine = Engine::load(model_dir, to_engine_options(options));
  engine->backend().synchronize();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return std::unique_ptr<Model>(new Model(std::move(engine), options, ms));
}

Model::Model(std::unique_ptr<Engine> engine, LoadOptions options, double load_ms)
    : engine_(std::move(engine)), options_(options), load_ms_(load_ms) {}

Model::~Model() = default;

std::shared_ptr<void> Model::try_lease_engine() {
  std::lock_guard lock(use_mutex_);
  if (scheduler_) return nullptr;
  ++leases_;
  return std::shared_ptr<void>(static_cast<void*>(this), [](void* model) {
    Model& m = *static_cast<Model*>(model);
    std::lock_guard lock(m.use_mutex_);
    --m.leases_;
  });
}

Conversation Model::conversation() {
  std::shared_ptr<void> lease = try_lease_engine();
  MOXIN_CHECK(lease, "[conversation] refused: submit() has started this model's scheduler, which owns the "
                     "engine from then on (use submit() or generate(), or load another Model for conversations)");
  return Conversation(std::make_unique<Session>(*engine_, options_.max_image_pixels), std::move(lease));
}

std::vector<int32_t> Model::tokenize(const std::string& text, bool add_bos) const {
  return engine_->tokenizer().encode(text, add_bos, false);
}

std::string Model::detokenize(const std::vector<int32_t>& ids) const {
  return engine_->tokenizer().decode(ids);
}

ModelInfo Model::info() const {
  const ModelConfig& c = engine_->config();
  return {c.decoder.vocab, c.decoder.hidden, c.decoder.layers, c.dino.num_patches,
          engine_->backend().name()};
}

Conversation::Conversation(std::unique_ptr<Session> session, std::shared_ptr<void> lease)
    : lease_(std::move(lease)), session_(std::move(session)) {}
Conversation::Conversation(Conversation&&) noexcept = default;
Conversation& Conversation::operator=(Conversation&&) noexcept = default;
Conversation::~Conversation() = default;

std::vector<float> Conversation::prefill(const Prompt& prompt) {
  return session_->prefill(to_chat_turns(prompt), prompt.image).logits;
}

std::vector<float> Conversation::decode(int32_t token) { return session_->decode(token); }

int64_t Conversation::position() const { return session_->position(); }

}  // namespace moxin
