#include "runtime/token_picker.hpp"

#include <algorithm>

namespace moxin {
namespace {

std::vector<float> to_host(Backend& backend, const Tensor& logits) {
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend.to_host_f32(logits, host.data());
  return host;
}

}  // namespace

std::vector<TokenOutcome> pick_tokens(Backend& backend, const Tensor& logits, std::span<const TokenPick> picks) {
  if (picks.empty()) return {};
  // Each sequence draws its number once, whichever way its token is then chosen. Rows without
  // a pick (a prompt chunk with more to come) are drawn greedily and ignored.
  std::vector<TokenDraw> draws(static_cast<size_t>(logits.rows()));
  for (const TokenPick& p : picks) draws[p.row] = p.core->draw();
  const auto vocab = static_cast<size_t>(logits.cols());
  std::vector<TokenOutcome> out;

  std::vector<int32_t> ids(draws.size());
  const bool host_only = std::any_of(picks.begin(), picks.end(), [](const TokenPick& p) { return p.core->wants_logits(); });
  if (host_only || !backend.sample_tokens(logits, draws, ids)) {
    const std::vector<float> host = to_host(backend, logits);
    for (const TokenPick& p : picks)
      out.push_back(p.core->next_at(std::span<const float>(host).subspan(p.row * vocab, vocab), draws[p.row]));
    return out;
  }
  for (const TokenPick& p : picks) {
    const int32_t id = ids[p.row];
    // -1: a non-finite score, which the host sampler names (and refuses).
    out.push_back(id >= 0 ? p.core->accept(id)
                          : p.core->next_at(to_host(backend, logits.rows_view(static_cast<int64_t>(p.row), 1)),
                                            draws[p.row]));
  }
  return out;
}

}  // namespace moxin
