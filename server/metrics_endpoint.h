// SPDX-License-Identifier: Apache-2.0
// A minimal HTTP endpoint serving GET /metrics in the Prometheus text format. prometheus-cpp's own
// exposer (civetweb) cannot start its worker threads in our process: it creates them with a small
// fixed stack that the static TLS of the CUDA libraries LibTorch loads does not fit into (EINVAL).
//
// One thread answers one connection at a time. Scrapes are rare and small, and every connection has
// one deadline for all of it (reading the request, rendering, writing the response), so a client that
// trickles its request, never finishes its headers or never reads the response holds the thread for at
// most `connection_deadline`, not per read or write: a scrape queued behind it waits that long at most
// per connection ahead of it. Request headers are capped at kMaxRequestBytes (431 past it). What this
// does not bound: many hostile connections at once each take their deadline in turn (the listen backlog
// holds 16), so the port is best reachable by the scraper only.
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

// Thread-safe; the destructor stops the thread (at once, also mid-connection) and closes the socket.
class MetricsEndpoint {
 public:
  // Time for one connection in all: a Prometheus scrape of a few hundred kB takes milliseconds.
  static constexpr std::chrono::milliseconds kDefaultConnectionDeadline{2000};
  // Request line and headers together; Prometheus sends a few hundred bytes (more with a bearer token).
  static constexpr size_t kMaxRequestBytes = 8192;

  // Listens on "host:port" (port 0: any free port); `render` produces the exposition text per scrape
  // and is called on the endpoint's thread. A connection is closed once answered, or
  // `connection_deadline` after it was accepted if that comes first.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::function<std::string()> render,
      std::chrono::milliseconds connection_deadline = kDefaultConnectionDeadline);
  ~MetricsEndpoint();
  int port() const { return port_; }

 private:
  MetricsEndpoint(int listen_fd, int port, std::function<std::string()> render,
                  std::chrono::milliseconds connection_deadline);
  void Serve();
  // Answers one request on the non-blocking `connection`, giving up at `deadline` or when the
  // destructor stops the endpoint.
  void Answer(int connection, std::chrono::steady_clock::time_point deadline);

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  const std::chrono::milliseconds connection_deadline_;  // per connection, reading and writing together
  int stop_pipe_[2] = {-1, -1};                          // written by the destructor to wake every poll()
  std::thread thread_;
};

}  // namespace attribution::server
