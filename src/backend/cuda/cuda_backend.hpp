#pragma once

#include <memory>

#include "backend/backend.hpp"

namespace moxin {

// Throws moxin::Error when no usable GPU is present.
std::unique_ptr<Backend> create_cuda_backend(int device_ordinal);

}  // namespace moxin
