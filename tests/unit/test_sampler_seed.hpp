// A fresh seed per test (MOXIN_TEST_SEED replays one), printed with the test's name; shared by
// the sampler and stop-matcher tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>

namespace moxin::sampler_test {

inline uint64_t printed_seed() {
  const char* forced = std::getenv("MOXIN_TEST_SEED");
  const uint64_t seed = forced ? std::strtoull(forced, nullptr, 10) : std::random_device{}();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::cout << "[seed] " << info->test_suite_name() << "." << info->name()
            << ": MOXIN_TEST_SEED=" << seed << std::endl;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

}  // namespace moxin::sampler_test
