// What a public Generation iterates over: computed on the caller's thread (Generation::Direct,
// api_generation.cpp) or by the model's scheduler (Generation::Scheduled, api_submit.cpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "moxin/moxin.hpp"

namespace moxin {

struct Generation::State {
  virtual ~State() = default;
  virtual std::optional<Piece> next() = 0;

  FinishReason finish = FinishReason::None;
  std::vector<int32_t> generated;  // the end-of-sequence token never included
  std::string text;
  Timings timings;
};

}  // namespace moxin
