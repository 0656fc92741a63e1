// GET /metrics: Prometheus text exposition of the server's counters, gauges and latency
// histograms. Thread-safe: HTTP threads count responses, the scheduler thread reports timings.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/scheduler.hpp"

namespace moxin::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); the last one is +Inf
  double sum_ = 0;
};

class Metrics : public SchedulerObserver {
 public:
  Metrics();
  void count_response(int status);
  void on_first_token(double seconds) override;
  void on_next_token(double seconds) override;
  void on_finished(int prompt_tokens, int completion_tokens) override;
  std::string render(const SchedulerStats& scheduler) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, uint64_t> responses_;
  uint64_t prompt_tokens_ = 0;
  uint64_t generated_tokens_ = 0;
  uint64_t finished_ = 0;
  Histogram time_to_first_token_;
  Histogram time_per_token_;
};

}  // namespace moxin::server
