// A chat message's image_url turned into a preprocessed image for the scheduler: data URLs
// (data:image/...;base64,...) always; local files only with --allow-local-images; remote
// http(s) URLs never (the server fetches nothing). Every refusal is an ApiError 400.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/scheduler.hpp"

namespace moxin::server {

struct ImagePolicy {
  bool allow_local_files = false;
  uint64_t max_pixels = 89478485;
  int image_size = 224;  // the vision encoders' input size
};

RequestImage load_request_image(const std::string& url, const ImagePolicy& policy);

}  // namespace moxin::server
