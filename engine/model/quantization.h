// SPDX-License-Identifier: Apache-2.0
// Load-time weight-only quantization of linear layers, and a linear op over quantized weights that
// supports autograd with respect to its input while keeping only the quantized weight resident.
//
//   int8: per output channel, symmetric: q = round(w / s), s = max|w_row| / 127.
//   nf4:  bitsandbytes' NormalFloat-4: blocks of 64 consecutive weights (row-major), each scaled by its
//         absmax (stored as float16) and mapped to the nearest of 16 code values; two codes per byte,
//         the first of a pair in the high nibble.
//
//   QuantizedWeight w = Quantize(weight, Quantization::kNf4);
//   at::Tensor y = QuantizedLinear(x, w, bias, at::kBFloat16);  // differentiable in x
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

enum class Quantization { kNone, kInt8, kNf4 };

absl::StatusOr<Quantization> ParseQuantization(const std::string& name);  // "none", "int8", "nf4"
const char* QuantizationName(Quantization q);

inline constexpr int64_t kNf4BlockSize = 64;

struct QuantizedWeight {
  Quantization kind = Quantization::kNone;
  int64_t out_features = 0;
  int64_t in_features = 0;
  at::Tensor codes;   // int8: [out, in] int8; nf4: [out * in / 2] uint8
  at::Tensor scales;  // int8: [out] float32; nf4: [out * in / 64] float16 absmax

  int64_t ResidentBytes() const;
};

// Quantizes a [out, in] weight (any float dtype, any device) into `kind` (int8 or nf4). nf4 requires
// out * in to be a multiple of 64.
absl::StatusOr<QuantizedWeight> Quantize(const at::Tensor& weight, Quantization kind);

// Stacks quantized weights of the same kind and input width along the output dimension, as if the
// concatenated [sum(out), in] weight had been quantized: int8 scales are per output row, and every nf4
// part holds whole blocks (Quantize requires it), so no block straddles two parts.
absl::StatusOr<QuantizedWeight> ConcatOutputs(const std::vector<QuantizedWeight>& parts);

// Reconstructs the [out, in] weight in `dtype` on the weight's device.
at::Tensor Dequantize(const QuantizedWeight& weight, at::ScalarType dtype);

// y = x W^T + b with W dequantized transiently per call. Differentiable with respect to x only: the
// backward dequantizes W again instead of saving it, so no dequantized copy outlives the call.
at::Tensor QuantizedLinear(const at::Tensor& x, const QuantizedWeight& weight, const at::Tensor& bias);

// The 16 NF4 code values (bitsandbytes), as a float32 tensor on `device`.
at::Tensor Nf4CodeBook(const at::Device& device);

}  // namespace attribution::engine
