// SPDX-License-Identifier: Apache-2.0
// Attribution jobs through the engine against Captum over the transformers model, same weights, same
// run: integrated gradients (64 steps, gausslegendre; sequence and per-token), FeatureAblation and
// ShapleyValueSampling (25 samples). Prints seconds, the work in FLOP, achieved GFLOP/s and ratios.
//
//   method_bench --model=DIR [--prompt_tokens=64] [--target_tokens=8] [--max_batch_tokens=8192]
//                [--python=.venv/bin/python --captum_jobs=ig_seed,ig_tuned,fa,svs,lime,ks]
#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "bench/synthetic_job.h"
#include "engine/attribution/attributor.h"

namespace attribution {
namespace {

using bench::Flag;
using namespace engine;

int Main(int argc, char** argv) {
  const std::string dir = Flag(argc, argv, "model", "");
  auto loaded = CausalLM::Load(dir, {});
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  std::shared_ptr<const CausalLM> model = std::move(*loaded);
  auto engine = *BatchingEngine::Create(MakeModelExecutor(model),
                                        {.max_batch_tokens = std::stoll(Flag(argc, argv, "max_batch_tokens", "8192")),
                                         .max_batch_rows = std::stoll(Flag(argc, argv, "max_batch_rows", "128"))});
  Attributor attributor(model, engine.get());
  const ModelConfig& c = model->config();
  const int64_t p = std::stoll(Flag(argc, argv, "prompt_tokens", "64")),
                t = std::stoll(Flag(argc, argv, "target_tokens", "8"));
  const AttributionRequest base = bench::SyntheticRequest(c, p, t);
  const double row_forward = bench::RowForwardFlop(c, p, t);

  struct Job {
    std::string name, captum;
    AttributionRequest request;
  };
  std::vector<Job> jobs;
  auto add = [&](std::string name, std::string captum, AttributionMethod method, bool matrix, int64_t samples) {
    AttributionRequest r = base;
    r.method = method;
    r.n_steps = 64;
    r.want_token_matrix = matrix;
    r.n_samples = samples;
    jobs.push_back({std::move(name), std::move(captum), r});
  };
  add("IG 64 steps, sequence", "ig_tuned", AttributionMethod::kIntegratedGradients, false, 0);
  add("IG 64 steps, per-token matrix", "", AttributionMethod::kIntegratedGradients, true, 0);
  add("FeatureAblation", "fa", AttributionMethod::kFeatureAblation, false, 0);
  add("ShapleyValueSampling 25", "svs", AttributionMethod::kShapleyValueSampling, false, 25);
  add("Lime 200", "lime", AttributionMethod::kLime, false, 200);
  add("KernelShap 200", "ks", AttributionMethod::kKernelShap, false, 200);

  std::vector<std::pair<double, AttributionResult>> ours;
  for (const Job& job : jobs) {
    const absl::Time start = absl::Now();
    auto result = attributor.AttributeAndWait(job.request);
    if (!result.ok()) {
      std::cerr << job.name << ": " << result.status() << "\n";
      return 1;
    }
    ours.emplace_back(absl::ToDoubleSeconds(absl::Now() - start), std::move(*result));
  }
  nlohmann::json captum;
  const std::string python = Flag(argc, argv, "python", "");
  if (!python.empty()) {
    std::vector<std::string> prompt, target;
    for (int64_t id : base.prompt_ids) prompt.push_back(std::to_string(id));
    for (int64_t id : base.target_ids) target.push_back(std::to_string(id));
    const std::string out =
        bench::RunCommand(python + " " + ATTRIBUTION_SOURCE_DIR + "/bench/python_captum_attribution.py " + dir + " " +
                          absl::StrJoin(prompt, ",") + " " + absl::StrJoin(target, ",") + " " +
                          Flag(argc, argv, "captum_jobs", "ig_seed,ig_tuned,fa,svs,lime,ks"));
    captum = nlohmann::json::parse(out, nullptr, false);
    if (captum.is_discarded()) {
      std::cerr << "captum side failed: " << out << "\n";
      return 1;
    }
  }
  std::printf("model: %lld layers, hidden %lld, vocab %lld, fp32; prompt %lld tokens, target %lld tokens\n",
              (long long)c.num_layers, (long long)c.hidden_size, (long long)c.vocab_size, (long long)p, (long long)t);
  std::printf("%-32s %6s %9s %9s %9s %12s %12s %9s %10s\n", "job", "rows", "TFLOP", "seconds", "GFLOP/s", "captum s",
              "captum-seed s", "speedup", "max |diff|");
  for (size_t i = 0; i < jobs.size(); ++i) {
    const AttributionResult& r = ours[i].second;
    const double flop = r.forward_passes * row_forward + r.backward_passes * 2 * row_forward;
    double captum_s = 0, seed_s = 0, diff = 0;
    if (!jobs[i].captum.empty() && captum.contains(jobs[i].captum)) {
      const auto& job = captum[jobs[i].captum];
      captum_s = job["seconds"].get<double>();
      const auto reference = job["seq_attr"].get<std::vector<double>>();
      for (size_t f = 0; f < reference.size(); ++f) diff = std::max(diff, std::abs(reference[f] - r.sequence[f]));
      if (jobs[i].captum == "ig_tuned" && captum.contains("ig_seed"))
        seed_s = captum["ig_seed"]["seconds"].get<double>();
    }
    std::printf("%-32s %6lld %9.3f %9.2f %9.1f %12.1f %12.1f %8.1fx %10.2g\n", jobs[i].name.c_str(), (long long)r.rows,
                flop / 1e12, ours[i].first, flop / ours[i].first / 1e9, captum_s, seed_s,
                captum_s > 0 ? captum_s / ours[i].first : 0.0, diff);
  }
  std::printf(
      "(ShapleyValueSampling, Lime and KernelShap draw other samples than Captum: their max |diff| is sampling "
      "noise.)\n");
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Main(argc, argv); }
