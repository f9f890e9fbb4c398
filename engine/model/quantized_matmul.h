// SPDX-License-Identifier: Apache-2.0
// The CUDA path of QuantizedLinear: products with a quantized weight whose tiles are dequantized inside
// the kernel (engine/model/cuda/quantized_matmul_kernels.cu), for the forward and the input gradient.
//
//   if (std::optional<at::Tensor> y = FusedQuantizedMatmul(x, weight, MatmulSide::kForward)) return *y;
//   // else: a CPU tensor, or a build without CUDA kernels: dequantize and use at::linear.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "engine/model/quantization.h"

namespace attribution::engine {

enum class MatmulSide {
  kForward,        // [..., in] -> [..., out]: x · Wᵀ
  kInputGradient,  // [..., out] -> [..., in]: grad · W
};

// The product on x's CUDA device, or nullopt where no kernel applies: x on the CPU, a dtype other than
// float32 / bfloat16 / float16, or a build without CUDA (ATTRIBUTION_CUDA_KERNELS off).
std::optional<at::Tensor> FusedQuantizedMatmul(const at::Tensor& x, const QuantizedWeight& weight, MatmulSide side);

// Whether this build compiled the kernels (for tests and the startup log).
bool CudaQuantizedMatmulCompiled();

}  // namespace attribution::engine
