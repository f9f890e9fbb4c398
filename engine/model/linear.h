// SPDX-License-Identifier: Apache-2.0
// A linear layer whose weight is either dense in the compute dtype or quantized (int8 / nf4).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "absl/status/statusor.h"
#include "engine/model/quantization.h"

namespace attribution::engine {

// Immutable after construction; Forward may be called from any thread.
class Linear {
 public:
  Linear() = default;

  // `weight` is [out, in] in the compute dtype; `bias` is [out] or undefined.
  static absl::StatusOr<Linear> Create(at::Tensor weight, at::Tensor bias, Quantization quantization);

  // [..., in] -> [..., out]
  at::Tensor Forward(const at::Tensor& x) const;

  // Bytes of the weight (dense or quantized) and bias; 0 for a default-constructed Linear, which
  // stands for a projection the architecture lacks.
  int64_t ResidentBytes() const;
  int64_t out_features() const { return out_features_; }

 private:
  at::Tensor weight_;  // [out, in], compute dtype; undefined when quantized
  at::Tensor bias_;    // [out] or undefined
  // Heap-held so the autograd node may keep a stable pointer while Linear objects move.
  std::shared_ptr<const QuantizedWeight> quantized_;
  int64_t out_features_ = 0;
};

}  // namespace attribution::engine
