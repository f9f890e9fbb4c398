// SPDX-License-Identifier: Apache-2.0
// Attribution jobs through the engine against Captum over the transformers model, same weights, same
// run: integrated gradients (64 steps, gausslegendre; sequence and per-token), FeatureAblation and
// ShapleyValueSampling (25 samples). Prints seconds, the work in FLOP, achieved GFLOP/s and ratios.
//
//   method_bench --model=DIR [--prompt_tokens=64] [--target_tokens=8] [--max_batch_tokens=8192]
//                [--dtype=float32] [--device=cpu] [--quantization=none] [--jobs=ig64,ig64_matrix,fa,svs,lime,ks]
//                [--repeats=1] [--json=PATH] [--python=.venv/bin/python --captum_jobs=ig_seed,ig_tuned,fa,svs,lime,ks]
//
// --jobs also knows ig512 (512 steps) and seed000: seed 000's job (bench/synthetic_job.h's
// Seed000Request: a 40-token prompt, p(target) - p(foil), 15 steps from the pad embedding), which
// keeps its own prompt. Each job runs --repeats times (KEY:N: N times); seconds are the median. --json
// writes the table, the model's resident weight bytes and each job's FLOP as JSON (scripts/gpu-check
// reads it).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "bench/synthetic_job.h"
#include "engine/attribution/attributor.h"

