// A request inside the scheduler: what the planner knows of it (PlannedSequence) plus its
// inputs, image, sequence core and result stream.
#pragma once

#include <chrono>
#include <memory>

#include "runtime/prompt_layout.hpp"
#include "runtime/request_stream.hpp"
#include "runtime/scheduler_request.hpp"
#include "runtime/sequence_core.hpp"
#include "runtime/step_planner.hpp"

namespace moxin {

struct ScheduledSequence final : PlannedSequence {
  using Clock = std::chrono::steady_clock;

  ScheduledSequence(const Tokenizer& tokenizer, GenerationRequest r, int image_tokens)
      : request(std::move(r)),
        inputs(layout_prompt(request.prompt_ids, request.image ? image_tokens : 0)),
        image_end(request.image ? 1 + static_cast<size_t>(image_tokens) : 0),
        core(tokenizer, request, request.prompt_ids) {
    prompt_positions = inputs.size();
    nothing_to_generate = request.max_tokens == 0;
  }

  size_t positions() const override { return inputs.size() + (drawn_row >= 0 ? 1 : 0); }
  bool cancelled() const override { return stream->cancelled(); }

  // The preprocessed pixels are no longer needed once the features are held.
  void set_image_rows(Tensor rows) {
    image_rows = std::move(rows);
    request.image->dino = {};
    request.image->siglip = {};
  }
  bool needs_image_rows() const { return static_cast<size_t>(kv.length) < image_end && !image_rows.data; }

  std::shared_ptr<RequestStream> stream = std::make_shared<RequestStream>();
  GenerationRequest request;
  // layout_prompt()'s inputs, then each sampled token once the host has read it (it is fed back
  // at the next step from the drawn tokens: PlannedSequence::drawn_row).
  std::vector<PositionInput> inputs;
  size_t image_end;   // 1 + image tokens with an image, else 0
  Tensor image_rows;  // projected image, once known
  SequenceCore core;  // sampling, text and the end of the generation
  bool sampled_any = false;
  Clock::time_point submitted = Clock::now();
  Clock::time_point last_token;
};

}  // namespace moxin
