#include "server/deadline_stream.hpp"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moxin::server {
namespace {

constexpr size_t kReadBuffer = 4096;  // httplib reads headers byte by byte: buffer the socket

// Waits for `events` on `sock` until `deadline`; false on timeout or error.
bool wait_for(int sock, short events, DeadlineStream::Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - DeadlineStream::Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{sock, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n > 0) return true;  // ready, or hung up / failed: the next call says which
    if (n < 0 && errno != EINTR) return false;
  }
}

void address_of(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  const int rc = peer ? ::getpeername(sock, reinterpret_cast<sockaddr*>(&addr), &len)
                      : ::getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  ip.clear();
  port = -1;
  if (rc != 0) return;
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    port = ntohs(in6->sin6_port);
  }
  ip = text;
}

}  // namespace

bool peer_has_closed(int sock) {
  pollfd p{sock, static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
  char byte;
  const ssize_t n = ::recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

std::string peer_ip(int sock) {
  std::string ip;
  int port = 0;
  address_of(sock, true, ip, port);
  return ip;
}

DeadlineStream::DeadlineStream(int sock, std::chrono::seconds header_time, std::chrono::seconds body_time,
                               std::chrono::seconds write_time, size_t max_header_bytes)
    : sock_(sock),
      header_time_(header_time),
      body_time_(body_time),
      write_time_(write_time),
      max_header_bytes_(max_header_bytes),
      buffer_(kReadBuffer) {
  start_request();
}

void DeadlineStream::start_request() {
  phase_ = Phase::kHeaders;
  deadline_ = Clock::now() + header_time_;
  header_deadline_passed_ = body_deadline_passed_ = headers_too_large_ = false;
  header_bytes_ = 0;
}

bool DeadlineStream::wait_readable() const {
  if (has_buffered_input()) return true;
  if (wait_for(sock_, POLLIN, deadline_)) return true;
  (phase_ == Phase::kHeaders ? header_deadline_passed_ : body_deadline_passed_) = true;
  return false;
}

bool DeadlineStream::is_readable() const { return wait_readable(); }

bool DeadlineStream::is_writable() const {
  return wait_for(sock_, POLLOUT, Clock::now() + write_time_) && !peer_has_closed(sock_);
}

ssize_t DeadlineStream::read(char* ptr, size_t size) {
  if (!has_buffered_input()) {
    if (!wait_readable()) return -1;
    ssize_t n;
    do {
      n = ::recv(sock_, buffer_.data(), buffer_.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    buffer_begin_ = 0;
    buffer_end_ = static_cast<size_t>(n);
  }
  const size_t n = std::min(size, buffer_end_ - buffer_begin_);
  if (phase_ == Phase::kHeaders) {
    header_bytes_ += n;
    if (header_bytes_ > max_header_bytes_) {
      headers_too_large_ = true;
      return -1;
    }
  }
  std::memcpy(ptr, buffer_.data() + buffer_begin_, n);
  buffer_begin_ += n;
  return static_cast<ssize_t>(n);
}

ssize_t DeadlineStream::write(const char* ptr, size_t size) {
  if (!wait_for(sock_, POLLOUT, Clock::now() + write_time_)) return -1;
  ssize_t n;
  do {
    n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}

void DeadlineStream::get_remote_ip_and_port(std::string& ip, int& port) const { address_of(sock_, true, ip, port); }

void DeadlineStream::get_local_ip_and_port(std::string& ip, int& port) const {
  address_of(sock_, false, ip, port);
  phase_ = Phase::kBody;
  deadline_ = Clock::now() + body_time_;
}

}  // namespace moxin::server
