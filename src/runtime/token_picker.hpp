// Turns a step's logits into the next token of each sequence whose inputs are all computed:
// drawn on the device where the backend samples there and no sequence of the step reports
// log-probabilities (then only the ids travel to the host, not [rows, vocab] scores), else from
// the logits copied to the host. Both ways follow runtime/sampler.hpp's rules and consume the
// sequence's random numbers alike.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "backend/backend.hpp"
#include "runtime/sequence_core.hpp"

namespace moxin {

struct TokenPick {
  size_t row = 0;              // the logits row of the sequence's last position
  SequenceCore* core = nullptr;
};

// One outcome per pick, in order. Throws moxin::Error as SequenceCore::next does (non-finite
// logits, an overflowing penalty or temperature).
std::vector<TokenOutcome> pick_tokens(Backend& backend, const Tensor& logits, std::span<const TokenPick> picks);

}  // namespace moxin
