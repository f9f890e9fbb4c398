// SPDX-License-Identifier: Apache-2.0
#include "engine/model/linear.h"

#include <ATen/ATen.h>

#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {

absl::StatusOr<Linear> Linear::Create(at::Tensor weight, at::Tensor bias, Quantization quantization,
                                      std::vector<int64_t> output_parts, const FourBitOptions& four_bit) {
  if (quantization != Quantization::kNone) {
    ASSIGN_OR_RETURN(QuantizedWeight quantized, Quantize(weight, quantization, four_bit));
    return FromQuantized(std::move(quantized), std::move(bias), std::move(output_parts));
  }
  Linear linear;
  RETURN_IF_ERROR(linear.SetOutputs(weight.size(0), std::move(output_parts)));
  linear.weight_ = std::move(weight);
  linear.bias_ = std::move(bias);
  return linear;
}

absl::StatusOr<Linear> Linear::FromQuantized(QuantizedWeight weight, at::Tensor bias,
                                             std::vector<int64_t> output_parts) {
  Linear linear;
  RETURN_IF_ERROR(linear.SetOutputs(weight.out_features, std::move(output_parts)));
  linear.quantized_ = std::make_shared<const QuantizedWeight>(std::move(weight));
  linear.bias_ = std::move(bias);
  return linear;
}

absl::Status Linear::SetOutputs(int64_t out_features, std::vector<int64_t> output_parts) {
  out_features_ = out_features;
  if (output_parts.empty()) output_parts = {out_features};
  if (std::accumulate(output_parts.begin(), output_parts.end(), int64_t{0}) != out_features) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear: output parts do not sum to the weight's ", out_features, " outputs"));
  }
  output_parts_ = std::move(output_parts);
  return absl::OkStatus();
}

absl::StatusOr<Linear> Linear::Concat(std::vector<Linear> parts) {
  if (parts.empty()) return absl::InvalidArgumentError("concatenate linears: no parts");
  const bool quantized = parts[0].quantized_ != nullptr, biased = parts[0].bias_.defined();
  Linear fused;
  std::vector<at::Tensor> weights, biases;
  std::vector<QuantizedWeight> quantized_weights;
  for (Linear& part : parts) {
    if ((part.quantized_ != nullptr) != quantized || part.bias_.defined() != biased ||
        (!quantized && !part.weight_.defined())) {
      return absl::InvalidArgumentError("concatenate linears: parts differ in weight format or bias");
    }
    fused.out_features_ += part.out_features_;
    fused.output_parts_.insert(fused.output_parts_.end(), part.output_parts_.begin(), part.output_parts_.end());
    if (biased) biases.push_back(std::move(part.bias_));
    if (quantized) {
      quantized_weights.push_back(*part.quantized_);
    } else {
      weights.push_back(std::move(part.weight_));
    }
  }
  // Moved out of `parts`, the unfused tensors die with these vectors at return.
  if (biased) fused.bias_ = at::cat(biases, 0);  // [out]
  if (!quantized) {
    fused.weight_ = at::cat(weights, 0);  // [out, in]
    return fused;
  }
  ASSIGN_OR_RETURN(QuantizedWeight stacked, ConcatOutputs(quantized_weights));
  fused.quantized_ = std::make_shared<const QuantizedWeight>(std::move(stacked));
  return fused;
}

void Linear::PackForFewRows() {
  if (!quantized_) packed_ = PackedWeight::Pack(weight_);
}

at::Tensor Linear::Forward(const at::Tensor& x) const {
  if (quantized_) return QuantizedLinear(x, *quantized_, bias_);
  if (packed_ && packed_->Suits(x)) return packed_->Multiply(x, bias_);
  return bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
}

std::vector<at::Tensor> Linear::ForwardParts(const at::Tensor& x) const {
  return at::split_with_sizes(Forward(x), output_parts_, -1);
}

int64_t Linear::ResidentBytes() const {
  int64_t bytes = bias_.defined() ? bias_.numel() * bias_.element_size() : 0;
  if (packed_) bytes += packed_->ResidentBytes();
  if (quantized_) return bytes + quantized_->ResidentBytes();
  // A default-constructed linear holds no weight; an undefined tensor has no dtype to ask the element
  // size of.
  return weight_.defined() ? bytes + weight_.numel() * weight_.element_size() : bytes;
}

}  // namespace attribution::engine
