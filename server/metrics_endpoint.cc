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
#include <list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/server_config.h"

namespace attribution::server {
namespace {

using Clock = std::chrono::steady_clock;
using Render = std::function<std::string()>;

bool WouldBlock() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

std::string Response(absl::string_view status, absl::string_view extra_headers, absl::string_view body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
                      extra_headers, "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

// The response to `request_line` ("GET /metrics HTTP/1.1"); calls `render` for a scrape only.
std::string Respond(absl::string_view request_line, const Render& render) {
  const std::vector<absl::string_view> parts = absl::StrSplit(request_line, ' ');
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/")) {
    return Response("400 Bad Request", "", "expected a request line \"GET /metrics HTTP/1.1\"\n");
  }
  const absl::string_view path = parts[1].substr(0, parts[1].find('?'));
  if (path != "/metrics") return Response("404 Not Found", "", "not found: try GET /metrics\n");
  if (parts[0] != "GET") return Response("405 Method Not Allowed", "Allow: GET\r\n", "only GET /metrics\n");
  return Response("200 OK", "", render());
}

// One accepted connection and how far its exchange has come; owns `fd`.
struct Connection {
  enum class Phase { kReadingHead, kWriting, kDraining };

  Connection(int fd, Clock::time_point deadline) : fd(fd), deadline(deadline) {}
  ~Connection() { ::close(fd); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const int fd;                      // non-blocking
  const Clock::time_point deadline;  // closed then, whatever its phase
  Phase phase = Phase::kReadingHead;
  std::string request;   // kReadingHead: what has arrived of the request line and headers
  std::string response;  // kWriting: all of it, of which `sent` bytes are out
  size_t sent = 0;
  bool drain_after_writing = false;  // the response refuses a request that was not read in full (431)
};
using Phase = Connection::Phase;

// What a connection needs after one step.
enum class Next { kAwaitSocket, kContinue, kClose };

// The poll() events `connection` waits for in its phase.
short AwaitedEvents(const Connection& connection) {
  switch (connection.phase) {
    case Phase::kReadingHead:
    case Phase::kDraining:
      return POLLIN;
    case Phase::kWriting:
      return POLLOUT;
  }
  return 0;
}

void StartWriting(Connection& connection, std::string response, bool drain_after_writing) {
  connection.phase = Phase::kWriting;
  connection.response = std::move(response);
  connection.drain_after_writing = drain_after_writing;
}

// kReadingHead: receives once (a GET has no body). Once the head is complete, prepares the response
// (rendering for a scrape only); past kMaxRequestBytes without it, prepares a 431.
Next ReadHead(Connection& connection, const Render& render) {
  char buffer[2048];
  const ssize_t n = ::recv(connection.fd, buffer, sizeof(buffer), 0);
  if (n < 0 && WouldBlock()) return Next::kAwaitSocket;
  if (n <= 0) return Next::kClose;  // the client closed or failed
  std::string& request = connection.request;
  const size_t searched = request.size() < 3 ? 0 : request.size() - 3;  // "\r\n\r\n" may span reads
  request.append(buffer, static_cast<size_t>(n));
  const size_t end = request.find("\r\n\r\n", searched);
  if (end != std::string::npos && end + 4 <= MetricsEndpoint::kMaxRequestBytes) {
    StartWriting(connection, Respond(request.substr(0, request.find("\r\n")), render), /*drain_after_writing=*/false);
    return Next::kContinue;
  }
  if (request.size() >= MetricsEndpoint::kMaxRequestBytes) {
    StartWriting(
        connection,
        Response("431 Request Header Fields Too Large", "",
                 absl::StrCat("request line and headers over ", MetricsEndpoint::kMaxRequestBytes, " bytes\n")),
        /*drain_after_writing=*/true);
    return Next::kContinue;
  }
  return Next::kAwaitSocket;
}

// kWriting: sends once. Once all is out, closes, or for a refusal stops writing and moves to kDraining.
Next WriteResponse(Connection& connection) {
  const absl::string_view left = absl::string_view(connection.response).substr(connection.sent);
  const ssize_t n = ::send(connection.fd, left.data(), left.size(), MSG_NOSIGNAL);
  if (n < 0 && WouldBlock()) return Next::kAwaitSocket;
  if (n <= 0) return Next::kClose;
  connection.sent += static_cast<size_t>(n);
  if (connection.sent < connection.response.size()) return Next::kAwaitSocket;
  if (!connection.drain_after_writing) return Next::kClose;
  ::shutdown(connection.fd, SHUT_WR);
  connection.phase = Phase::kDraining;
  return Next::kAwaitSocket;
}

// kDraining: discards what the client still sends until it closes (or the deadline passes). For a refusal
// sent before the request was read in full: closing with unread bytes would reset the connection, and the
// client's kernel would drop the refusal before the client read it. One recv() per call, so that a client
// that keeps sending cannot hold the thread.
Next Drain(Connection& connection) {
  char buffer[4096];
  const ssize_t n = ::recv(connection.fd, buffer, sizeof(buffer), 0);
  if (n < 0 && WouldBlock()) return Next::kAwaitSocket;
  return n <= 0 ? Next::kClose : Next::kAwaitSocket;
}

Next Step(Connection& connection, const Render& render) {
  switch (connection.phase) {
    case Phase::kReadingHead:
      return ReadHead(connection, render);
    case Phase::kWriting:
      return WriteResponse(connection);
    case Phase::kDraining:
      return Drain(connection);
  }
  return Next::kClose;
}

// Moves `connection` on as far as its socket allows without waiting (at most one recv() and one send());
// false once it is done with (answered, refused, or the client went away) and may be closed.
bool Advance(Connection& connection, const Render& render) {
  for (;;) {
    switch (Step(connection, render)) {
      case Next::kAwaitSocket:
        return true;
      case Next::kClose:
        return false;
      case Next::kContinue:
        break;
    }
  }
}

// Milliseconds until the first deadline, rounded up so that it has passed when poll() returns; -1 (no
// timeout) when no connection is open. `connections` are in the order accepted, so of their deadlines.
int PollTimeout(const std::list<Connection>& connections) {
  if (connections.empty()) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(connections.front().deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, std::numeric_limits<int>::max()));
}

// Closes the connections past their deadline and moves on those that poll() found ready; `polled` holds
// one pollfd per connection, in order.
void ServeReady(absl::Span<const pollfd> polled, const Render& render, std::list<Connection>& connections) {
  const Clock::time_point now = Clock::now();
  auto connection = connections.begin();
  for (const pollfd& fd : polled) {
    const bool done = now >= connection->deadline || (fd.revents != 0 && !Advance(*connection, render));
    connection = done ? connections.erase(connection) : std::next(connection);
  }
}

// The oldest connection still without its request (a scraper sends it at once, so that is the one most
// likely idle), or end().
std::list<Connection>::iterator OldestIdle(std::list<Connection>& connections) {
  return std::find_if(connections.begin(), connections.end(),
                      [](const Connection& connection) { return connection.phase == Phase::kReadingHead; });
}

// Closes one connection to make room for a new one: the oldest idle one, or the oldest of all when every
// one is being answered.
void MakeRoom(std::list<Connection>& connections) {
  const auto idle = OldestIdle(connections);
  connections.erase(idle != connections.end() ? idle : connections.begin());
}

int Accept(int listen_fd) { return ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK); }

// Accepts the connections waiting in the listen backlog (at most kMaxConnections per call, so that a flood
// cannot starve the open ones) and moves each on at once: a scraper's request often arrives with the
// handshake, and is then answered before any later connection can displace it.
//
// Out of file descriptors (EMFILE/ENFILE), an idle connection of ours is closed to make room (one being
// answered is left alone: a flood must not cut off scrapes). accept() fails so whether or not a connection
// waits, and only the first one is known to (poll() said so): later failures end the call, and the next
// poll() tells. False when we hold no idle connection to close: the backlog then stays readable and must
// not be polled again at once (poll() would return at once, for as long as the process is out of
// descriptors, and spin a core).
bool AcceptPending(int listen_fd, std::chrono::milliseconds connection_deadline, const Render& render,
                   std::list<Connection>& connections) {
  for (size_t i = 0; i < MetricsEndpoint::kMaxConnections; ++i) {
    int fd = Accept(listen_fd);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && i == 0) {
      const auto idle = OldestIdle(connections);
      if (idle == connections.end()) return false;
      connections.erase(idle);
      fd = Accept(listen_fd);
    }
    if (fd < 0) return true;  // none left, one reset before it was accepted, or still out of descriptors
    if (connections.size() >= MetricsEndpoint::kMaxConnections) MakeRoom(connections);
    connections.emplace_back(fd, Clock::now() + connection_deadline);
    if (!Advance(connections.back(), render)) connections.pop_back();
  }
  return true;
}

