// SPDX-License-Identifier: Apache-2.0
// What the hand-written CPU loops of the decoder's elementwise steps (gated SiLU, rotary q/k, RMSNorm)
// share. On a CPU those steps are memory-bound, and as separate ATen ops each one reads and writes a whole
// activation tensor, forward and backward; a loop over rows does a step in one pass, while the rows it
// touches sit in cache. Other devices and dtypes keep the ATen ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "engine/common/sanitizers.h"

namespace attribution::engine {

// Compiles a loop for AVX-512, AVX2 and the baseline; the loader picks the one this CPU runs. The pick
// (an ifunc resolver) runs while the program is being relocated, before a sanitizer's runtime has started,
// and an instrumented resolver crashes there: sanitized builds compile each loop once, for the baseline.
#ifdef ATTRIBUTION_SANITIZED_BUILD
#define ATTRIBUTION_VECTORIZED_CLONES
#else
#define ATTRIBUTION_VECTORIZED_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

// Whether the CPU loops apply: float32 tensors on the CPU, every one contiguous and not empty (the loops
// divide by row widths).
template <typename... Tensors>
bool RunsCpuRowKernel(const Tensors&... tensors) {
  return ((tensors.defined() && tensors.device().is_cpu() && tensors.scalar_type() == at::kFloat &&
           tensors.is_contiguous() && tensors.numel() > 0) &&
          ...);
}

// Rows per task of at::parallel_for when a row holds `row_floats` floats: about 64 KiB of a tensor each.
inline int64_t RowGrain(int64_t row_floats) { return std::max<int64_t>(1, (int64_t{1} << 14) / row_floats); }

}  // namespace attribution::engine
