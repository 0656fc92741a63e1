// Progress of the long steps of loading a model (download, load, upload to the GPU, quantize).
// The library only reports; whoever called it decides how to show it (the `moxin` command
// draws bars on a terminal and one-line summaries otherwise). An empty callback is silent.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace moxin {

enum class ProgressUnit { Bytes, Items };

struct Progress {
  std::string task;        // what is being done, e.g. "download org/name model.safetensors"
  uint64_t done = 0;
  uint64_t total = 0;      // 0 = unknown
  ProgressUnit unit = ProgressUnit::Items;
  bool finished = false;   // the last report of this task (done == total unless it failed)
};

// Called on the loading thread, possibly often (every chunk received): keep it cheap.
using ProgressCallback = std::function<void(const Progress&)>;

}  // namespace moxin
