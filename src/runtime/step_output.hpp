// The scheduler's output side: streams each sequence's next token and text to the client, and ends sequences (finished, failed, or as
// the planner decided), reporting timings to the observer.
#pragma once

#include <optional>
#include <string>

#include "runtime/scheduled_sequence.hpp"

namespace moxin {

// Timings for metrics, called on the scheduler thread (keep them cheap).
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  virtual void on_first_token(double seconds_since_submit) = 0;
  virtual void on_next_token(double seconds_since_previous) = 0;
  virtual void on_finished(int prompt_tokens, int completion_tokens) = 0;
};

class StepOutput {
 public:
  explicit StepOutput(SchedulerObserver* observer) : observer_(observer) {}

  // The sequence's next token (its core already applied the rules: runtime/token_picker.hpp),
  // once all its inputs are in the KV cache.
  void on_token(ScheduledSequence& s, TokenOutcome out);
  // An ending the planner decided.
  void on_plan_end(ScheduledSequence& s, PlanEnd why);
  void fail(ScheduledSequence& s, const std::string& message);

 private:
  void finish(ScheduledSequence& s, FinishReason reason, const std::string& text, std::optional<GeneratedToken> last);

  SchedulerObserver* observer_;
};

}  // namespace moxin
