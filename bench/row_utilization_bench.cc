// SPDX-License-Identifier: Apache-2.0
// Grad rows (forward + backward to the input embeddings, CausalLM::ObjectiveGradients) and score
// rows (forward only, ObjectiveValues under InferenceMode, as the batching engine's executor runs
// them) at the batch sizes the engine forms, as a share of this machine's fp32 matmul peak measured
// in the same process with the same threads. Also times the decoder's projection matmuls alone, as
// separate and as fused (q/k/v, gate/up) shapes, to tell layout from everything around the matmuls.
//
//   row_utilization_bench --model=DIR [--seq=64] [--batches=8,32,64] [--iterations=5] [--repeats=3]
//                         [--profile=PREFIX]
// --profile writes a Chrome trace of one grad batch and one score batch at each batch size
// (PREFIX_grad_B.json, PREFIX_score_B.json; bench/trace_self_time.py sums them per op).
//
// FLOP counted per batch of B rows of S real tokens (P_lin: parameters of the decoder's linears;
// hidden = heads * head_dim):
//   forward  = 2 * P_lin * B * S                     (linears)
//            + layers * B * 2 * 2 * S^2 * hidden     (QK^T and AV over the full S x S square)
//            + 2 * hidden * vocab * B                (LM head at the one scored position per row)
//   grad row = forward + backward to inputs, where backward = the linears once more (input gradient
//              only, no weight gradients), attention twice (both operands are activations), the
//              LM head once more: 2 * linears + 3 * attention + 2 * head.
// Norms, RoPE, softmax and elementwise work are not counted.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "bench/bench_util.h"
#include "engine/model/causal_lm.h"

