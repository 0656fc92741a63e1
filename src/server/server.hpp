// The OpenAI-compatible HTTP server over the continuous-batching scheduler:
//   POST /v1/chat/completions   (streaming or not; chat_request.hpp lists the mapping rules)
//   POST /v1/describe          (the seed crate's route; describe.hpp)
//   GET  /v1/models, GET /health, GET /metrics (Prometheus text)
//   GET  /, GET /ui/<file>     (the chat page, unless --no-ui; ui_routes.hpp)
// HTTP threads (cpp-httplib's pool) parse, validate, decode images and tokenize in parallel,
// then hand the request to the scheduler thread, the only one that touches the engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/engine.hpp"
#include "runtime/scheduler.hpp"
#include "server/connection_limits.hpp"

namespace moxin::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                     // 0: any free port (the chosen one is printed)
  std::string api_key;                 // empty: no authentication
  size_t max_body_bytes = size_t{32} << 20;
  std::string model_name = "moxin-vlm";
  bool allow_local_images = false;
  uint64_t max_pixels = 25000000;     // enough for a 224-px model; decoding costs time and memory per pixel
  std::string cors_origin;             // empty: no CORS headers (browsers refuse cross-origin calls)
  bool ui = true;                      // the chat page at / (ui_routes.hpp)
  ConnectionLimits connections;
  bool log_requests = false;
  SchedulerOptions scheduler;
};

// Serves until SIGTERM or SIGINT, then stops accepting connections, lets the requests in
// flight finish and returns. A second signal exits at once. Throws moxin::Error if the address
// cannot be bound.
void serve(Engine& engine, const ServerOptions& options);

// Equality of two secrets in time independent of where they differ (and of their lengths).
bool secrets_equal(const std::string& a, const std::string& b);

}  // namespace moxin::server
