#include "server/guarded_server.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include "core/check.hpp"
#include "server/deadline_stream.hpp"

namespace moxin::server {
namespace {

using std::chrono::seconds;

// A monitoring probe sends one short request at once; it gets little time.
constexpr seconds kMonitoringHeaderTime{2};

// The refusal when even the monitoring slots are taken: written raw, without reading the
// request, so that it costs next to nothing.
void refuse_raw(int sock, const std::string& why) {
  const std::string body = cat(R"({"error":{"message":")", why,
                               R"(","type":"server_error","param":null,"code":"too_many_connections"}})");
  const std::string response = cat("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n",
                                   "Retry-After: 1\r\nConnection: close\r\nContent-Length: ", body.size(), "\r\n\r\n",
                                   body);
  (void)::send(sock, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

class Connection final : public ConnectionContext {
 public:
  Connection(int sock, Admission admission, std::string refusal, DeadlineStream& stream)
      : sock_(sock), admission_(admission), refusal_(std::move(refusal)), stream_(stream) {}
  Admission admission() const override { return admission_; }
  const std::string& refusal() const override { return refusal_; }
  bool client_gone() const override { return peer_has_closed(sock_); }
  void close_after_response() override { close_ = true; }
  std::string read_failure() const override {
    if (stream_.headers_too_large()) return "headers_too_large";
    if (stream_.header_deadline_passed()) return "header_timeout";
    if (stream_.body_deadline_passed()) return "body_timeout";
    return "";
  }
  bool closing() const { return close_; }

 private:
  int sock_;
  Admission admission_;
  std::string refusal_;
  DeadlineStream& stream_;
  bool close_ = false;
};

thread_local ConnectionContext* t_current = nullptr;

// Sets the thread's current connection for the scope of one connection.
struct CurrentConnection {
  explicit CurrentConnection(ConnectionContext* c) { t_current = c; }
  ~CurrentConnection() { t_current = nullptr; }
};

// Waits for the next request's first byte (or a closed peer) up to the keep-alive time,
// giving up early when the server stops.
bool next_request_arrives(int sock, const std::atomic<socket_t>& listening, seconds keep_alive) {
  const auto deadline = std::chrono::steady_clock::now() + keep_alive;
  while (listening != INVALID_SOCKET && std::chrono::steady_clock::now() < deadline) {
    pollfd p{sock, POLLIN, 0};
    const int n = ::poll(&p, 1, 100);
    if (n > 0) return !peer_has_closed(sock);
    if (n < 0 && errno != EINTR) return false;
  }
  return false;
}

}  // namespace

ConnectionContext* current_connection() { return t_current; }

GuardedServer::GuardedServer(const ConnectionLimits& limits) : limits_(limits) {
  MOXIN_CHECK(limits.max_connections >= 1 && limits.max_per_client >= 1 && limits.header_timeout_s >= 1 &&
                  limits.body_timeout_s >= 1 && limits.keep_alive_s >= 1 && limits.write_timeout_s >= 1,
              "[serve] connection limits and timeouts must be at least 1");
}

size_t GuardedServer::worker_threads() const {
  // Full connections, monitoring slots, and spare threads for the instant raw refusals.
  return static_cast<size_t>(limits_.max_connections + 2 * limits_.monitoring_slots);
}

void GuardedServer::widen_listen_backlog() {
  // listen() again on a listening socket only changes its backlog (Linux).
  MOXIN_CHECK(::listen(svr_sock_, SOMAXCONN) == 0, "[serve] cannot set the listen backlog: ", std::strerror(errno));
}

std::optional<Admission> GuardedServer::admit(const std::string& address, std::string& refusal) {
  std::lock_guard lock(mutex_);
  int& mine = per_client_[address];
  if (full_ < limits_.max_connections && mine < limits_.max_per_client) {
    ++full_;
    ++mine;
    return Admission::kFull;
  }
  if (mine == 0) per_client_.erase(address);
  refusal = full_ >= limits_.max_connections
                ? cat("the server has its maximum of ", limits_.max_connections,
                      " open connections (--max-connections); retry later")
                : cat("your address ", address, " has its maximum of ", limits_.max_per_client,
                      " open connections (--max-connections-per-client); close some or retry later");
  if (monitoring_ >= limits_.monitoring_slots) return std::nullopt;
  ++monitoring_;
  return Admission::kMonitoring;
}

void GuardedServer::release(const std::string& address, Admission admission) {
  std::lock_guard lock(mutex_);
  if (admission == Admission::kMonitoring) {
    --monitoring_;
    return;
  }
  --full_;
  if (--per_client_[address] == 0) per_client_.erase(address);
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  const std::string address = peer_ip(sock);
  std::string refusal;
  const std::optional<Admission> admission = admit(address, refusal);
  bool ok = false;
  if (!admission) {
    refuse_raw(sock, refusal);
  } else {
    struct Release {  // the connection's slot comes back however the request ends
      GuardedServer& server;
      const std::string& address;
      Admission admission;
      ~Release() { server.release(address, admission); }
    } release_slot{*this, address, *admission};
    const bool monitoring = *admission == Admission::kMonitoring;
    DeadlineStream stream(sock, monitoring ? kMonitoringHeaderTime : seconds(limits_.header_timeout_s),
                          seconds(limits_.body_timeout_s), seconds(limits_.write_timeout_s),
                          limits_.max_header_bytes);
    Connection connection(sock, *admission, refusal, stream);
    const CurrentConnection current(&connection);
    const seconds keep_alive(monitoring ? kMonitoringHeaderTime : seconds(limits_.keep_alive_s));
    for (size_t count = keep_alive_max_count_; count > 0; --count) {
      if (!stream.has_buffered_input() && !next_request_arrives(sock, svr_sock_, keep_alive)) break;
      stream.start_request();
      bool closed = false;
      const bool last = count == 1 || monitoring;
      ok = process_request(stream, last, closed, nullptr);
      if (!ok || closed || last || connection.closing()) break;
    }
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

}  // namespace moxin::server
