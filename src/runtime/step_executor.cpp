#include "runtime/step_executor.hpp"

#include <algorithm>
#include <map>
#include <span>

#include "core/check.hpp"

namespace moxin {

StepExecutor::StepExecutor(Engine& engine, size_t image_cache) : engine_(engine), images_(image_cache) {}

std::vector<std::pair<ScheduledSequence*, std::string>> StepExecutor::encode_images(
    const std::vector<ScheduledSequence*>& sequences) {
  std::map<Digest, std::vector<ScheduledSequence*>> missing;
  for (ScheduledSequence* s : sequences) {
    if (!s->needs_image_rows()) continue;
    if (std::optional<Tensor> rows = images_.find(s->request.image->digest)) {
      s->set_image_rows(*rows);
      ++image_hits_;
    } else {
      missing[s->request.image->digest].push_back(s);
    }
  }
  if (missing.empty()) return {};

  // One call of the vision encoders for all distinct images of this admission round.
  const int batch = static_cast<int>(missing.size());
  std::vector<float> dino, siglip;
  for (const auto& [digest, users] : missing) {
    const RequestImage& image = *users.front()->request.image;
    dino.insert(dino.end(), image.dino.begin(), image.dino.end());
    siglip.insert(siglip.end(), image.siglip.begin(), image.siglip.end());
  }
  try {
    const ImageFeatures features = engine_.encode_images(dino, siglip, batch);
    Backend& backend = engine_.backend();
    const int tokens = engine_.config().dino.num_patches;
    int b = 0;
    for (auto& [digest, users] : missing) {
      // A copy per image, so the cache holds no other image's rows alive.
      Tensor rows = backend.empty_act({tokens, engine_.config().decoder.hidden});
      backend.copy_rows(features.projected.rows_view(static_cast<int64_t>(b++) * tokens, tokens), rows, 0);
      images_.insert(digest, rows);
      for (ScheduledSequence* s : users) s->set_image_rows(rows);
    }
    images_encoded_ += static_cast<uint64_t>(batch);
    return {};
  } catch (const std::exception& e) {
    std::vector<std::pair<ScheduledSequence*, std::string>> failed;
    for (auto& [digest, users] : missing)
      for (ScheduledSequence* s : users) failed.emplace_back(s, e.what());
    return failed;
  }
}

Tensor StepExecutor::forward(const std::vector<StepPlan::Chunk>& chunks) {
  const auto sequence = [](const StepPlan::Chunk& c) -> ScheduledSequence& {
    return static_cast<ScheduledSequence&>(*c.sequence);
  };
  // A token drawn at the previous step that the host has not read is the sequence's only input
  // left (planned as a decode position): it is taken from the drawn tokens on the backend.
  const auto drawn = [&](const StepPlan::Chunk& c) {
    const int row = c.sequence->drawn_row;
    MOXIN_CHECK(row < 0 || (c.count == 1 && static_cast<size_t>(c.sequence->kv.length) == sequence(c).inputs.size()),
                "[scheduler] a drawn token planned inside a prompt chunk");
    return row;
  };
  // A step of decode tokens only goes through Engine::decode (a captured graph on CUDA).
  const bool decode_only = std::all_of(chunks.begin(), chunks.end(), [&](const StepPlan::Chunk& c) {
    return c.count == 1 &&
           (drawn(c) >= 0 || !sequence(c).inputs[static_cast<size_t>(c.sequence->kv.length)].is_image());
  });
  if (decode_only) {
    std::vector<SequenceState*> states;
    std::vector<int32_t> tokens, sources;
    for (const StepPlan::Chunk& c : chunks) {
      states.push_back(&c.sequence->kv);
      const int row = drawn(c);
      tokens.push_back(row >= 0 ? 0 : sequence(c).inputs[static_cast<size_t>(c.sequence->kv.length)].token);
      sources.push_back(row);
    }
    return engine_.decode(states, tokens, sources);
  }
  std::vector<SequenceChunk> steps;
  for (const StepPlan::Chunk& c : chunks) {
    const ScheduledSequence& s = sequence(c);
    if (const int row = drawn(c); row >= 0) {
      const int32_t unused = 0;
      steps.push_back({&c.sequence->kv, engine_.embed(std::span(&unused, 1), std::span(&row, 1))});
      continue;
    }
    const auto inputs = std::span<const PositionInput>(s.inputs).subspan(static_cast<size_t>(s.kv.length), c.count);
    steps.push_back({&c.sequence->kv, embed_positions(engine_, inputs, s.image_rows)});
  }
  return engine_.step(steps);
}

}  // namespace moxin
