#include "cli/progress_bar.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <unistd.h>

namespace moxin::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::string amount(uint64_t n, ProgressUnit unit) {
  if (unit == ProgressUnit::Items) return std::to_string(n);
  char buf[32];
  const double v = static_cast<double>(n);
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1f kB", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  return buf;
}

class Renderer {
 public:
  explicit Renderer(bool terminal) : terminal_(terminal) {}

  void operator()(const Progress& p) {
    const Clock::time_point now = Clock::now();
    if (p.task != task_) {  // tasks come one after another
      task_ = p.task;
      start_ = now;
      start_done_ = p.done;  // a resumed download starts part way
      drawn_ = {};
    }
    if (terminal_) {
      // ~10 redraws a second are enough to look live and cost nothing.
      if (!p.finished && now - drawn_ < std::chrono::milliseconds(100)) return;
      drawn_ = now;
      std::fprintf(stderr, "\r\033[K%s%s", line(p, now).c_str(), p.finished ? "\n" : "");
    } else if (p.finished) {
      std::fprintf(stderr, "%s\n", line(p, now).c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::string line(const Progress& p, Clock::time_point now) const {
    const double seconds = std::chrono::duration<double>(now - start_).count();
    std::string s = p.task + ": ";
    if (terminal_ && p.total > 0 && !p.finished) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * std::min(1.0, static_cast<double>(p.done) / p.total));
      char pct[16];
      std::snprintf(pct, sizeof pct, "%3d%% ", static_cast<int>(100.0 * p.done / p.total));
      s.append(1, '[').append(static_cast<size_t>(filled), '#').append(static_cast<size_t>(kWidth - filled), ' ');
      s.append("] ").append(pct);
    }
    const bool stopped = p.finished && p.total > 0 && p.done < p.total;
    if (stopped) s += "stopped at ";
    s += amount(p.done, p.unit);
    if (p.total > 0 && (!p.finished || stopped)) s += " / " + amount(p.total, p.unit);
    if (p.unit == ProgressUnit::Items) s += p.total == 1 ? " item" : " items";
    char tail[64];
    std::snprintf(tail, sizeof tail, stopped ? " after %.1f s" : p.finished ? " in %.1f s" : ", %.0f s", seconds);
    s += tail;
    if (p.unit == ProgressUnit::Bytes && seconds > 0.05 && p.done > start_done_)
      s += " (" + amount(static_cast<uint64_t>((p.done - start_done_) / seconds), p.unit) + "/s)";
    return s;
  }

  bool terminal_;
  std::string task_;
  Clock::time_point start_, drawn_;
  uint64_t start_done_ = 0;
};

}  // namespace

ProgressCallback stderr_progress(bool quiet) {
  if (quiet) return {};
  auto renderer = std::make_shared<Renderer>(isatty(STDERR_FILENO) != 0);
  return [renderer](const Progress& p) { (*renderer)(p); };
}

}  // namespace moxin::cli
