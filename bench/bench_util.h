// SPDX-License-Identifier: Apache-2.0
// Small helpers shared by the benchmark programs: timing, the machine's measured matmul peak, and
// running the Python reference side of a comparison.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <string>

namespace attribution::bench {

// Mean seconds per call of `fn` over `iterations` calls, after one warm-up call.
double SecondsPerCall(const std::function<void()>& fn, int iterations);

// Best fp32 (or `dtype`) GFLOP/s of an n x n x n matmul on `device` over a few repetitions.
double MatmulPeakGflops(int64_t n, at::ScalarType dtype, const at::Device& device);

// Runs `command` through the shell and returns its standard output (empty on failure).
std::string RunCommand(const std::string& command);

// Value of "--name=value" in argv, or `fallback`.
std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback);

}  // namespace attribution::bench
