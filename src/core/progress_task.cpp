#include "core/progress_task.hpp"

namespace moxin {

ProgressTask::ProgressTask(const ProgressCallback* callback, std::string task, uint64_t total,
                           ProgressUnit unit, uint64_t done)
    : callback_(callback && *callback ? callback : nullptr) {
  progress_.task = std::move(task);
  progress_.total = total;
  progress_.unit = unit;
  progress_.done = done;
  report();
}

void ProgressTask::set(uint64_t done) {
  progress_.done = done;
  const uint64_t step = progress_.total / 256;
  if (done < reported_ || done - reported_ > step) report();
}

void ProgressTask::finish() {
  if (progress_.finished) return;
  progress_.finished = true;
  report();
}

void ProgressTask::report() {
  reported_ = progress_.done;
  if (callback_) (*callback_)(progress_);
}

}  // namespace moxin
