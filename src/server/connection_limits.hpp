// What one client connection may hold, and for how long: the defences against slow or
// vanished clients (slowloris, stalled uploads, connection floods).
#pragma once

#include <cstddef>

namespace moxin::server {

struct ConnectionLimits {
  int max_connections = 512;      // open connections served at once (each holds a thread)
  int max_per_client = 64;        // of those, from one client address
  // Beyond the caps a few connections may still ask /health or /metrics (monitoring must see
  // a full server); everything else there is answered 503 and closed.
  int monitoring_slots = 32;
  int header_timeout_s = 10;      // request line + headers, from the first byte
  int body_timeout_s = 60;        // the whole body, from the end of the headers
  int keep_alive_s = 10;          // idle wait for the next request on a kept-alive connection
  int write_timeout_s = 10;       // one write to a client that does not read
  size_t max_header_bytes = 64 << 10;
  size_t max_headers = 100;
};

}  // namespace moxin::server