// A non-blocking socket listening on `host` (a name or an address, without brackets) and `port`: INVALID_ARGUMENT
// when `host` does not resolve, UNAVAILABLE with the system's reason when it cannot be bound.
absl::StatusOr<int> ListenOn(const std::string& host, int port) {
  // IPv4 first (localhost stays 127.0.0.1), then IPv6: "[::]:9464" on an IPv6-only cluster was refused
  // ("cannot resolve [::]") although --check_config passed it.
  sockaddr_storage address{};
  socklen_t address_length = 0;
  for (const int family : {AF_INET, AF_INET6}) {
    addrinfo hints{}, *found = nullptr;
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) continue;
    std::memcpy(&address, found->ai_addr, found->ai_addrlen);
    address_length = found->ai_addrlen;
    freeaddrinfo(found);
    break;
  }
  if (address_length == 0) return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", host));
  const bool v6 = address.ss_family == AF_INET6;
  (v6 ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port : reinterpret_cast<sockaddr_in*>(&address)->sin_port) =
      htons(static_cast<uint16_t>(port));
  // Non-blocking, so that accept() after poll() cannot block on a connection reset in between.
  const int fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int one = 1, zero = 0;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd >= 0 && v6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));  // "[::]": IPv4 too
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), address_length) != 0 ||
      ::listen(fd, static_cast<int>(MetricsEndpoint::kMaxConnections)) != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(error);
  }
  return fd;
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
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  // Any address: IPv6's with IPv4 on it too, as gRPC binds its port given the same spelling ("0.0.0.0" left
  // /metrics unreachable over IPv6 while the probes passed); IPv4's alone on a kernel without IPv6.
  const bool any = host.empty() || host == "*" || host == "0.0.0.0";
  const std::vector<std::string> hosts =
      any ? std::vector<std::string>{"::", "0.0.0.0"} : std::vector<std::string>{host};
  absl::StatusOr<int> fd = absl::UnavailableError("no address");
  for (const std::string& candidate : hosts) {
    fd = ListenOn(candidate, split->port);
    if (fd.ok()) break;
  }
  if (!fd.ok()) {
    return absl::Status(fd.status().code(), absl::StrCat("metrics_listen \"", listen, "\": ", fd.status().message()));
  }
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  ::getsockname(*fd, reinterpret_cast<sockaddr*>(&address), &length);
  const int bound_port = ntohs(address.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port
                                                             : reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  auto endpoint =
      std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(*fd, bound_port, std::move(render), connection_deadline));
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
  std::list<Connection> connections;  // in the order accepted
  std::vector<pollfd> fds;
  // Set while the process is out of file descriptors and none of ours could be closed: the backlog is left
  // alone until then, and waits there as it would for a busy server.
  std::optional<Clock::time_point> accept_again_at;
  for (;;) {
    if (accept_again_at && Clock::now() >= *accept_again_at) accept_again_at.reset();
    fds = {{stop_pipe_[0], POLLIN, 0}, {listen_fd_, static_cast<short>(accept_again_at ? 0 : POLLIN), 0}};
    for (const Connection& connection : connections) fds.push_back({connection.fd, AwaitedEvents(connection), 0});
    int timeout = PollTimeout(connections);
    if (accept_again_at) {
      const int pause = static_cast<int>(
          std::max<int64_t>(0, std::chrono::ceil<std::chrono::milliseconds>(*accept_again_at - Clock::now()).count()));
      timeout = timeout < 0 ? pause : std::min(timeout, pause);
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents != 0) return;
    // Open connections first: one whose request has arrived is answered before new ones can displace it.
    ServeReady(absl::MakeConstSpan(fds).subspan(2), render_, connections);
    if ((fds[1].revents & POLLIN) != 0 && !AcceptPending(listen_fd_, connection_deadline_, render_, connections)) {
      accept_again_at = Clock::now() + kAcceptPauseWhenOutOfDescriptors;
    }
  }
}

}  // namespace attribution::server
