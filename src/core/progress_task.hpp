// One task's reports to a ProgressCallback (include/moxin/progress.hpp), thinned out so a
// caller may call advance() per received chunk without flooding the renderer.
#pragma once

#include <string>

#include "moxin/progress.hpp"

namespace moxin {

class ProgressTask {
 public:
  // Reports the start (done 0). A null or empty callback makes every call a no-op.
  ProgressTask(const ProgressCallback* callback, std::string task, uint64_t total, ProgressUnit unit,
               uint64_t done = 0);
  // A task left unfinished (an exception) still gets its final report, short of the total, so
  // a bar is closed and a log shows where it stopped.
  ~ProgressTask() { finish(); }
  ProgressTask(const ProgressTask&) = delete;
  ProgressTask& operator=(const ProgressTask&) = delete;
  void set(uint64_t done);  // reported when it moved by at least 1/256 of the total
  void advance(uint64_t by) { set(progress_.done + by); }
  void finish();            // the final report (done is left as it is)

 private:
  void report();

  const ProgressCallback* callback_;
  Progress progress_;
  uint64_t reported_ = 0;
};

}  // namespace moxin
