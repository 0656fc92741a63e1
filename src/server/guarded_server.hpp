// httplib::Server with admission control and deadlines on every connection (see
// connection_limits.hpp). httplib 0.11 runs each connection on a pool thread through the
// virtual process_and_close_socket; this class replaces that loop: it admits or refuses the
// connection, reads each request through a DeadlineStream and lets handlers ask whether the
// client is still there.
#pragma once

#include <httplib.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "server/connection_limits.hpp"

namespace moxin::server {

// How the connection the calling handler serves was admitted.
enum class Admission {
  kFull,        // within the caps: any request
  kMonitoring,  // over a cap: /health and /metrics only, one request, then closed
};

// The connection of the request the calling thread is handling (handlers run on the
// connection's thread). Null outside a request.
class ConnectionContext {
 public:
  virtual ~ConnectionContext() = default;
  virtual Admission admission() const = 0;
  virtual const std::string& refusal() const = 0;  // why a kMonitoring connection is restricted
  virtual bool client_gone() const = 0;            // the peer closed or reset the connection
  virtual void close_after_response() = 0;         // e.g. after refusing a request whose body was not read
  // Why the request could not be read, or empty: "header_timeout", "body_timeout", "headers_too_large".
  virtual std::string read_failure() const = 0;
};
ConnectionContext* current_connection();

class GuardedServer : public httplib::Server {
 public:
  explicit GuardedServer(const ConnectionLimits& limits);
  // Threads needed so that refusals and monitoring requests never wait behind full connections.
  size_t worker_threads() const;
  // After bind: httplib 0.11 listens with a backlog of 5, so a burst of connections (a crowd
  // of slow clients, or just many users) had its SYNs dropped and retried for seconds.
  void widen_listen_backlog();

 private:
  bool process_and_close_socket(socket_t sock) override;
  // Counts the connection in, or says why not (then nullopt: not even a monitoring slot).
  std::optional<Admission> admit(const std::string& address, std::string& refusal);
  void release(const std::string& address, Admission admission);

  const ConnectionLimits limits_;
  std::mutex mutex_;
  int full_ = 0, monitoring_ = 0;
  std::map<std::string, int> per_client_;  // full connections by client address
};

}  // namespace moxin::server
