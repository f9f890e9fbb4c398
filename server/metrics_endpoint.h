// SPDX-License-Identifier: Apache-2.0
// A minimal HTTP endpoint serving GET /metrics in the Prometheus text format. prometheus-cpp's own
// exposer (civetweb) cannot start its worker threads in our process: it creates them with a small
// fixed stack that the static TLS of the CUDA libraries LibTorch loads does not fit into (EINVAL).
//
// One thread serves every connection at once with poll(): each has its own state (reading the request
// head, writing the response, draining after a refusal) and one deadline for all of it, so a client that
// trickles its request, never sends one or never reads the response is closed `connection_deadline` after
// it was accepted, and a scrape beside it is answered as soon as its own request is in. Request headers
// are capped at kMaxRequestBytes (431 past it). At most kMaxConnections are open: one more closes the
// oldest that has not sent its request yet (see kMaxConnections). The port is still best reachable by the
// scraper only: the rendering runs on this thread, and a flood of connections can displace a scrape.
//
//   absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
//       MetricsEndpoint::Start("0.0.0.0:9464", [&] { return registry.Render(); });
//   if (!endpoint.ok()) return endpoint.status();
//   int port = (*endpoint)->port();
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace attribution::server {

// Thread-safe; the destructor stops the thread (at once, also mid-connection) and closes every socket.
class MetricsEndpoint {
 public:
  // Time for one connection in all: a Prometheus scrape of a few hundred kB takes milliseconds.
  static constexpr std::chrono::milliseconds kDefaultConnectionDeadline{2000};
  // Request line and headers together; Prometheus sends a few hundred bytes (more with a bearer token).
  static constexpr size_t kMaxRequestBytes = 8192;
  // Open connections. Past it, the oldest one still without its complete request is closed for the new one
  // (the oldest of all when every one has sent its request), rather than the new one refused: a scraper
  // sends its request right after connecting and is answered (often when accepted) long before 64 newer
  // connections could displace it, while refusing new ones would let anyone who holds 64 idle connections,
  // reopening each as its deadline closes it, lock the scraper out for good.
  static constexpr size_t kMaxConnections = 64;
  // How long new connections wait in the backlog while the process is out of file descriptors and the
  // endpoint holds none it could close for them.
  static constexpr std::chrono::milliseconds kAcceptPauseWhenOutOfDescriptors{100};

  // Listens on "host:port" (port 0: any free port); `render` produces the exposition text per scrape
  // and is called on the endpoint's thread. A connection is closed once answered, or
  // `connection_deadline` after it was accepted if that comes first (earlier to make room: kMaxConnections).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::function<std::string()> render,
      std::chrono::milliseconds connection_deadline = kDefaultConnectionDeadline);
  ~MetricsEndpoint();
  int port() const { return port_; }

 private:
  MetricsEndpoint(int listen_fd, int port, std::function<std::string()> render,
                  std::chrono::milliseconds connection_deadline);
  // The event loop, until the destructor writes to the stop pipe.
  void Serve();

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  const std::chrono::milliseconds connection_deadline_;  // per connection, reading and writing together
  int stop_pipe_[2] = {-1, -1};                          // written by the destructor to wake Serve()'s poll()
  std::thread thread_;
};

}  // namespace attribution::server
