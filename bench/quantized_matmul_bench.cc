// SPDX-License-Identifier: Apache-2.0
// One quantized projection, timed four ways at each row count: the dense weight (the ceiling), a
// dequantized copy then the library matmul (the CPU path, and the alternative on a GPU), and, on CUDA,
// the kernels that dequantize inside the product (forward, input gradient). Prints a table and one JSON
// line per case, so it tells at which row counts the fused kernels pay off on a given device.
//
//   quantized_matmul_bench [--device=cuda:0] [--dtype=bfloat16] [--in=4096] [--out=11008]
//                          [--rows=1,32,512,5184] [--formats=int8,nf4] [--iterations=20]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "engine/model/causal_lm.h"
#include "engine/model/quantized_matmul.h"

namespace attribution {
namespace {

using bench::Flag;
using engine::MatmulSide;

// Seconds per call of `iterations` calls queued back to back, then waited for once.
double Seconds(const std::function<at::Tensor()>& fn, int iterations, const at::Device& device) {
  return bench::SecondsPerCall(
             [&] {
               for (int i = 0; i < iterations; ++i) (void)fn();
               bench::SynchronizeDevice(device);
             },
             1) /
         iterations;
}

int Run(int argc, char** argv) {
  if (std::optional<int> exit =
          bench::CheckFlags(argc, argv, {"device", "dtype", "formats", "in", "iterations", "out", "rows"}))
    return *exit;
  const at::Device device(Flag(argc, argv, "device", "cpu"));
  const std::string dtype_name = Flag(argc, argv, "dtype", device.is_cuda() ? "bfloat16" : "float32");
  auto dtype = engine::ParseDtype(dtype_name);
  const int64_t in = std::stoll(Flag(argc, argv, "in", "4096")), out = std::stoll(Flag(argc, argv, "out", "11008"));
  const int iterations = std::stoi(Flag(argc, argv, "iterations", "20"));
  if (!dtype.ok()) {
    std::cerr << dtype.status() << "\n";
    return 1;
  }
  std::vector<int64_t> row_counts;
  for (absl::string_view r : absl::StrSplit(Flag(argc, argv, "rows", "1,32,512,5184"), ',')) {
    int64_t rows = 0;
    if (!absl::SimpleAtoi(r, &rows) || rows < 1) {
      std::cerr << "--rows: '" << r << "' is not a positive count\n";
      return 1;
    }
    row_counts.push_back(rows);
  }
  c10::InferenceMode inference;
  const auto options = at::TensorOptions().dtype(*dtype).device(device);
  const at::Tensor dense = at::randn({out, in}, options) * 0.02;

  std::printf(
      "| format | rows | dense ms | dequantize + matmul ms | fused ms | fused input grad ms | fused TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (absl::string_view name : absl::StrSplit(Flag(argc, argv, "formats", "int8,nf4"), ',')) {
    auto kind = engine::ParseQuantization(std::string(name));
    auto weight = kind.ok() ? engine::Quantize(dense, *kind) : kind.status();
    if (!weight.ok()) {
      std::cerr << "--formats: " << weight.status() << "\n";
      return 1;
    }
    for (int64_t rows : row_counts) {
      const at::Tensor x = at::randn({rows, in}, options);
      const at::Tensor output_gradient = at::randn({rows, out}, options);
      const double flop = 2.0 * rows * in * out;
      const double dense_s = Seconds([&] { return at::linear(x, dense); }, iterations, device);
      const double dequantized_s =
          Seconds([&] { return at::linear(x, engine::Dequantize(*weight, *dtype)); }, iterations, device);
      double fused_s = 0, fused_grad_s = 0;
      if (engine::FusedQuantizedMatmul(x, *weight, MatmulSide::kForward)) {
        fused_s = Seconds([&] { return *engine::FusedQuantizedMatmul(x, *weight, MatmulSide::kForward); }, iterations,
                          device);
        fused_grad_s =
            Seconds([&] { return *engine::FusedQuantizedMatmul(output_gradient, *weight, MatmulSide::kInputGradient); },
                    iterations, device);
      }
      auto ms = [](double s) { return s > 0 ? absl::StrFormat("%.3f", s * 1e3) : std::string("n/a"); };
      std::printf("| %s | %lld | %s | %s | %s | %s | %s |\n", std::string(name).c_str(), (long long)rows,
                  ms(dense_s).c_str(), ms(dequantized_s).c_str(), ms(fused_s).c_str(), ms(fused_grad_s).c_str(),
                  fused_s > 0 ? absl::StrFormat("%.1f", flop / fused_s / 1e12).c_str() : "n/a");
      nlohmann::json line = {{"format", std::string(name)},
                             {"rows", rows},
                             {"in", in},
                             {"out", out},
                             {"dtype", dtype_name},
                             {"device", device.str()},
                             {"dense_s", dense_s},
                             {"dequantize_matmul_s", dequantized_s},
                             {"fused_s", fused_s},
                             {"fused_input_gradient_s", fused_grad_s},
                             {"resident_bytes", weight->ResidentBytes()}};
      std::cout << "JSON " << line.dump() << std::endl;
    }
  }
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Run(argc, argv); }
