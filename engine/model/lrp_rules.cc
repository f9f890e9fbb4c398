// SPDX-License-Identifier: Apache-2.0
#include "engine/model/lrp_rules.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

namespace attribution::engine {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool Differentiable(const at::Tensor& x) { return c10::GradMode::is_enabled() && x.requires_grad(); }

class ScaleGradientFunction : public torch::autograd::Function<ScaleGradientFunction> {
 public:
  // Returning the input makes autograd hand back a view of it with this node as its gradient function.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double factor) {
    ctx->saved_data["factor"] = factor;
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {grad_outputs[0] * ctx->saved_data["factor"].toDouble(), at::Tensor()};
  }
};

// act(x) / x in closed form, float32.
at::Tensor ActivationQuotient(const at::Tensor& x32, Activation activation) {
  switch (activation) {
    case Activation::kSilu:
      return at::sigmoid(x32);
    case Activation::kGeluExact:
      return 0.5 * (1 + at::erf(x32 * M_SQRT1_2));
    case Activation::kGeluTanh:
      return 0.5 * (1 + at::tanh(std::sqrt(2 / M_PI) * (x32 + 0.044715 * x32.pow(3))));
  }
  return at::sigmoid(x32);
}

class IdentityRuleFunction : public torch::autograd::Function<IdentityRuleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t activation) {
    const auto kind = static_cast<Activation>(activation);
    ctx->save_for_backward({ActivationQuotient(x.to(at::kFloat), kind).to(x.scalar_type())});
    return Activate(x, kind);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {grad_outputs[0] * ctx->get_saved_variables()[0], at::Tensor()};
  }
};

}  // namespace

at::Tensor ScaleGradient(const at::Tensor& x, double factor) {
  return Differentiable(x) ? ScaleGradientFunction::apply(x, factor) : x;
}

at::Tensor Activate(const at::Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kGeluExact:
      return at::gelu(x, "none");
    case Activation::kGeluTanh:
      return at::gelu(x, "tanh");
  }
  return at::silu(x);
}

at::Tensor IdentityRuleActivation(const at::Tensor& x, Activation activation) {
  return Differentiable(x) ? IdentityRuleFunction::apply(x, static_cast<int64_t>(activation)) : Activate(x, activation);
}

at::Tensor RmsNormIdentityRule(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor inverse_rms = at::rsqrt(x32.detach().pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * (x32 * inverse_rms).to(x.scalar_type());
}

at::Tensor LayerNormIdentityRule(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor centered = x32 - x32.mean(-1, /*keepdim=*/true);
  const at::Tensor std = (centered.detach().pow(2).mean(-1, /*keepdim=*/true) + eps).sqrt();
  at::Tensor y = (centered / std).to(x.scalar_type()) * weight;
  return bias.defined() ? y + bias : y;
}

}  // namespace attribution::engine
