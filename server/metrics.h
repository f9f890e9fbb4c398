// SPDX-License-Identifier: Apache-2.0
// Prometheus metrics (prometheus-cpp) on their own HTTP port (MetricsEndpoint): RPCs by method, code and model with
// latency histograms, in-flight calls, per-model batch histograms (rows, tokens, padding waste) and engine counters and
// gauges read at scrape time (rows, tokens, queue depth, resident weight bytes). Rates (rows/s, tokens/s) are rate()
// over the *_total counters.
#pragma once
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/scheduler/batching_engine.h"
#include "server/metrics_endpoint.h"

namespace attribution::server {

class ModelRegistry;

// Thread-safe (prometheus-cpp metrics are).
class ServerMetrics {
 public:
  // Serves /metrics on `listen` ("host:port", port 0: any); empty: metrics are kept but not served.
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(const std::string& listen);
  ~ServerMetrics();
  int port() const { return endpoint_ ? endpoint_->port() : 0; }
  // The exposition text of every metric.
  std::string Render() const;

  // `model`: one of the server's models, or empty (ListModels, a name the server does not serve): a label value
  // from the client's text would let any client add series without bound.
  void RecordRpc(const std::string& method, const std::string& code, const std::string& model, absl::Duration latency);
  void SetInFlight(int64_t calls);
  // A unary answer handed to gRPC that its client did not read (the call cancelled by the server after
  // client_read_timeout): the RPC was counted by its work's outcome, this by delivery.
  void RecordUndeliveredAnswer(const std::string& method, const std::string& model);
  // Adds the engine metrics of every model; `models` must outlive this object.
  void WatchModels(const ModelRegistry& models);

 private:
  ServerMetrics();
  void ObserveBatch(const std::string& model, const engine::BatchRecord& batch);

  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<std::shared_ptr<prometheus::Collectable>> engine_collector_;
  std::unique_ptr<MetricsEndpoint> endpoint_;  // last member: stopped first, while the rest is alive
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Histogram>& rpc_seconds_;
  prometheus::Gauge& in_flight_;
  prometheus::Family<prometheus::Counter>& undelivered_answers_;
  prometheus::Family<prometheus::Histogram>& batch_rows_;
  prometheus::Family<prometheus::Histogram>& batch_tokens_;
  prometheus::Family<prometheus::Histogram>& batch_padding_;
  prometheus::Family<prometheus::Histogram>& batch_seconds_;
};

}  // namespace attribution::server
