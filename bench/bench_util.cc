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

std::optional<int> CheckFlags(int argc, char** argv, std::initializer_list<std::string_view> known) {
  std::string listed;
  for (std::string_view name : known) listed += " --" + std::string(name) + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      const std::string_view path = argv[0], program = path.substr(path.rfind('/') + 1);
      std::printf("%s flags:%s\n(each explained in the opening comment of bench/%s.cc)\n", argv[0], listed.c_str(),
                  std::string(program).c_str());
      return 0;
    }
    const size_t equals = arg.find('=');  // "--NAME=VALUE": past the dashes, after a name
    const bool named = arg.substr(0, 2) == "--" && equals != std::string_view::npos && equals > 2 &&
                       std::find(known.begin(), known.end(), arg.substr(2, equals - 2)) != known.end();
    if (!named) {
      std::fprintf(stderr, "%s: \"%s\" is not one of its flags:%s (each as --NAME=VALUE)\n", argv[0],
                   std::string(arg).c_str(), listed.c_str());
      return 2;
    }
  }
  return std::nullopt;
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
