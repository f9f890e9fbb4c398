// SPDX-License-Identifier: Apache-2.0
// A minimal HTTP endpoint serving GET /metrics in the Prometheus text format. prometheus-cpp's own
// exposer (civetweb) cannot start its worker threads in our process: it creates them with a small
// fixed stack that the static TLS of the CUDA libraries LibTorch loads does not fit into (EINVAL).
// Scrapes are rare and small, so one thread answering one connection at a time is enough.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace attribution::server {

// Thread-safe; the destructor stops the thread and closes the socket.
class MetricsEndpoint {
 public:
  // Listens on "host:port" (port 0: any free port); `render` produces the exposition text per scrape.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& listen,
                                                                std::function<std::string()> render);
  ~MetricsEndpoint();
  int port() const { return port_; }

 private:
  MetricsEndpoint(int listen_fd, int port, std::function<std::string()> render);
  void Serve();
  void Answer(int connection);

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  int stop_pipe_[2] = {-1, -1};  // written by the destructor to wake poll()
  std::thread thread_;
};

}  // namespace attribution::server
