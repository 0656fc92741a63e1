// One table of op cases (op, shape, inputs, tolerance) with a double-precision reference for
// each, written against the Backend interface only, so that every backend runs the same
// cases: tests/unit/test_op_cases.cpp runs them on each CPU kernel table and thread count.
// Inputs are drawn from `seed`, so a failure replays with MOXIN_TEST_SEED.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.hpp"

namespace moxin::op_cases {

struct OpCase {
  std::string name;                // op and shape, for failure messages
  double tolerance;                // on ||ours - reference|| / ||reference||
  std::vector<double> reference;   // the expected outputs, computed in double
  // Runs the op on a backend; returns its outputs in the reference's order. Outputs start as
  // NaN, so an element the op never writes shows up.
  std::function<std::vector<float>(Backend&)> run;
};

// Every case: layer_norm, rms_norm (and in place), add_rms_norm, gelu_erf, swiglu, add,
// add_scaled, add_rows_cyclic, over awkward shapes (1 to 4096 columns, odd row counts).
std::vector<OpCase> all_cases(uint32_t seed);

}  // namespace moxin::op_cases
