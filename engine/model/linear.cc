// SPDX-License-Identifier: Apache-2.0
#include "engine/model/linear.h"

#include <ATen/ATen.h>

#include "engine/common/status_macros.h"

namespace attribution::engine {

absl::StatusOr<Linear> Linear::Create(at::Tensor weight, at::Tensor bias, Quantization quantization) {
  Linear linear;
  linear.out_features_ = weight.size(0);
  linear.bias_ = std::move(bias);
  if (quantization == Quantization::kNone) {
    linear.weight_ = std::move(weight);
    return linear;
  }
  ASSIGN_OR_RETURN(QuantizedWeight quantized, Quantize(weight, quantization));
  linear.quantized_ = std::make_shared<const QuantizedWeight>(std::move(quantized));
  return linear;
}

at::Tensor Linear::Forward(const at::Tensor& x) const {
  if (quantized_) return QuantizedLinear(x, *quantized_, bias_);
  return bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
}

int64_t Linear::ResidentBytes() const {
  int64_t bytes = bias_.defined() ? bias_.numel() * bias_.element_size() : 0;
  if (quantized_) return bytes + quantized_->ResidentBytes();
  // A linear the architecture lacks (GPT-2 has no gate) holds no weight; an undefined tensor has no
  // dtype to ask the element size of.
  return weight_.defined() ? bytes + weight_.numel() * weight_.element_size() : bytes;
}

}  // namespace attribution::engine
