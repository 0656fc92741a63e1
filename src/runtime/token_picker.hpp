// Turns a step's logits into the next token of each sequence whose inputs are all computed:
// drawn on the device where the backend samples there and no sequence of the step reports
// log-probabilities (then only the ids travel to the host, not [rows, vocab] scores), else from
// the logits copied to the host. Both ways follow runtime/sampler.hpp's rules and consume the
// sequence's random numbers alike, and both leave the tokens in the engine's drawn tokens
// (Engine::drawn_tokens) for the next step to take as inputs before the host has read them.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.hpp"
#include "runtime/sequence_core.hpp"

namespace moxin {

struct TokenPick {
  size_t row = 0;              // the logits row of the sequence's last position
  SequenceCore* core = nullptr;
};

// A step's tokens on their way to the host.
class PendingTokens {
 public:
  PendingTokens() = default;
  // One outcome per pick, in order, once the tokens are on the host (each core applies its
  // rules then). Throws moxin::Error as SequenceCore::next does (non-finite logits, an
  // overflowing penalty or temperature). Call once.
  std::vector<TokenOutcome> wait();

 private:
  friend PendingTokens pick_tokens(Backend& backend, const Tensor& logits, std::span<const TokenPick> picks,
                                   Tensor& drawn);
  std::vector<TokenPick> picks_;
  std::unique_ptr<I32Readback> ids_;   // drawn on the device: the cores accept them in wait()
  std::vector<TokenOutcome> outcomes_;  // else sampled on the host already
};

// Draws the picks' tokens into drawn[row] (every logits row is drawn; rows without a pick, such
// as a prompt chunk with more to come, greedily) without waiting for them where the backend
// samples on the device. Throws moxin::Error where the host sampler refuses a row.
PendingTokens pick_tokens(Backend& backend, const Tensor& logits, std::span<const TokenPick> picks, Tensor& drawn);

}  // namespace moxin
