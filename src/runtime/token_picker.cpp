#include "runtime/token_picker.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {

std::vector<TokenOutcome> PendingTokens::wait() {
  if (!ids_) return std::move(outcomes_);
  const std::span<const int32_t> ids = ids_->wait();
  std::vector<TokenOutcome> out;
  out.reserve(picks_.size());
  for (const TokenPick& p : picks_) {
    // -1: the device sampler met a score that is not finite. The logits are gone by now (the
    // next step may have overwritten them), so the host cannot name the token id as it would.
    MOXIN_CHECK(ids[p.row] >= 0, "[sampler] the logits of a sequence's last position hold a non-finite score, or "
                "its repetition penalty or temperature overflowed them: the model produced non-finite logits "
                "(broken weights or a numerical overflow)");
    out.push_back(p.core->accept(ids[p.row]));
  }
  ids_.reset();
  return out;
}

PendingTokens pick_tokens(Backend& backend, const Tensor& logits, std::span<const TokenPick> picks, Tensor& drawn) {
  PendingTokens pending;
  pending.picks_.assign(picks.begin(), picks.end());
  if (picks.empty()) return pending;
  MOXIN_CHECK(logits.rows() <= drawn.rows(), "[sampler] a step of ", logits.rows(), " logits rows, but room for ",
              drawn.rows(), " drawn tokens");
  // Each sequence draws its number once, whichever way its token is then chosen. Rows without
  // a pick (a prompt chunk with more to come) are drawn greedily and ignored.
  std::vector<TokenDraw> draws(static_cast<size_t>(logits.rows()));
  for (const TokenPick& p : picks) draws[p.row] = p.core->draw();
  Tensor ids = drawn.rows_view(0, logits.rows());

  const bool host_only = std::any_of(picks.begin(), picks.end(), [](const TokenPick& p) { return p.core->wants_logits(); });
  if (!host_only && backend.sample_tokens(logits, draws, ids)) {
    pending.ids_ = backend.read_i32_async(ids);
    return pending;
  }
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend.to_host_f32(logits, host.data());
  const auto vocab = static_cast<size_t>(logits.cols());
  std::vector<int32_t> chosen(draws.size(), 0);  // rows without a pick are never taken as inputs
  for (const TokenPick& p : picks) {
    pending.outcomes_.push_back(
        p.core->next_at(std::span<const float>(host).subspan(p.row * vocab, vocab), draws[p.row]));
    chosen[p.row] = pending.outcomes_.back().token;
  }
  backend.upload_i32(chosen.data(), ids);
  return pending;
}

}  // namespace moxin
