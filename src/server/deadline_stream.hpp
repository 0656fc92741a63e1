// One client connection as httplib sees it (httplib::Stream), with deadlines httplib's own
// SocketStream lacks: its read timeout restarts with every byte, so a client trickling one
// header byte every few seconds held a worker thread forever (slowloris). Here the request
// line and headers must arrive within one deadline, the body within another.
#pragma once

#include <httplib.h>

#include <chrono>
#include <string>
#include <vector>

namespace moxin::server {

// Whether the peer of `sock` has closed or reset the connection (data waiting to be read, such
// as a pipelined request, does not count). Never blocks.
bool peer_has_closed(int sock);
// The peer's IP address as text ("127.0.0.1", "::1"); empty if unknown.
std::string peer_ip(int sock);

class DeadlineStream final : public httplib::Stream {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Phase { kHeaders, kBody };

  DeadlineStream(int sock, std::chrono::seconds header_time, std::chrono::seconds body_time,
                 std::chrono::seconds write_time, size_t max_header_bytes);

  // A new request starts: the header deadline runs from now.
  void start_request();
  // Why the last read failed, for the error response.
  bool header_deadline_passed() const { return header_deadline_passed_; }
  bool body_deadline_passed() const { return body_deadline_passed_; }
  bool headers_too_large() const { return headers_too_large_; }
  bool has_buffered_input() const { return buffer_begin_ < buffer_end_; }

  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  // httplib asks for the local address right after the headers are parsed: the body phase
  // (and its deadline) starts there.
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  socket_t socket() const override { return sock_; }

 private:
  bool wait_readable() const;  // until data, the phase's deadline or a closed peer

  int sock_;
  std::chrono::seconds header_time_, body_time_, write_time_;
  size_t max_header_bytes_;
  // Mutable: httplib's interface makes the phase hook and readiness checks const.
  mutable Phase phase_ = Phase::kHeaders;
  mutable Clock::time_point deadline_;
  mutable bool header_deadline_passed_ = false, body_deadline_passed_ = false;
  bool headers_too_large_ = false;
  size_t header_bytes_ = 0;
  std::vector<char> buffer_;
  size_t buffer_begin_ = 0, buffer_end_ = 0;
};

}  // namespace moxin::server
