// SPDX-License-Identifier: Apache-2.0
// Built instead of quantized_matmul.cc where CUDA kernels are not compiled (no nvcc, or a LibTorch
// without CUDA): QuantizedLinear then always dequantizes per call.
#include "engine/model/quantized_matmul.h"

namespace attribution::engine {

std::optional<at::Tensor> FusedQuantizedMatmul(const at::Tensor&, const QuantizedWeight&, MatmulSide) {
  return std::nullopt;
}

bool CudaQuantizedMatmulCompiled() { return false; }

}  // namespace attribution::engine
