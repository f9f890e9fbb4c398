// SPDX-License-Identifier: Apache-2.0
// The batching engine under a mixed workload: IG-like requests (grad rows) and scoring requests (score
// rows), run (a) one request at a time, (b) all at once, (c) as one giant request (the engine's
// saturated throughput). Prints rows/s, tokens/s, batch fill, per-request latency and the ratios.
//
//   batching_engine_bench --model=DIR [--ig_requests=64] [--ig_rows=32] [--score_requests=64]
//                         [--seq=32] [--max_batch_tokens=2048] [--max_batch_rows=64]
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "bench/bench_util.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution {
namespace {

using bench::Flag;
using namespace engine;

struct Workload {
  std::vector<std::vector<Row>> requests;  // rows of each request
  int64_t rows = 0, tokens = 0;
};

Workload MakeWorkload(const CausalLM& model, int ig_requests, int ig_rows, int score_requests, int64_t seq) {
  Workload w;
  for (int r = 0; r < ig_requests + score_requests; ++r) {
    const bool ig = r < ig_requests;
    const int64_t length = ig ? seq : seq / 2 + r % (seq / 2);
    at::Tensor ids = at::randint(3, model.config().vocab_size, {1, length}, at::kLong);
    std::vector<Row> rows;
    RowObjective objective{.positions = {length - 1}, .tokens = {5}};
    std::vector<int64_t> id_list(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + length);
    if (ig) {
      // Integrated gradients from the zero embedding: the path's points at the midpoint rule's alphas.
      auto path = std::make_shared<const EmbeddingPath>(EmbeddingPath{
          .input_ids = id_list, .baseline_ids = id_list, .zero_baseline = std::vector<uint8_t>(length, 1)});
      for (int s = 0; s < ig_rows; ++s) {
        rows.push_back(
            Row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = (s + 0.5) / ig_rows}, .objective = objective});
      }
    } else {
      rows.push_back(Row{.kind = RowKind::kScore, .input_ids = id_list, .objective = objective});
    }
    for (const Row& row : rows) w.tokens += row.length();
    w.rows += static_cast<int64_t>(rows.size());
    w.requests.push_back(std::move(rows));
  }
  return w;
}

struct RunResult {
  double seconds = 0;
  std::vector<double> grad_latencies, score_latencies;  // per request, seconds from its submission
  EngineStats stats;
};

// Submits the given groups of requests; each group starts when the previous one finished.
RunResult Run(std::shared_ptr<const CausalLM> model, const EngineOptions& options,
              const std::vector<std::vector<std::vector<Row>>>& waves) {
  auto engine = *BatchingEngine::Create(MakeModelExecutor(std::move(model)), options);
  RunResult result;
  const absl::Time start = absl::Now();
  absl::Mutex mu;
  for (const auto& wave : waves) {
    int remaining = static_cast<int>(wave.size());
    for (const auto& rows : wave) {
      const absl::Time submitted = absl::Now();
      auto left = std::make_shared<std::atomic<int64_t>>(static_cast<int64_t>(rows.size()));
      // A wave of one giant request mixes both kinds; it counts as gradient work.
      const bool has_grad =
          std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.kind == RowKind::kGrad; });
      std::vector<double>* latencies = has_grad ? &result.grad_latencies : &result.score_latencies;
      absl::Status s = engine->Submit(engine->NewRequest(), rows, [&, left, submitted, latencies](size_t, RowResult r) {
        if (!r.status.ok()) std::cerr << "row failed: " << r.status << "\n";
        if (left->fetch_sub(1) == 1) {
          absl::MutexLock lock(&mu);
          latencies->push_back(absl::ToDoubleSeconds(absl::Now() - submitted));
          --remaining;
        }
      });
      if (!s.ok()) std::cerr << "submit failed: " << s << "\n";
    }
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &remaining));
  }
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  result.stats = engine->Stats();
  return result;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

int Main(int argc, char** argv) {
  if (std::optional<int> exit = bench::CheckFlags(
          argc, argv,
          {"ig_requests", "ig_rows", "max_batch_rows", "max_batch_tokens", "model", "score_requests", "seq"}))
    return *exit;
  auto loaded = CausalLM::Load(Flag(argc, argv, "model", ""), {});
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  std::shared_ptr<const CausalLM> model = std::move(*loaded);
  const Workload w = MakeWorkload(
      *model, std::stoi(Flag(argc, argv, "ig_requests", "64")), std::stoi(Flag(argc, argv, "ig_rows", "32")),
      std::stoi(Flag(argc, argv, "score_requests", "64")), std::stoll(Flag(argc, argv, "seq", "32")));
  EngineOptions options{.max_batch_tokens = std::stoll(Flag(argc, argv, "max_batch_tokens", "2048")),
                        .max_batch_rows = std::stoll(Flag(argc, argv, "max_batch_rows", "64")),
                        .max_queue_delay = absl::Milliseconds(1)};
  std::vector<std::vector<std::vector<Row>>> sequential, concurrent(1), giant(1, std::vector<std::vector<Row>>(1));
  for (const auto& rows : w.requests) {
    sequential.push_back({rows});
    concurrent[0].push_back(rows);
    giant[0][0].insert(giant[0][0].end(), rows.begin(), rows.end());
  }
  const RunResult a = Run(model, options, sequential);
  const RunResult b = Run(model, options, concurrent);
  const RunResult c = Run(model, options, giant);
  std::printf("workload: %zu requests, %lld rows, %lld tokens; budget %lld tokens / %lld rows per batch\n",
              w.requests.size(), (long long)w.rows, (long long)w.tokens, (long long)options.max_batch_tokens,
              (long long)options.max_batch_rows);
  std::printf("%-26s %8s %8s %9s %8s %8s %9s %12s %12s %12s %12s\n", "mode", "seconds", "rows/s", "tokens/s", "batches",
              "rows/bat", "pad waste", "IG p50 ms", "IG p99 ms", "score p50 ms", "score p99 ms");
  auto row = [&](const char* name, const RunResult& r) {
    std::printf("%-26s %8.2f %8.1f %9.0f %8lld %8.1f %8.1f%% %12.0f %12.0f %12.0f %12.0f\n", name, r.seconds,
                w.rows / r.seconds, w.tokens / r.seconds, (long long)r.stats.batches,
                double(r.stats.rows) / std::max<int64_t>(1, r.stats.batches), 100 * r.stats.padding_waste(),
                1e3 * Percentile(r.grad_latencies, 0.5), 1e3 * Percentile(r.grad_latencies, 0.99),
                1e3 * Percentile(r.score_latencies, 0.5), 1e3 * Percentile(r.score_latencies, 0.99));
  };
  row("(a) one request at a time", a);
  row("(b) all concurrently", b);
  row("(c) one giant request", c);
  std::printf("throughput (b)/(a) = %.2fx, (b)/(c) = %.2f of saturation\n", a.seconds / b.seconds,
              c.seconds / b.seconds);
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Main(argc, argv); }
