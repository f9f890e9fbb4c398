// SPDX-License-Identifier: Apache-2.0
// Small helpers shared by the benchmark programs: timing, the machine's measured matmul peak, and
// running the Python reference side of a comparison.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "engine/model/model_config.h"

namespace attribution::bench {

// Mean seconds per call of `fn` over `iterations` calls, after one warm-up call.
double SecondsPerCall(const std::function<void()>& fn, int iterations);

// Waits for the work queued on `device` (CUDA runs kernels asynchronously; a CPU needs nothing), so
// a timed call that leaves results on the device is timed to its end.
void SynchronizeDevice(const at::Device& device);

// Best fp32 (or `dtype`) GFLOP/s of an n x n x n matmul on `device` over a few repetitions.
double MatmulPeakGflops(int64_t n, at::ScalarType dtype, const at::Device& device);

// Runs `command` through the shell and returns its standard output (empty on failure).
std::string RunCommand(const std::string& command);

// Checks argv against the flags a benchmark reads, before it runs for minutes: --help lists them (exit
// status 0), and an argument that is not --NAME=VALUE of one of them is a usage error (2), where before a
// typo was ignored and --help ran the whole benchmark. nullopt: go on.
//
//   if (std::optional<int> exit = bench::CheckFlags(argc, argv, {"model", "seq"})) return *exit;
std::optional<int> CheckFlags(int argc, char** argv, std::initializer_list<std::string_view> known);

// Value of "--name=value" in argv, or `fallback`.
std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback);

// The model facts a benchmark's --json report opens with.
inline nlohmann::json ModelFacts(const engine::ModelConfig& c, const std::string& dtype, const std::string& device,
                                 const std::string& quantization, int64_t resident_weight_bytes) {
  return {{"layers", c.num_layers},
          {"hidden", c.hidden_size},
          {"vocab", c.vocab_size},
          {"dtype", dtype},
          {"device", device},
          {"quantization", quantization},
          {"resident_weight_bytes", resident_weight_bytes}};
}

// The decoder linear weights one token passes through: q, k, v, o, and the MLP (gated: gate, up, down;
// GPT-2 and Falcon: two; Mixtral: the router and the experts_per_token experts it picks, not the others).
inline double DecoderLinearWeightsPerToken(const engine::ModelConfig& c) {
  const double attention = c.hidden_size * c.head_dim * (2.0 * c.num_heads + 2.0 * c.num_kv_heads);
  const bool gated = c.architecture != engine::Architecture::kGpt2 && c.architecture != engine::Architecture::kFalcon;
  double mlp = (gated ? 3.0 : 2.0) * c.hidden_size * c.intermediate_size;
  if (c.mixture_of_experts) {
    mlp = mlp * c.mixture_of_experts->experts_per_token + c.hidden_size * c.mixture_of_experts->num_experts;
  }
  return c.num_layers * (attention + mlp);
}

}  // namespace attribution::bench
