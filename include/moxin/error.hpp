// The one exception type the engine throws. Every message names what failed and, where it
// helps, how to fix it ("[safetensors] model-00001.safetensors: tensor 'x' ...").
#pragma once

#include <stdexcept>
#include <string>

namespace moxin {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace moxin
