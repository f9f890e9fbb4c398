// SPDX-License-Identifier: Apache-2.0
// Forward and forward + input-gradient throughput of the engine's model runtime (Llama, Falcon or Mixtral shapes),
// against the machine's measured matmul peak and against transformers in Python on the same weights.
//
//   model_forward_bench --model=DIR [--batch=8] [--seq=72] [--iterations=5] [--dtype=float32]
//                       [--device=cpu] [--python=.venv/bin/python] [--quantization=none]
//                       [--quantization_block_size=64] [--double_quantization=false]
//                       [--decode_batches=1,32 [--decode_tokens=32]] [--json=PATH]
//                       [--pack_weights_for_few_rows=true]
//
// --decode_batches also times greedy decoding (engine::Generate with its KV cache) of --decode_tokens
// new tokens after --seq-token prompts at each batch size. Decode tokens/s leaves the prefill out:
// (batch x (decode_tokens - 1)) / (seconds for decode_tokens - seconds for 1 new token).
// --json writes the results (and the resident weight bytes) as JSON (scripts/gpu-check reads it).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "bench/bench_util.h"
#include "engine/model/causal_lm.h"
#include "engine/model/generation.h"

namespace attribution {
namespace {

using bench::Flag;

int Run(int argc, char** argv) {
  if (std::optional<int> exit = bench::CheckFlags(
          argc, argv,
          {"batch", "decode_batches", "decode_tokens", "device", "double_quantization", "dtype", "iterations", "json",
           "model", "pack_weights_for_few_rows", "python", "quantization", "quantization_block_size", "seq"}))
    return *exit;
  const std::string dir = Flag(argc, argv, "model", "");
  const int64_t batch = std::stoll(Flag(argc, argv, "batch", "8"));
  const int64_t seq = std::stoll(Flag(argc, argv, "seq", "72"));
  const int iterations = std::stoi(Flag(argc, argv, "iterations", "5"));
  const std::string python = Flag(argc, argv, "python", "");
  engine::LoadOptions options;
  options.dtype = *engine::ParseDtype(Flag(argc, argv, "dtype", "float32"));
  options.device = Flag(argc, argv, "device", "cpu");
  options.quantization = *engine::ParseQuantization(Flag(argc, argv, "quantization", "none"));
  options.four_bit = {.block_size = std::stoll(Flag(argc, argv, "quantization_block_size", "64")),
                      .double_quantization = Flag(argc, argv, "double_quantization", "false") == "true"};
  options.pack_weights_for_few_rows = Flag(argc, argv, "pack_weights_for_few_rows", "true") == "true";
  auto loaded = engine::CausalLM::Load(dir, options);
  if (!loaded.ok()) {
    std::cerr << loaded.status() << "\n";
    return 1;
  }
  const engine::CausalLM& model = **loaded;
  const engine::ModelConfig& c = model.config();

  // The work the job needs: every decoder linear at every token, attention over the causal
  // prefix, the LM head at one scored position per row. Input gradients double the linear work.
  const double tokens = static_cast<double>(batch * seq);
  const double linear_params = bench::DecoderLinearWeightsPerToken(c);  // Mixtral: only the experts used
  const double attention = c.num_layers * 2.0 * batch * seq * seq * c.num_heads * c.head_dim;  // QK^T + AV, causal half
  const double head = 2.0 * batch * c.hidden_size * c.vocab_size;
  const double forward_flop = 2.0 * linear_params * tokens + attention + head;
  const double backward_flop = 2.0 * forward_flop;

  at::Tensor ids = at::randint(3, c.vocab_size, {batch, seq}, at::kLong);
  engine::TokenQueries queries;
  std::vector<engine::RowObjective> objectives;
  for (int64_t r = 0; r < batch; ++r) {
    queries.rows.push_back(r);
    queries.positions.push_back(seq - 1);
    queries.tokens.push_back(5);
    objectives.push_back({.positions = {seq - 1}, .tokens = {5}});
  }
  const double forward_s = bench::SecondsPerCall(
      [&] {
        (void)model.ScoreTokens({.input_ids = ids}, queries);
        bench::SynchronizeDevice(model.device());
      },
      iterations);
  const at::Tensor embeds = *model.Embed(ids);
  const double grad_s = bench::SecondsPerCall(
      [&] {
        (void)model.ObjectiveGradients({.inputs_embeds = embeds}, objectives);
        bench::SynchronizeDevice(model.device());
      },
      iterations);
  const double peak = bench::MatmulPeakGflops(1024, options.dtype, model.device());

  std::printf(
      "model: %s, %lld layers, hidden %lld, vocab %lld, %s, %s, %s%s; resident weights %lld bytes; batch x seq = %lld "
      "x "
      "%lld; peak matmul %.1f GFLOP/s\n",
      engine::ArchitectureName(c.architecture), (long long)c.num_layers, (long long)c.hidden_size,
      (long long)c.vocab_size, Flag(argc, argv, "dtype", "float32").c_str(), options.device.c_str(),
      engine::QuantizationName(options.quantization), options.four_bit.double_quantization ? "+dq" : "",
      (long long)model.ResidentWeightBytes(), (long long)batch, (long long)seq, peak);
  std::printf("%-30s %12s %12s %12s %10s\n", "job", "ms/iter", "tokens/s", "GFLOP/s", "% peak");
  nlohmann::json report = {
      {"model", bench::ModelFacts(c, Flag(argc, argv, "dtype", "float32"), options.device,
                                  engine::QuantizationName(options.quantization), model.ResidentWeightBytes())},
      {"batch", batch},
      {"seq", seq},
      {"peak_gflops", peak}};
  auto row = [&](const char* name, double seconds, double flop) {
    std::printf("%-30s %12.1f %12.0f %12.1f %9.1f%%\n", name, seconds * 1e3, tokens / seconds, flop / seconds / 1e9,
                100.0 * flop / seconds / 1e9 / peak);
  };
  row("engine forward", forward_s, forward_flop);
  row("engine forward+input-grad", grad_s, forward_flop + backward_flop);
  report["forward"] = {{"seconds", forward_s}, {"flop", forward_flop}, {"tokens_per_second", tokens / forward_s}};
  report["forward_input_grad"] = {
      {"seconds", grad_s}, {"flop", forward_flop + backward_flop}, {"tokens_per_second", tokens / grad_s}};
  if (const std::string list = Flag(argc, argv, "decode_batches", ""); !list.empty()) {
    const int64_t new_tokens = std::max<int64_t>(2, std::stoll(Flag(argc, argv, "decode_tokens", "32")));
    report["decode"] = nlohmann::json::array();
    std::stringstream items(list);
    for (std::string item; std::getline(items, item, ',');) {
      const int64_t rows = std::stoll(item);
      at::Tensor prompt_ids = at::randint(3, c.vocab_size, {rows, seq}, at::kLong);
      std::vector<std::vector<int64_t>> prompts;
      for (int64_t r = 0; r < rows; ++r) {
        at::Tensor row_ids = prompt_ids[r].contiguous();
        prompts.emplace_back(row_ids.data_ptr<int64_t>(), row_ids.data_ptr<int64_t>() + seq);
      }
      // Generate returns host-side token ids, so each call ends with the device done. The two lengths
      // alternate and each keeps its fastest run: the decode time is their difference, and on a shared
      // machine a slow run of either made it vanish or go negative (7e9 "tokens/s").
      absl::Status failed;
      auto generate = [&](int64_t n) {
        const auto start = std::chrono::steady_clock::now();
        auto out = engine::Generate(model, prompts, {.max_new_tokens = n, .ignore_stop_tokens = true});
        if (!out.ok()) failed = out.status();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      };
      generate(new_tokens);  // warm-up: first-call allocations, the KV cache's growth
      double prefill_s = std::numeric_limits<double>::infinity(), total_s = prefill_s;
      for (int i = 0; i < std::max(2, iterations); ++i) {
        prefill_s = std::min(prefill_s, generate(1));
        total_s = std::min(total_s, generate(new_tokens));
      }
      if (!failed.ok()) {
        std::cerr << "decode at batch " << rows << ": " << failed << "\n";
        return 1;
      }
      nlohmann::json entry = {{"batch", rows},
                              {"prompt_tokens", seq},
                              {"new_tokens", new_tokens},
                              {"seconds", total_s},
                              {"prefill_seconds", prefill_s}};
      if (total_s > prefill_s) {
        const double decode_tps = rows * (new_tokens - 1) / (total_s - prefill_s);
        entry["decode_tokens_per_second"] = decode_tps;
        std::printf("%-30s batch %4lld: %lld new tokens in %.1f ms (prefill + first %.1f ms): %.0f decode tokens/s\n",
                    "engine greedy decode", (long long)rows, (long long)new_tokens, total_s * 1e3, prefill_s * 1e3,
                    decode_tps);
      } else {
        entry["decode_tokens_per_second"] = nullptr;
        std::printf(
            "%-30s batch %4lld: %lld new tokens in %.1f ms, no longer than 1 (%.1f ms): not measurable, "
            "raise --decode_tokens\n",
            "engine greedy decode", (long long)rows, (long long)new_tokens, total_s * 1e3, prefill_s * 1e3);
      }
      report["decode"].push_back(std::move(entry));
    }
  }
  if (!python.empty()) {
    const std::string out = bench::RunCommand(
        python + " " + std::string(ATTRIBUTION_SOURCE_DIR) + "/bench/python_forward_reference.py " + dir + " " +
        std::to_string(batch) + " " + std::to_string(seq) + " " + std::to_string(iterations));
    auto reference = nlohmann::json::parse(out, nullptr, false);
    if (reference.is_discarded() || !reference.contains("forward_s")) {
      std::cerr << "python reference failed: " << out << "\n";
      return 1;
    }
    const double py_forward = reference["forward_s"].get<double>(),
                 py_grad = reference["forward_backward_s"].get<double>();
    row("transformers forward", py_forward, forward_flop);
    row("transformers forward+input-grad", py_grad, forward_flop + backward_flop);
    std::printf("ratio engine/transformers: forward %.2fx, forward+input-grad %.2fx (torch %s, transformers %s)\n",
                py_forward / forward_s, py_grad / grad_s, reference["torch"].get<std::string>().c_str(),
                reference["transformers"].get<std::string>().c_str());
  }
  if (const std::string path = Flag(argc, argv, "json", ""); !path.empty()) {
    std::ofstream(path) << report.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Run(argc, argv); }
