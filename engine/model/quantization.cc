// SPDX-License-Identifier: Apache-2.0
#include "engine/model/quantization.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

// bitsandbytes' NF4 code values: quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
constexpr float kNf4Codes[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

at::Tensor QuantizeNf4Codes(const at::Tensor& weight, at::Tensor& absmax_out) {
  // [blocks, 64], float32
  at::Tensor blocks = weight.to(at::kFloat).reshape({-1, kNf4BlockSize});
  at::Tensor absmax = blocks.abs().amax(1, /*keepdim=*/true).to(at::kHalf);
  at::Tensor scale = absmax.to(at::kFloat);
  at::Tensor normalized = blocks / at::where(scale > 0, scale, at::ones_like(scale));
  at::Tensor codebook = Nf4CodeBook(weight.device());
  // Nearest code value: the code book is sorted, so count the midpoints lying below each value.
  at::Tensor midpoints = (codebook.slice(0, 1) + codebook.slice(0, 0, 15)) / 2;  // [15]
  at::Tensor index = at::bucketize(normalized, midpoints).to(at::kByte);         // [blocks, 64]
  at::Tensor pairs = index.reshape({-1, 2});
  absmax_out = absmax.reshape({-1});
  return (pairs.select(1, 0).bitwise_left_shift(4)).bitwise_or(pairs.select(1, 1)).contiguous();
}

at::Tensor DequantizeNf4(const QuantizedWeight& weight, at::ScalarType dtype) {
  at::Tensor high = weight.codes.bitwise_right_shift(4).to(at::kLong);
  at::Tensor low = weight.codes.bitwise_and(15).to(at::kLong);
  at::Tensor index = at::stack({high, low}, 1).reshape({-1, kNf4BlockSize});  // [blocks, 64]
  at::Tensor codebook = Nf4CodeBook(weight.codes.device()).to(dtype);
  at::Tensor values = codebook.index_select(0, index.reshape({-1})).reshape({-1, kNf4BlockSize});
  return (values * weight.scales.to(dtype).unsqueeze(1)).reshape({weight.out_features, weight.in_features});
}

// Autograd node: saves nothing dequantized; the weight is re-materialised in backward.
class QuantizedLinearFunction : public torch::autograd::Function<QuantizedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const QuantizedWeight* weight) {
    ctx->saved_data["weight"] = reinterpret_cast<int64_t>(weight);
    return at::linear(x, Dequantize(*weight, x.scalar_type()));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto* weight = reinterpret_cast<const QuantizedWeight*>(ctx->saved_data["weight"].toInt());
    const at::Tensor& grad_y = grad_outputs[0];  // [..., out]
    at::Tensor w = Dequantize(*weight, grad_y.scalar_type());
    return {at::matmul(grad_y, w), at::Tensor()};
  }
};

}  // namespace

absl::StatusOr<Quantization> ParseQuantization(const std::string& name) {
  if (name.empty() || name == "none") return Quantization::kNone;
  if (name == "int8") return Quantization::kInt8;
  if (name == "nf4") return Quantization::kNf4;
  return absl::InvalidArgumentError(absl::StrCat("quantization \"", name, "\" is not supported (none, int8, nf4)"));
}

const char* QuantizationName(Quantization q) {
  switch (q) {
    case Quantization::kNone:
      return "none";
    case Quantization::kInt8:
      return "int8";
    case Quantization::kNf4:
      return "nf4";
  }
  return "unknown";
}

int64_t QuantizedWeight::ResidentBytes() const {
  return codes.numel() * codes.element_size() + scales.numel() * scales.element_size();
}

at::Tensor Nf4CodeBook(const at::Device& device) {
  return at::tensor(at::ArrayRef<float>(kNf4Codes, 16), at::TensorOptions().dtype(at::kFloat)).to(device);
}

absl::StatusOr<QuantizedWeight> Quantize(const at::Tensor& weight, Quantization kind) {
  if (weight.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("quantize: weight must be 2-D, got ", weight.dim(), "-D"));
  }
  QuantizedWeight out;
  out.kind = kind;
  out.out_features = weight.size(0);
  out.in_features = weight.size(1);
  c10::AutoGradMode no_grad(false);
  switch (kind) {
    case Quantization::kInt8: {
      at::Tensor w = weight.to(at::kFloat);
      at::Tensor scale = w.abs().amax(1) / 127.0;  // [out]
      scale = at::where(scale > 0, scale, at::ones_like(scale));
      out.codes = at::round(w / scale.unsqueeze(1)).clamp(-127, 127).to(at::kChar).contiguous();
      out.scales = scale.contiguous();
      return out;
    }
    case Quantization::kNf4:
      if (weight.numel() % kNf4BlockSize != 0) {
        return absl::InvalidArgumentError(absl::StrCat("quantize nf4: weight of ", weight.numel(),
                                                       " elements is not a multiple of the block size 64"));
      }
      out.codes = QuantizeNf4Codes(weight, out.scales);
      return out;
    case Quantization::kNone:
      break;
  }
  return absl::InvalidArgumentError("quantize: no quantization requested");
}

absl::StatusOr<QuantizedWeight> ConcatOutputs(const std::vector<QuantizedWeight>& parts) {
  if (parts.empty() || parts[0].kind == Quantization::kNone) {
    return absl::InvalidArgumentError("concatenate quantized weights: no quantized parts");
  }
  QuantizedWeight out;
  out.kind = parts[0].kind;
  out.in_features = parts[0].in_features;
  std::vector<at::Tensor> codes, scales;
  for (const QuantizedWeight& part : parts) {
    if (part.kind != out.kind || part.in_features != out.in_features) {
      return absl::InvalidArgumentError(absl::StrCat("concatenate quantized weights: a ", QuantizationName(part.kind),
                                                     " part of input width ", part.in_features, " beside a ",
                                                     QuantizationName(out.kind), " part of width ", out.in_features));
    }
    out.out_features += part.out_features;
    codes.push_back(part.codes);
    scales.push_back(part.scales);
  }
  // int8 codes are [out, in] and scales [out]; nf4 codes and absmaxes are flat in row-major block
  // order. Either way the row-major layout of the stacked weight is the parts one after another.
  out.codes = at::cat(codes, 0);
  out.scales = at::cat(scales, 0);
  return out;
}

at::Tensor Dequantize(const QuantizedWeight& weight, at::ScalarType dtype) {
  if (weight.kind == Quantization::kInt8) {
    return weight.codes.to(dtype) * weight.scales.to(dtype).unsqueeze(1);
  }
  return DequantizeNf4(weight, dtype);
}

at::Tensor QuantizedLinear(const at::Tensor& x, const QuantizedWeight& weight, const at::Tensor& bias) {
  if (!c10::GradMode::is_enabled() || !x.requires_grad()) {
    at::Tensor w = Dequantize(weight, x.scalar_type());
    return bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
  }
  at::Tensor y = QuantizedLinearFunction::apply(x, &weight);
  return bias.defined() ? y + bias : y;
}

}  // namespace attribution::engine
