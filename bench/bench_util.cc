// SPDX-License-Identifier: Apache-2.0
#include "bench/bench_util.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <cstdio>
#include <memory>

namespace attribution::bench {

double SecondsPerCall(const std::function<void()>& fn, int iterations) {
  fn();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iterations;
}

void SynchronizeDevice(const at::Device& device) {
  if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index() < 0 ? 0 : device.index());
}

double MatmulPeakGflops(int64_t n, at::ScalarType dtype, const at::Device& device) {
  at::Tensor a = at::randn({n, n}, at::TensorOptions().dtype(dtype).device(device));
  at::Tensor b = at::randn({n, n}, at::TensorOptions().dtype(dtype).device(device));
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double seconds = SecondsPerCall([&] { at::mm(a, b).sum().item<float>(); }, 3);
    best = std::max(best, 2.0 * n * n * n / seconds / 1e9);
  }
  return best;
}

std::string RunCommand(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "";
  std::string out;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe.get())) out.append(buffer, n);
  return out;
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(prefix, 0) == 0) return arg.substr(prefix.size());
  }
  return fallback;
}

}  // namespace attribution::bench
