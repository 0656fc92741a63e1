// Error construction helpers. `cat` builds messages without std::format (g++ 12 lacks it).
#pragma once

#include <sstream>
#include <string>
#include <utility>

#include "moxin/error.hpp"

namespace moxin {

template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

}  // namespace moxin

// Throws moxin::Error with the message when the condition is false.
#define MOXIN_CHECK(cond, ...)            \
  do {                                    \
    if (!(cond)) ::moxin::fail(__VA_ARGS__); \
  } while (0)
