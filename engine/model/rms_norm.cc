// SPDX-License-Identifier: Apache-2.0
#include "engine/model/rms_norm.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace attribution::engine {
namespace {

// inverse_rms = 1 / sqrt(mean(x^2) + eps): [..., 1] float32.
at::Tensor InverseRms(const at::Tensor& x32, double eps) {
  return at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

// Autograd node for the input gradient only (the weight is a buffer here, never a parameter).
class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    at::Tensor x32 = x.to(at::kFloat);
    at::Tensor inverse_rms = InverseRms(x32, eps);  // [..., 1]
    ctx->save_for_backward({x, weight, inverse_rms});
    return weight * (x32 * inverse_rms).to(x.scalar_type());
  }

  // With n = x * r, r = (mean(x^2) + eps)^(-1/2) and g the gradient reaching n:
  //   dL/dx = r * (g - x * r^2 * mean(g * x)).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& inverse_rms = saved[2];
    // The weight multiplies in x's dtype, as the forward did; the rest runs in float32.
    at::Tensor g = (grad_outputs[0] * saved[1]).to(at::kFloat);  // [..., hidden]
    at::Tensor x32 = x.to(at::kFloat);
    at::Tensor projection = (g * x32).mean(-1, /*keepdim=*/true) * inverse_rms.square();  // [..., 1]
    at::Tensor grad_x = (g - x32 * projection) * inverse_rms;
    return {grad_x.to(x.scalar_type()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (c10::GradMode::is_enabled() && x.requires_grad()) return RmsNormFunction::apply(x, weight, eps);
  at::Tensor x32 = x.to(at::kFloat);
  return weight * (x32 * InverseRms(x32, eps)).to(x.scalar_type());
}

}  // namespace attribution::engine
