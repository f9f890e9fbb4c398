// SPDX-License-Identifier: Apache-2.0
#include "server/metrics_endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/server_config.h"

namespace attribution::server {
namespace {

void WriteAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& listen,
                                                                        std::function<std::string()> render) {
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
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || ::listen(fd, 16) != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("metrics_listen \"", listen, "\": ", error));
  }
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  auto endpoint = std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(fd, ntohs(address.sin_port), std::move(render)));
  if (::pipe2(endpoint->stop_pipe_, O_CLOEXEC) != 0) return absl::InternalError("metrics endpoint: pipe failed");
  endpoint->thread_ = std::thread([e = endpoint.get()] { e->Serve(); });
  return endpoint;
}

MetricsEndpoint::MetricsEndpoint(int listen_fd, int port, std::function<std::string()> render)
    : listen_fd_(listen_fd), port_(port), render_(std::move(render)) {}

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
    const int connection = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    Answer(connection);
    ::close(connection);
  }
}

void MetricsEndpoint::Answer(int connection) {
  // A slow or silent client must not hold the endpoint: 2 s to send the request line.
  timeval timeout{2, 0};
  ::setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string request;
  char buffer[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    const ssize_t n = ::recv(connection, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    request.append(buffer, static_cast<size_t>(n));
  }
  const bool metrics = request.rfind("GET /metrics ", 0) == 0 || request.rfind("GET /metrics?", 0) == 0;
  const std::string body = metrics ? render_() : "not found: try GET /metrics\n";
  WriteAll(connection, absl::StrCat("HTTP/1.1 ", metrics ? "200 OK" : "404 Not Found",
                                    "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: ",
                                    body.size(), "\r\nConnection: close\r\n\r\n", body));
}

}  // namespace attribution::server
