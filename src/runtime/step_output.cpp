#include "runtime/step_output.hpp"

namespace moxin {
namespace {

double seconds(ScheduledSequence::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void StepOutput::on_token(ScheduledSequence& s, TokenOutcome out) {
  const auto now = ScheduledSequence::Clock::now();
  if (observer_) {
    if (s.sampled_any) {
      observer_->on_next_token(seconds(now - s.last_token));
    } else {
      observer_->on_first_token(seconds(now - s.submitted));
    }
  }
  s.sampled_any = true;
  s.last_token = now;
  if (out.finish != FinishReason::None) return finish(s, out.finish, out.text, std::move(out.record));
  s.inputs.push_back({out.token, -1});  // fed back at the next step
  s.stream->push(out.text, std::move(out.record));
}

void StepOutput::on_plan_end(ScheduledSequence& s, PlanEnd why) {
  switch (why) {
    case PlanEnd::NothingToGenerate: return finish(s, FinishReason::Length, {}, std::nullopt);
    case PlanEnd::Cancelled: return fail(s, "[scheduler] cancelled by the client");
    case PlanEnd::DoesNotFit: return fail(s, "[scheduler] the request does not fit the KV cache (raise --max-context)");
    case PlanEnd::CacheTooSmall: return fail(s, "[scheduler] the KV cache is too small for this request");
  }
}

void StepOutput::finish(ScheduledSequence& s, FinishReason reason, const std::string& text,
                        std::optional<GeneratedToken> last) {
  if (!text.empty() || last) s.stream->push(text, std::move(last));
  GenerationOutcome outcome;
  outcome.reason = reason;
  outcome.prompt_tokens = static_cast<int>(s.prompt_positions);
  outcome.completion_tokens = static_cast<int>(s.core.generated().size());
  s.stream->finish(outcome);
  if (observer_) observer_->on_finished(outcome.prompt_tokens, outcome.completion_tokens);
  s.done = true;
}

void StepOutput::fail(ScheduledSequence& s, const std::string& message) {
  GenerationOutcome outcome;
  outcome.error = message;
  outcome.prompt_tokens = static_cast<int>(s.prompt_positions);
  outcome.completion_tokens = static_cast<int>(s.core.generated().size());
  s.stream->finish(outcome);
  s.done = true;
}

}  // namespace moxin
