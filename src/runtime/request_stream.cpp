#include "runtime/request_stream.hpp"

namespace moxin {

RequestStream::Update RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !pending_.empty() || delivered_outcome_; });
  Update out = std::move(pending_);
  pending_ = Update{};
  if (out.outcome) delivered_outcome_ = true;
  return out;
}

void RequestStream::push(const std::string& text, std::optional<GeneratedToken> token) {
  {
    std::lock_guard lock(mutex_);
    pending_.text += text;
    if (token) pending_.tokens.push_back(std::move(*token));
  }
  changed_.notify_all();
}

void RequestStream::finish(GenerationOutcome outcome) {
  {
    std::lock_guard lock(mutex_);
    if (pending_.outcome || delivered_outcome_) return;
    pending_.outcome = std::move(outcome);
  }
  changed_.notify_all();
}

}  // namespace moxin