namespace attribution {
namespace {

using bench::Flag;
using namespace engine;

struct Job {
  std::string key, name, captum;
  AttributionRequest request;
  int repeats = 1;
};

// The jobs --jobs can name, in table order.
std::vector<Job> KnownJobs(const ModelConfig& c, const AttributionRequest& base) {
  std::vector<Job> jobs;
  auto add = [&](std::string key, std::string name, std::string captum, AttributionMethod method, int64_t steps,
                 bool matrix, int64_t samples) {
    AttributionRequest r = base;
    r.method = method;
    r.n_steps = steps;
    r.want_token_matrix = matrix;
    r.n_samples = samples;
    jobs.push_back({std::move(key), std::move(name), std::move(captum), r});
  };
  add("ig64", "IG 64 steps, sequence", "ig_tuned", AttributionMethod::kIntegratedGradients, 64, false, 0);
  add("ig64_matrix", "IG 64 steps, per-token matrix", "", AttributionMethod::kIntegratedGradients, 64, true, 0);
  add("ig512", "IG 512 steps, sequence", "", AttributionMethod::kIntegratedGradients, 512, false, 0);
  add("fa", "FeatureAblation", "fa", AttributionMethod::kFeatureAblation, 64, false, 0);
  add("svs", "ShapleyValueSampling 25", "svs", AttributionMethod::kShapleyValueSampling, 64, false, 25);
  add("lime", "Lime 200", "lime", AttributionMethod::kLime, 64, false, 200);
  add("ks", "KernelShap 200", "ks", AttributionMethod::kKernelShap, 64, false, 200);
  jobs.push_back({"seed000", "seed 000 job (IG 15 steps, 40 tok)", "seed000", bench::Seed000Request(c)});
  return jobs;
}

struct Timed {
  double seconds = 0;  // median over the repeats
  std::vector<double> all;
  AttributionResult result;
};

absl::StatusOr<Timed> RunJob(const Attributor& attributor, const AttributionRequest& request, int repeats) {
  Timed timed;
  for (int i = 0; i < repeats; ++i) {
    const absl::Time start = absl::Now();
    auto result = attributor.AttributeAndWait(request);  // results reach the host: the device is done
    if (!result.ok()) return result.status();
    timed.all.push_back(absl::ToDoubleSeconds(absl::Now() - start));
    if (i == 0) timed.result = std::move(*result);
  }
  std::vector<double> sorted = timed.all;
  std::sort(sorted.begin(), sorted.end());
  timed.seconds = sorted[sorted.size() / 2];
  return timed;
}

int Main(int argc, char** argv) {
  if (std::optional<int> exit =
          bench::CheckFlags(argc, argv,
                            {"captum_jobs", "device", "dtype", "jobs", "json", "max_batch_rows", "max_batch_tokens",
                             "model", "prompt_tokens", "python", "quantization", "repeats", "target_tokens"}))
    return *exit;
  const std::string dir = Flag(argc, argv, "model", "");
  LoadOptions options;
  auto dtype = ParseDtype(Flag(argc, argv, "dtype", "float32"));
  auto quantization = ParseQuantization(Flag(argc, argv, "quantization", "none"));
  if (!dtype.ok() || !quantization.ok()) {
    std::cerr << (dtype.ok() ? quantization.status() : dtype.status()) << "\n";
    return 1;
  }
  options.dtype = *dtype;
  options.quantization = *quantization;
  options.device = Flag(argc, argv, "device", "cpu");
  auto loaded = CausalLM::Load(dir, options);
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
  const int repeats = std::max(1, std::stoi(Flag(argc, argv, "repeats", "1")));
  const AttributionRequest base = bench::SyntheticRequest(c, p, t);

  std::vector<Job> jobs;
  const std::vector<Job> known = KnownJobs(c, base);
  std::stringstream wanted(Flag(argc, argv, "jobs", "ig64,ig64_matrix,fa,svs,lime,ks"));
  for (std::string item; std::getline(wanted, item, ',');) {
    const size_t colon = item.find(':');
    const std::string key = item.substr(0, colon);
    auto it = std::find_if(known.begin(), known.end(), [&](const Job& j) { return j.key == key; });
    if (it == known.end()) {
      std::cerr << "--jobs: unknown job \"" << key << "\"\n";
      return 1;
    }
    jobs.push_back(*it);
    jobs.back().repeats = colon == std::string::npos ? repeats : std::max(1, std::stoi(item.substr(colon + 1)));
  }

  std::vector<Timed> ours;
  for (const Job& job : jobs) {
    auto timed = RunJob(attributor, job.request, job.repeats);
    if (!timed.ok()) {
      std::cerr << job.name << ": " << timed.status() << "\n";
      return 1;
    }
    ours.push_back(std::move(*timed));
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
  std::printf(
      "model: %lld layers, hidden %lld, vocab %lld, %s, %s, %s, resident weights %lld bytes; prompt %lld "
      "tokens, target %lld tokens; seconds: the median of %d runs (a job given as KEY:N: of N)\n",
      (long long)c.num_layers, (long long)c.hidden_size, (long long)c.vocab_size,
      Flag(argc, argv, "dtype", "float32").c_str(), options.device.c_str(), QuantizationName(options.quantization),
      (long long)model->ResidentWeightBytes(), (long long)p, (long long)t, repeats);
  std::printf("%-36s %6s %9s %9s %9s %12s %12s %9s %10s\n", "job", "rows", "TFLOP", "seconds", "GFLOP/s", "captum s",
              "captum-seed s", "speedup", "max |diff|");
  nlohmann::json report = {
      {"model", bench::ModelFacts(c, Flag(argc, argv, "dtype", "float32"), options.device,
                                  QuantizationName(options.quantization), model->ResidentWeightBytes())},
      {"repeats", repeats},
      {"jobs", nlohmann::json::object()}};
  for (size_t i = 0; i < jobs.size(); ++i) {
    const AttributionResult& r = ours[i].result;
    const AttributionRequest& q = jobs[i].request;
    const double row_forward =
        bench::RowForwardFlop(c, static_cast<int64_t>(q.prompt_ids.size()), static_cast<int64_t>(q.target_ids.size()));
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
    std::printf("%-36s %6lld %9.3f %9.2f %9.1f %12.1f %12.1f %8.1fx %10.2g\n", jobs[i].name.c_str(), (long long)r.rows,
                flop / 1e12, ours[i].seconds, flop / ours[i].seconds / 1e9, captum_s, seed_s,
                captum_s > 0 ? captum_s / ours[i].seconds : 0.0, diff);
    report["jobs"][jobs[i].key] = {{"name", jobs[i].name},
                                   {"prompt_tokens", q.prompt_ids.size()},
                                   {"target_tokens", q.target_ids.size()},
                                   {"n_steps", q.n_steps},
                                   {"rows", r.rows},
                                   {"forward_passes", r.forward_passes},
                                   {"backward_passes", r.backward_passes},
                                   {"flop", flop},
                                   {"repeats", jobs[i].repeats},
                                   {"seconds", ours[i].seconds},
                                   {"seconds_all", ours[i].all}};
  }
  std::printf(
      "(ShapleyValueSampling, Lime and KernelShap draw other samples than Captum: their max |diff| is sampling "
      "noise.)\n");
  if (const std::string path = Flag(argc, argv, "json", ""); !path.empty()) {
    std::ofstream(path) << report.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Main(argc, argv); }
