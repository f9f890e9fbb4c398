// SPDX-License-Identifier: Apache-2.0
// Matrix products with a quantized weight that dequantize inside the product: each thread block turns
// only the weight tile it multiplies into the compute type, in shared memory, so no dequantized copy of
// the weight exists at any time. The same kernel serves the forward (out = input · Wᵀ) and the input
// gradient (out = grad · W) by reading the weight tile transposed.
//
// Plain C++ on purpose: the CUDA sources include no ATen header (nvcc on them would cost minutes of a
// 2-core build), and callers see no CUDA type. See engine/model/quantized_matmul.h for the tensor API.
#pragma once

#include <cstdint>

namespace attribution::engine::cuda_kernels {

enum class ElementType { kFloat32, kBFloat16, kFloat16 };
enum class WeightFormat { kInt8, kFourBit };

struct QuantizedMatmulArgs {
  ElementType element_type = ElementType::kFloat32;
  const void* input = nullptr;  // [rows, reduction], row-major, element_type
  void* output = nullptr;       // [rows, columns], row-major, element_type
  int64_t rows = 0;
  int64_t reduction = 0;           // in_features for the forward, out_features for the input gradient
  int64_t columns = 0;             // out_features for the forward, in_features for the input gradient
  bool weight_transposed = false;  // false: out = input · Wᵀ; true: out = input · W

  // The [out_features, in_features] weight, as QuantizedWeight holds it (engine/model/quantization.h).
  WeightFormat format = WeightFormat::kInt8;
  const void* codes = nullptr;       // int8: [out, in] int8; 4-bit: [out * in / 2] uint8, high nibble first
  const float* scales = nullptr;     // int8: [out] per row; 4-bit: [out * in / 2^block_size_log2] absmax
  const float* code_book = nullptr;  // 4-bit: [16] values of the codes
  int block_size_log2 = 0;           // 4-bit: blocks are powers of two (a shift, not a 64-bit division)
  int64_t in_features = 0;

  void* stream = nullptr;  // cudaStream_t
};

// log2 of a 4-bit block size (bitsandbytes allows 32, 64, ..., 4096).
inline int BlockSizeLog2(int64_t block_size) {
  int log2 = 0;
  while ((int64_t{1} << log2) < block_size) ++log2;
  return log2;
}

// Enqueues the product on `stream`; returns nullptr, or CUDA's description of the launch error.
const char* LaunchQuantizedMatmul(const QuantizedMatmulArgs& args);

}  // namespace attribution::engine::cuda_kernels
