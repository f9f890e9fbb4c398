// SPDX-License-Identifier: Apache-2.0
// What an LRP explanation costs against integrated gradients, through the engine: one request alone
// (median of --repeats), and many at once, where LRP requests batch together as IG's steps do. Prints
// seconds, rows, the work in FLOP and achieved GFLOP/s. InputXGradient is the plain one forward + one
// backward row that LRP's rules reshape.
//
//   lrp_bench --model=DIR [--prompt_tokens=64] [--target_tokens=8] [--repeats=5] [--concurrent=32]
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include "bench/bench_util.h"
#include "bench/synthetic_job.h"
#include "engine/attribution/attributor.h"

namespace attribution {
namespace {

using bench::Flag;
using namespace engine;

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int Main(int argc, char** argv) {
  if (std::optional<int> exit =
          bench::CheckFlags(argc, argv, {"concurrent", "model", "prompt_tokens", "repeats", "target_tokens"}))
    return *exit;
  const std::string dir = Flag(argc, argv, "model", "");
  auto loaded = CausalLM::Load(dir, {});
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  std::shared_ptr<const CausalLM> model = std::move(*loaded);
  auto engine = *BatchingEngine::Create(MakeModelExecutor(model), {});
  Attributor attributor(model, engine.get());
  const ModelConfig& c = model->config();
  const int64_t p = std::stoll(Flag(argc, argv, "prompt_tokens", "64")),
                t = std::stoll(Flag(argc, argv, "target_tokens", "8")),
                repeats = std::stoll(Flag(argc, argv, "repeats", "5")),
                concurrent = std::stoll(Flag(argc, argv, "concurrent", "32"));
  const AttributionRequest base = bench::SyntheticRequest(c, p, t);
  const double row_forward = bench::RowForwardFlop(c, p, t);

  struct Job {
    std::string name;
    AttributionMethod method;
    int n_steps = 1;
  };
  const std::vector<Job> jobs = {{"InputXGradient", AttributionMethod::kInputXGradient},
                                 {"AttnLRP", AttributionMethod::kAttnLrp},
                                 {"CP-LRP", AttributionMethod::kCpLrp},
                                 {"IG 32 steps", AttributionMethod::kIntegratedGradients, 32},
                                 {"IG 512 steps", AttributionMethod::kIntegratedGradients, 512}};
  const auto request_for = [&](const Job& job) {
    AttributionRequest r = base;
    r.method = job.method;
    r.n_steps = job.n_steps;
    return r;
  };
  const auto flop_of = [&](const AttributionResult& r) {
    return static_cast<double>(r.forward_passes) * row_forward +
           static_cast<double>(r.backward_passes) * 2 * row_forward;
  };
  // Warm-up: the engine learns each kind's cost, LibTorch sets up its kernels.
  const Job warm_up{"", AttributionMethod::kIntegratedGradients, 32};
  for (int i = 0; i < 3; ++i) (void)attributor.AttributeAndWait(request_for(warm_up));

  std::printf("model: %lld layers, hidden %lld, vocab %lld, fp32; prompt %lld tokens, target %lld tokens\n",
              (long long)c.num_layers, (long long)c.hidden_size, (long long)c.vocab_size, (long long)p, (long long)t);
  std::printf("\none request alone (median of %lld)\n", (long long)repeats);
  std::printf("%-16s %6s %9s %10s %9s %14s\n", "job", "rows", "GFLOP", "ms", "GFLOP/s", "x InputXGrad");
  double plain_ms = 0;
  for (const Job& job : jobs) {
    std::vector<double> ms;
    AttributionResult last;
    for (int64_t i = 0; i < (job.n_steps >= 512 ? 1 : repeats); ++i) {
      const absl::Time start = absl::Now();
      auto result = attributor.AttributeAndWait(request_for(job));
      if (!result.ok()) {
        std::cerr << job.name << ": " << result.status() << "\n";
        return 1;
      }
      ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
      last = std::move(*result);
    }
    const double median = Median(ms);
    if (plain_ms == 0) plain_ms = median;
    std::printf("%-16s %6lld %9.2f %10.1f %9.1f %13.2fx\n", job.name.c_str(), (long long)last.rows, flop_of(last) / 1e9,
                median, flop_of(last) / median / 1e6, median / plain_ms);
  }

  std::printf("\n%lld requests at once (rows of all requests batch together)\n", (long long)concurrent);
  std::printf("%-16s %6s %10s %16s %9s\n", "job", "rows", "seconds", "ms/explanation", "GFLOP/s");
  for (const Job& job : jobs) {
    if (job.n_steps >= 512) continue;
    std::vector<AttributionResult> results(concurrent);
    std::vector<std::thread> callers;
    const absl::Time start = absl::Now();
    for (int64_t i = 0; i < concurrent; ++i) {
      callers.emplace_back([&, i] {
        auto result = attributor.AttributeAndWait(request_for(job));
        if (result.ok()) results[i] = std::move(*result);
      });
    }
    for (std::thread& caller : callers) caller.join();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    double flop = 0;
    int64_t rows = 0;
    for (const AttributionResult& r : results) {
      flop += flop_of(r);
      rows += r.rows;
    }
    std::printf("%-16s %6lld %10.2f %16.1f %9.1f\n", job.name.c_str(), (long long)rows, seconds,
                1e3 * seconds / static_cast<double>(concurrent), flop / seconds / 1e9);
  }
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Main(argc, argv); }
