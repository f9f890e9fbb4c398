// SPDX-License-Identifier: Apache-2.0
// Load-time weight-only quantization of linear layers, and a linear op over quantized weights that
// supports autograd with respect to its input while keeping only the quantized weight resident.
//
//   int8: per output channel, symmetric: q = round(w / s), s = max|w_row| / 127.
//   nf4, fp4: bitsandbytes' 4-bit formats, bit for bit: the row-major weight in blocks (64 by
//         default), each scaled by its float32 absmax and mapped to the nearest of 16 code values (NF4:
//         normal quantiles; FP4: a 1-2-1 float); two codes per byte, the first of a pair in the high
//         nibble. Optional double quantization stores each absmax as an 8-bit code instead, as
//         bitsandbytes' CPU kernel computes it.
//
//   QuantizedWeight w = *Quantize(weight, Quantization::kNf4);
//   at::Tensor y = QuantizedLinear(x, w, bias);  // differentiable in x
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

enum class Quantization { kNone, kInt8, kNf4, kFp4 };

absl::StatusOr<Quantization> ParseQuantization(const std::string& name);  // "none", "int8", "nf4", "fp4"
const char* QuantizationName(Quantization q);
inline bool IsFourBit(Quantization q) { return q == Quantization::kNf4 || q == Quantization::kFp4; }

// The 4-bit formats' settings, named as bitsandbytes' BitsAndBytesConfig names them.
struct FourBitOptions {
  int64_t block_size = 64;           // bnb_4bit_blocksize: 32, 64, 128, ..., 4096
  bool double_quantization = false;  // bnb_4bit_use_double_quant
};
absl::Status ValidateFourBitOptions(const FourBitOptions& options);

// Double quantization (bitsandbytes' "nested" quant state): a weight's absmaxes minus their mean,
// quantized in blocks of 256 to bitsandbytes' 8-bit dynamic code. absmax[i] =
// code_book[codes[i]] * scales[i / 256] + offsets[i / 256], each step rounded in float32 as there.
inline constexpr int64_t kNestedBlockSize = 256;
struct NestedAbsmax {
  at::Tensor codes;      // [blocks] uint8
  at::Tensor code_book;  // [256] float32
  at::Tensor scales;     // [ceil(blocks / 256)] float32
  at::Tensor offsets;    // [ceil(blocks / 256)] float32: the mean of the absmaxes of the weight it came from

  at::Tensor Absmax() const;  // [blocks] float32
};

struct QuantizedWeight {
  Quantization kind = Quantization::kNone;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t block_size = 0;  // 4-bit formats
  at::Tensor codes;        // int8: [out, in] int8; 4-bit: [out * in / 2] uint8
  at::Tensor scales;       // int8: [out] float32; 4-bit: [out * in / block_size] float32 absmax, or undefined
  at::Tensor code_book;    // 4-bit: [16] float32, the value of each code
  std::optional<NestedAbsmax> nested;  // 4-bit with double quantization: replaces `scales`

  int64_t ResidentBytes() const;
  at::Tensor Absmax() const;  // 4-bit: [blocks] float32
};

// Quantizes a [out, in] weight (any float dtype, any device) into `kind`. 4-bit formats require out * in
// to be a multiple of the block size.
absl::StatusOr<QuantizedWeight> Quantize(const at::Tensor& weight, Quantization kind,
                                         const FourBitOptions& four_bit = {});

// Stacks quantized weights of the same format and input width along the output dimension, as if the
// concatenated [sum(out), in] weight had been quantized: int8 scales are per output row, and every
// 4-bit part holds whole blocks (Quantize requires it), so no block straddles two parts. Nested
// absmaxes stay nested where every part holds whole nested blocks, else they are expanded to float32.
absl::StatusOr<QuantizedWeight> ConcatOutputs(const std::vector<QuantizedWeight>& parts);

// Reconstructs the [out, in] weight in `dtype` on the weight's device. 4-bit values are computed in
// float32 and rounded to `dtype` once, as bitsandbytes does.
at::Tensor Dequantize(const QuantizedWeight& weight, at::ScalarType dtype);

// y = x W^T + b with W dequantized transiently per call. Differentiable with respect to x only: the
// backward dequantizes W again instead of saving it, so no dequantized copy outlives the call.
at::Tensor QuantizedLinear(const at::Tensor& x, const QuantizedWeight& weight, const at::Tensor& bias);

// bitsandbytes' code books, as float32 tensors on `device`: the 16 values of nf4 or fp4 (in code
// order), and the 256 values of the signed 8-bit dynamic map that double quantization uses.
at::Tensor FourBitCodeBook(Quantization kind, const at::Device& device);
at::Tensor DynamicCodeBook(const at::Device& device);

}  // namespace attribution::engine
