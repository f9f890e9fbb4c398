// SPDX-License-Identifier: Apache-2.0
#include "server/metrics_endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/server_config.h"

namespace attribution::server {
namespace {

using Clock = std::chrono::steady_clock;

// Waits until `fd` has one of `events`; false when `deadline` passes first or `stop_fd` becomes readable.
// An error or hang-up on `fd` counts as ready: the recv() or send() that follows reports it.
bool AwaitReady(int fd, short events, int stop_fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    const int ready = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left, std::numeric_limits<int>::max())));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0 || fds[1].revents != 0) return false;
    if (fds[0].revents != 0) return true;
  }
}

bool WouldBlock() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

enum class RequestHead { kComplete, kTooLarge, kAbandoned };

// Reads the request line and headers into `request` (a GET has no body), at most kMaxRequestBytes of them.
// kAbandoned: the client closed, failed or took until the deadline.
RequestHead ReadRequestHead(int fd, int stop_fd, Clock::time_point deadline, std::string* request) {
  char buffer[2048];
  for (;;) {
    if (!AwaitReady(fd, POLLIN, stop_fd, deadline)) return RequestHead::kAbandoned;
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && WouldBlock()) continue;
    if (n <= 0) return RequestHead::kAbandoned;
    const size_t searched = request->size() < 3 ? 0 : request->size() - 3;  // "\r\n\r\n" may span reads
    request->append(buffer, static_cast<size_t>(n));
    const size_t end = request->find("\r\n\r\n", searched);
    if (end != std::string::npos && end + 4 <= MetricsEndpoint::kMaxRequestBytes) return RequestHead::kComplete;
    if (request->size() >= MetricsEndpoint::kMaxRequestBytes) return RequestHead::kTooLarge;
  }
}

// Sends all of `data`; false when the deadline passes first, the client goes away or the endpoint stops.
bool SendAll(int fd, int stop_fd, Clock::time_point deadline, absl::string_view data) {
  while (!data.empty()) {
    if (!AwaitReady(fd, POLLOUT, stop_fd, deadline)) return false;
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && WouldBlock()) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Stops writing and discards what the client still sends until it closes or the deadline passes. For a
// refusal sent before the request was read in full: closing with unread bytes would reset the connection,
// and the client's kernel would drop the refusal before the client read it.
void DrainUntilClosed(int fd, int stop_fd, Clock::time_point deadline) {
  ::shutdown(fd, SHUT_WR);
  char buffer[4096];
  while (AwaitReady(fd, POLLIN, stop_fd, deadline)) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && WouldBlock()) continue;
    if (n <= 0) return;
  }
}

std::string Response(absl::string_view status, absl::string_view extra_headers, absl::string_view body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
                      extra_headers, "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

// The response to `request_line` ("GET /metrics HTTP/1.1"); calls `render` for a scrape only.
std::string Respond(absl::string_view request_line, const std::function<std::string()>& render) {
  const std::vector<absl::string_view> parts = absl::StrSplit(request_line, ' ');
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/")) {
    return Response("400 Bad Request", "", "expected a request line \"GET /metrics HTTP/1.1\"\n");
  }
  const absl::string_view path = parts[1].substr(0, parts[1].find('?'));
  if (path != "/metrics") return Response("404 Not Found", "", "not found: try GET /metrics\n");
  if (parts[0] != "GET") return Response("405 Method Not Allowed", "Allow: GET\r\n", "only GET /metrics\n");
  return Response("200 OK", "", render());
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& listen,
                                                                        std::function<std::string()> render,
                                                                        std::chrono::milliseconds connection_deadline) {
  if (connection_deadline <= std::chrono::milliseconds(0)) {
    return absl::InvalidArgumentError("metrics endpoint: the connection deadline must be positive");
  }
  const std::optional<HostPort> split = SplitListenAddress(listen);
  if (!split) return absl::InvalidArgumentError(absl::StrCat("metrics_listen \"", listen, "\": expected host:port"));
  std::string host = split->host;
  if (host.empty() || host == "*") host = "0.0.0.0";
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("metrics_listen \"", listen, "\": cannot resolve ", host));
  }
  sockaddr_in address = *reinterpret_cast<sockaddr_in*>(found->ai_addr);
  freeaddrinfo(found);
  address.sin_port = htons(static_cast<uint16_t>(split->port));
  // Non-blocking, so that accept() after poll() cannot block on a connection reset in between.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || ::listen(fd, 16) != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("metrics_listen \"", listen, "\": ", error));
  }
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  auto endpoint = std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(fd, ntohs(address.sin_port), std::move(render), connection_deadline));
  if (::pipe2(endpoint->stop_pipe_, O_CLOEXEC) != 0) return absl::InternalError("metrics endpoint: pipe failed");
  endpoint->thread_ = std::thread([e = endpoint.get()] { e->Serve(); });
  return endpoint;
}

MetricsEndpoint::MetricsEndpoint(int listen_fd, int port, std::function<std::string()> render,
                                 std::chrono::milliseconds connection_deadline)
    : listen_fd_(listen_fd), port_(port), render_(std::move(render)), connection_deadline_(connection_deadline) {}

MetricsEndpoint::~MetricsEndpoint() {
  if (thread_.joinable()) {
    const char stop = 1;
    (void)::write(stop_pipe_[1], &stop, 1);
    thread_.join();
  }
  for (int fd : stop_pipe_) {
    if (fd >= 0) ::close(fd);
  }
  ::close(listen_fd_);
}

void MetricsEndpoint::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int connection = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (connection < 0) continue;
    Answer(connection, Clock::now() + connection_deadline_);
    ::close(connection);
  }
}

void MetricsEndpoint::Answer(int connection, Clock::time_point deadline) {
  const int stop = stop_pipe_[0];
  std::string request;
  switch (ReadRequestHead(connection, stop, deadline, &request)) {
    case RequestHead::kAbandoned:
      return;
    case RequestHead::kTooLarge:
      if (SendAll(connection, stop, deadline,
                  Response("431 Request Header Fields Too Large", "",
                           absl::StrCat("request line and headers over ", kMaxRequestBytes, " bytes\n")))) {
        DrainUntilClosed(connection, stop, deadline);
      }
      return;
    case RequestHead::kComplete:
      SendAll(connection, stop, deadline, Respond(request.substr(0, request.find("\r\n")), render_));
      return;
  }
}

}  // namespace attribution::server