namespace attribution {
namespace {

using bench::Flag;

struct Flop {
  double linears = 0, attention = 0, head = 0;
  double Forward() const { return linears + attention + head; }
  double Grad() const { return 2 * linears + 3 * attention + 2 * head; }
};

Flop CountFlop(const engine::ModelConfig& c, int64_t batch, int64_t seq) {
  const double tokens = static_cast<double>(batch * seq);
  const double attention_width = static_cast<double>(c.num_heads * c.head_dim);
  const double kv_width = static_cast<double>(c.num_kv_heads * c.head_dim);
  const double linear_params =
      c.num_layers * (c.hidden_size * (2 * attention_width + 2 * kv_width) + 3.0 * c.hidden_size * c.intermediate_size);
  return {.linears = 2 * linear_params * tokens,
          .attention = c.num_layers * batch * 4.0 * seq * seq * attention_width,
          .head = 2.0 * c.hidden_size * c.vocab_size * batch};
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

// Seconds of one layer's projection matmuls (forward) at `tokens` rows, per layer, with the given
// output widths: the matmuls alone, nothing around them.
double ProjectionSeconds(const engine::ModelConfig& c, int64_t tokens, const std::vector<int64_t>& widths,
                         int iterations) {
  at::Tensor x = at::randn({tokens, c.hidden_size});  // [tokens, hidden]
  at::Tensor wide = at::randn({tokens, c.intermediate_size});
  std::vector<at::Tensor> weights;
  for (int64_t w : widths) weights.push_back(at::randn({w, c.hidden_size}));
  at::Tensor o = at::randn({c.hidden_size, c.num_heads * c.head_dim});
  at::Tensor down = at::randn({c.hidden_size, c.intermediate_size});
  return bench::SecondsPerCall(
      [&] {
        for (const at::Tensor& w : weights) (void)at::linear(x, w);
        (void)at::linear(x, o);
        (void)at::linear(wide, down);
      },
      iterations);
}

// Runs `fn` once under the CPU profiler, after one run without it (a first run also pays for page faults
// and one-off setup), and saves the trace to `path`.
void Profile(const std::function<void()>& fn, const std::string& path) {
  fn();
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  profiler::prepareProfiler(config, {ActivityType::CPU});
  profiler::enableProfiler(config, {ActivityType::CPU});
  fn();
  profiler::disableProfiler()->save(path);
}

int Run(int argc, char** argv) {
  if (std::optional<int> exit =
          bench::CheckFlags(argc, argv, {"batches", "iterations", "model", "profile", "repeats", "seq"}))
    return *exit;
  const std::string dir = Flag(argc, argv, "model", "");
  const int64_t seq = std::stoll(Flag(argc, argv, "seq", "64"));
  const int iterations = std::stoi(Flag(argc, argv, "iterations", "5"));
  const int repeats = std::stoi(Flag(argc, argv, "repeats", "3"));
  const std::string profile = Flag(argc, argv, "profile", "");
  std::vector<int64_t> batches;
  std::stringstream list(Flag(argc, argv, "batches", "8,32,64"));
  for (std::string item; std::getline(list, item, ',');) batches.push_back(std::stoll(item));
  auto loaded = engine::CausalLM::Load(dir, {});
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  const engine::CausalLM& model = **loaded;
  const engine::ModelConfig& c = model.config();
  const std::string load_before = LoadAverage();
  double peak = 0;
  for (int64_t n : {1024, 2048, 4096}) peak = std::max(peak, bench::MatmulPeakGflops(n, at::kFloat, model.device()));

  std::printf(
      "torch %s, %d threads; model: %lld layers, hidden %lld, heads %lld/%lld kv, intermediate "
      "%lld, vocab %lld, "
      "fp32, cpu; seq %lld; fp32 matmul peak %.1f GFLOP/s; load %s\n",
      TORCH_VERSION, at::get_num_threads(), (long long)c.num_layers, (long long)c.hidden_size, (long long)c.num_heads,
      (long long)c.num_kv_heads, (long long)c.intermediate_size, (long long)c.vocab_size, (long long)seq, peak,
      load_before.c_str());
  std::printf("%-34s %6s %10s %10s %8s\n", "job", "batch", "ms/batch", "GFLOP/s", "% peak");
  auto row = [&](const std::string& name, int64_t batch, double seconds, double flop) {
    std::printf("%-34s %6lld %10.1f %10.1f %7.1f%%\n", name.c_str(), (long long)batch, seconds * 1e3,
                flop / seconds / 1e9, 100.0 * flop / seconds / 1e9 / peak);
    std::fflush(stdout);
  };
  for (int64_t batch : batches) {
    const Flop flop = CountFlop(c, batch, seq);
    at::Tensor ids = at::randint(3, c.vocab_size, {batch, seq}, at::kLong);
    const at::Tensor embeds = *model.Embed(ids);
    std::vector<engine::RowObjective> objectives(batch, {.positions = {seq - 1}, .tokens = {5}});
    auto grad = [&] { (void)model.ObjectiveGradients({.inputs_embeds = embeds}, objectives); };
    auto score = [&] {
      c10::InferenceMode inference;
      engine::ObjectiveDetails details;
      (void)model.ObjectiveValues({.input_ids = ids}, objectives, &details);
    };
    if (!profile.empty()) {
      Profile(grad, profile + "_grad_" + std::to_string(batch) + ".json");
      Profile(score, profile + "_score_" + std::to_string(batch) + ".json");
    }
    // The best of a few repeats: the machine is shared, and the best is the least disturbed.
    double grad_s = 1e30, score_s = 1e30;
    for (int rep = 0; rep < repeats; ++rep) {
      grad_s = std::min(grad_s, bench::SecondsPerCall(grad, iterations));
      score_s = std::min(score_s, bench::SecondsPerCall(score, iterations));
    }
    row("grad rows", batch, grad_s, flop.Grad());
    row("score rows", batch, score_s, flop.Forward());
    const int64_t tokens = batch * seq, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
    const int64_t inter = c.intermediate_size;
    double separate_s = 1e30, fused_s = 1e30;
    {
      c10::InferenceMode inference;
      for (int rep = 0; rep < repeats; ++rep) {
        separate_s = std::min(separate_s, ProjectionSeconds(c, tokens, {q, kv, kv, inter, inter}, iterations));
        fused_s = std::min(fused_s, ProjectionSeconds(c, tokens, {q + 2 * kv, 2 * inter}, iterations));
      }
    }
    const double layer_linear_flop = flop.linears / c.num_layers;
    row("projection matmuls alone, separate", batch, separate_s * c.num_layers, layer_linear_flop * c.num_layers);
    row("projection matmuls alone, fused", batch, fused_s * c.num_layers, layer_linear_flop * c.num_layers);
  }
  std::printf("load after: %s\n", LoadAverage().c_str());
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Run(argc, argv); }
