// SPDX-License-Identifier: Apache-2.0
// A linear layer whose weight is either dense in the compute dtype or quantized (int8 / nf4 / fp4), possibly
// several projections of one input fused into one matmul (q/k/v, gate/up).
//
//   ASSIGN_OR_RETURN(Linear qkv, Linear::Concat({std::move(q), std::move(k), std::move(v)}));
//   std::vector<at::Tensor> parts = qkv.ForwardParts(x);  // {q, k, v}: views of one matmul's output
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/packed_weight.h"
#include "engine/model/quantization.h"

namespace attribution::engine {

// Immutable after construction; Forward may be called from any thread.
class Linear {
 public:
  Linear() = default;

  // `weight` is [out, in] in the compute dtype; `bias` is [out] or undefined. `output_parts` splits the
  // output for ForwardParts (sizes summing to out; empty: one part), for a checkpoint that stores
  // projections already fused (GPT-2's c_attn).
  static absl::StatusOr<Linear> Create(at::Tensor weight, at::Tensor bias, Quantization quantization,
                                       std::vector<int64_t> output_parts = {}, const FourBitOptions& four_bit = {});
  // A weight that arrives quantized (a pre-quantized checkpoint); `bias` in the compute dtype.
  static absl::StatusOr<Linear> FromQuantized(QuantizedWeight weight, at::Tensor bias,
                                              std::vector<int64_t> output_parts = {});

  // Stacks `parts` (same input width and weight format; all with a bias or none) along the output
  // dimension, so one matmul computes them all; ForwardParts splits the result back. The parts' storage
  // is released: only the fused weight stays resident.
  static absl::StatusOr<Linear> Concat(std::vector<Linear> parts);

  // Keeps a copy of a dense float32 CPU weight in MKL's packed layout, which Forward then uses for
  // products of few rows without gradients (PackedWeight); does nothing for other weights.
  void PackForFewRows();

  // [..., in] -> [..., out]
  at::Tensor Forward(const at::Tensor& x) const;
  // [..., in] -> one [..., part] tensor per output part: views of Forward's result (no copies).
  std::vector<at::Tensor> ForwardParts(const at::Tensor& x) const;

  // Bytes of the weight (dense or quantized), its packed copy and the bias; 0 for a default-constructed
  // Linear.
  int64_t ResidentBytes() const;
  int64_t out_features() const { return out_features_; }
  // The [out, in] weight in the compute dtype; undefined when quantized.
  const at::Tensor& dense_weight() const { return weight_; }
  const std::vector<int64_t>& output_parts() const { return output_parts_; }

 private:
  absl::Status SetOutputs(int64_t out_features, std::vector<int64_t> output_parts);

  at::Tensor weight_;  // [out, in], compute dtype; undefined when quantized
  at::Tensor bias_;    // [out] or undefined
  // Heap-held so the autograd node may keep a stable pointer while Linear objects move.
  std::shared_ptr<const QuantizedWeight> quantized_;
  std::shared_ptr<const PackedWeight> packed_;  // null: not packed
  int64_t out_features_ = 0;
  std::vector<int64_t> output_parts_;  // widths of the fused projections, summing to out_features_
};

}  // namespace attribution::engine
