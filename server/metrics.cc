// SPDX-License-Identifier: Apache-2.0
#include "server/metrics.h"

#include <ATen/DeviceAccelerator.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/common/build_info.h"
#include "server/log_line.h"
#include "server/model_registry.h"
#include "server/process_metrics.h"

namespace attribution::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

Histogram::BucketBoundaries Exponential(double start, double factor, int count) {
  Histogram::BucketBoundaries bounds;
  for (double b = start; count-- > 0; b *= factor) bounds.push_back(b);
  return bounds;
}

// Engine statistics, read from every model's engine when Prometheus scrapes.
class EngineCollector : public prometheus::Collectable {
 public:
  explicit EngineCollector(const ModelRegistry& models) : models_(models) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> families = {
        Family("attribution_engine_queued_rows", "Rows waiting in the model's batching engine",
               prometheus::MetricType::Gauge),
        Family("attribution_engine_queued_tokens", "Tokens of the rows waiting", prometheus::MetricType::Gauge),
        Family("attribution_engine_queued_bytes", "Memory the waiting work holds (rows, embedding paths)",
               prometheus::MetricType::Gauge),
        Family("attribution_engine_kv_cache_bytes",
               "Memory the generations in progress hold for their keys and values (against "
               "engine.max_kv_cache_bytes)",
               prometheus::MetricType::Gauge),
        Family("attribution_engine_token_budget", "Padded tokens per batch now (shrinks after out-of-memory)",
               prometheus::MetricType::Gauge),
        Family("attribution_model_resident_weight_bytes", "Bytes of weights the model holds on its device",
               prometheus::MetricType::Gauge),
        Family("attribution_engine_batches_total", "Batches run", prometheus::MetricType::Counter),
        Family("attribution_engine_rows_total", "Rows run (rate() gives rows/s)", prometheus::MetricType::Counter),
        Family("attribution_engine_tokens_total", "Real tokens run (rate() gives tokens/s)",
               prometheus::MetricType::Counter),
        Family("attribution_engine_padded_tokens_total", "Tokens including padding", prometheus::MetricType::Counter),
        Family("attribution_engine_failed_rows_total",
               "Rows that failed on the device (not those of calls cancelled or past their deadline)",
               prometheus::MetricType::Counter),
        Family("attribution_engine_abandoned_rows_total",
               "Rows run for calls that were cancelled or passed their deadline before the batch ended",
               prometheus::MetricType::Counter),
        Family("attribution_engine_device_seconds_total", "Time the executor spent running batches",
               prometheus::MetricType::Counter),
        Family("attribution_engine_time_limited_batches_total",
               "Batches that max_batch_seconds kept short because other calls waited", prometheus::MetricType::Counter),
        Family("attribution_engine_batches_inside_pauses_total",
               "Batches of short calls run while a long gradient batch paused between layers",
               prometheus::MetricType::Counter),
        Family("attribution_engine_seconds_without_progress",
               "How long the running batch has gone without progress (0 between batches); past the model's "
               "engine.stall_seconds the server is NOT_SERVING",
               prometheus::MetricType::Gauge),
    };
    for (const auto& model : models_.models()) {
      const engine::EngineStats s = model->engine->Stats();
      const double values[] = {static_cast<double>(s.queued_rows),
                               static_cast<double>(s.queued_tokens),
                               static_cast<double>(s.queued_bytes),
                               static_cast<double>(s.kv_cache_bytes),
                               static_cast<double>(s.token_budget),
                               static_cast<double>(model->model->ResidentWeightBytes()),
                               static_cast<double>(s.batches),
                               static_cast<double>(s.rows),
                               static_cast<double>(s.tokens),
                               static_cast<double>(s.padded_tokens),
                               static_cast<double>(s.failed_rows),
                               static_cast<double>(s.abandoned_rows),
                               absl::ToDoubleSeconds(s.device_time),
                               static_cast<double>(s.time_limited_batches),
                               static_cast<double>(s.batches_inside_pauses),
                               absl::ToDoubleSeconds(model->engine->TimeWithoutProgress())};
      for (size_t i = 0; i < families.size(); ++i) {
        prometheus::ClientMetric metric;
        metric.label.push_back({"model", model->spec.name});
        if (families[i].type == prometheus::MetricType::Gauge) {
          metric.gauge.value = values[i];
        } else {
          metric.counter.value = values[i];
        }
        families[i].metric.push_back(std::move(metric));
      }
    }
    families.push_back(DeviceMemory());
    return families;
  }

 private:
  static prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type) {
    prometheus::MetricFamily family;
    family.name = name;
    family.help = help;
    family.type = type;
    return family;
  }

  // The caching allocator's bytes on every CUDA device a model uses (none on CPU-only servers).
  prometheus::MetricFamily DeviceMemory() const {
    prometheus::MetricFamily family = Family("attribution_device_memory_bytes",
                                             "Accelerator memory held by the caching allocator (allocated: in tensors)",
                                             prometheus::MetricType::Gauge);
    std::set<int> devices;
    for (const auto& model : models_.models()) {
      absl::string_view device = model->spec.device;
      if (!absl::ConsumePrefix(&device, "cuda")) continue;
      int index = 0;
      if (absl::ConsumePrefix(&device, ":") && !absl::SimpleAtoi(device, &index)) continue;
      devices.insert(index);
    }
    for (int index : devices) {
      try {
        const auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
        const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
        for (auto [kind, bytes] : {std::pair{"allocated", stats.allocated_bytes[aggregate].current},
                                   std::pair{"reserved", stats.reserved_bytes[aggregate].current}}) {
          prometheus::ClientMetric metric;
          metric.label = {{"device", absl::StrCat("cuda:", index)}, {"kind", kind}};
          metric.gauge.value = static_cast<double>(bytes);
          family.metric.push_back(std::move(metric));
        }
      } catch (const std::exception&) {
        // No allocator stats for this device (e.g. not initialised yet): leave it out of this scrape.
      }
    }
    return family;
  }

  const ModelRegistry& models_;
};

}  // namespace

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      rpcs_(BuildCounter()
                .Name("attribution_rpcs_total")
                .Help("RPCs answered, by method, status code and model (empty: none of this server's)")
                .Register(*registry_)),
      rpc_seconds_(BuildHistogram()
                       .Name("attribution_rpc_seconds")
                       .Help("RPC latency, receipt to answer, by method, status code and model")
                       .Register(*registry_)),
      in_flight_(
          BuildGauge().Name("attribution_rpcs_in_flight").Help("Calls being served").Register(*registry_).Add({})),
      undelivered_answers_(BuildCounter()
                               .Name("attribution_undelivered_answers_total")
                               .Help("Unary answers cancelled undelivered because their client stopped reading "
                                     "(counted in attribution_rpcs_total by their work's outcome), by method and "
                                     "model")
                               .Register(*registry_)),
      batch_rows_(BuildHistogram().Name("attribution_batch_rows").Help("Rows per batch").Register(*registry_)),
      batch_tokens_(
          BuildHistogram().Name("attribution_batch_tokens").Help("Padded tokens per batch").Register(*registry_)),
      batch_padding_(BuildHistogram()
                         .Name("attribution_batch_padding_waste")
                         .Help("Share of a batch's tokens that is padding")
                         .Register(*registry_)),
      batch_seconds_(
          BuildHistogram().Name("attribution_batch_seconds").Help("Device time per batch").Register(*registry_)) {
  // Which build each replica runs, as a join key for dashboards (the Prometheus convention for versions).
  BuildGauge()
      .Name("attribution_build_info")
      .Help("Always 1; label commit: the commit the server was built from")
      .Register(*registry_)
      .Add({{"commit", BuildCommit()}})
      .Set(1);
}

