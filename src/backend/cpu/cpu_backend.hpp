#pragma once

#include <memory>

#include "backend/backend.hpp"

namespace moxin {

// threads <= 0 means one worker per hardware thread.
std::unique_ptr<Backend> create_cpu_backend(int threads);

}  // namespace moxin