ServerMetrics::~ServerMetrics() = default;

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(const std::string& listen) {
  auto metrics = std::unique_ptr<ServerMetrics>(new ServerMetrics());
  if (listen.empty()) return metrics;
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start(listen, [m = metrics.get()] { return m->Render(); });
  if (!endpoint.ok()) return endpoint.status();
  metrics->endpoint_ = std::move(*endpoint);
  return metrics;
}

std::string ServerMetrics::Render() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  if (std::shared_ptr<prometheus::Collectable> engines = engine_collector_.load()) {
    for (prometheus::MetricFamily& family : engines->Collect()) families.push_back(std::move(family));
  }
  prometheus::MetricFamily dropped{
      .name = "attribution_log_lines_dropped_total",
      .help = "Log lines left out because stderr took none while the log's buffer was full",
      .type = prometheus::MetricType::Counter};
  dropped.metric.emplace_back().counter.value = static_cast<double>(LogLinesDropped());
  families.push_back(std::move(dropped));
  for (prometheus::MetricFamily& family : ProcessMetricFamilies()) families.push_back(std::move(family));
  return prometheus::TextSerializer().Serialize(families);
}

void ServerMetrics::RecordRpc(const std::string& method, const std::string& code, const std::string& model,
                              absl::Duration latency) {
  const prometheus::Labels labels = {{"method", method}, {"code", code}, {"model", model}};
  rpcs_.Add(labels).Increment();
  static const Histogram::BucketBoundaries kBounds = Exponential(0.001, 2, 19);  // 1 ms .. 262 s
  // By code too: refusals (RESOURCE_EXHAUSTED, NOT_FOUND, ...) are answered in microseconds, and mixed with
  // served calls they pulled the latency quantiles down exactly when the server was overloaded.
  rpc_seconds_.Add(labels, kBounds).Observe(absl::ToDoubleSeconds(latency));
}

void ServerMetrics::RecordUndeliveredAnswer(const std::string& method, const std::string& model) {
  undelivered_answers_.Add({{"method", method}, {"model", model}}).Increment();
}

void ServerMetrics::SetInFlight(int64_t calls) { in_flight_.Set(static_cast<double>(calls)); }

void ServerMetrics::WatchModels(const ModelRegistry& models) {
  engine_collector_.store(std::make_shared<EngineCollector>(models));
  for (const auto& model : models.models()) {
    const std::string name = model->spec.name;
    model->engine->SetBatchObserver([this, name](const engine::BatchRecord& batch) { ObserveBatch(name, batch); });
  }
}

void ServerMetrics::ObserveBatch(const std::string& model, const engine::BatchRecord& batch) {
  static const Histogram::BucketBoundaries kRows = Exponential(1, 2, 11);     // 1 .. 1024
  static const Histogram::BucketBoundaries kTokens = Exponential(16, 2, 13);  // 16 .. 65536
  static const Histogram::BucketBoundaries kShare = {0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1};
  static const Histogram::BucketBoundaries kSeconds = Exponential(0.0005, 2, 16);
  const prometheus::Labels labels = {{"model", model}, {"kind", engine::RowKindName(batch.kind)}};
  batch_rows_.Add(labels, kRows).Observe(static_cast<double>(batch.rows));
  batch_tokens_.Add(labels, kTokens).Observe(static_cast<double>(batch.padded_tokens));
  batch_padding_.Add(labels, kShare).Observe(batch.padding_waste());
  batch_seconds_.Add(labels, kSeconds).Observe(absl::ToDoubleSeconds(batch.device_time));
}

}  // namespace attribution::server
