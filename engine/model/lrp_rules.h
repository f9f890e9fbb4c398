// SPDX-License-Identifier: Apache-2.0
// The building blocks of the LRP rules in gradient x input form (propagation_rules.h): operations whose
// forward value is the ordinary one and whose backward is the rule's.
//
//   q = ScaleGradient(q, 0.25);                 // forward q, backward ¼ of the gradient
//   a = IdentityRuleActivation(gate, kSilu);    // forward silu(gate), backward grad · silu(gate)/gate
#pragma once

#include <ATen/core/Tensor.h>

namespace attribution::engine {

// x unchanged; its gradient is multiplied by `factor`.
at::Tensor ScaleGradient(const at::Tensor& x, double factor);

enum class Activation { kSilu, kGeluExact, kGeluTanh };

// act(x); the gradient passed to x is grad · act(x)/x, the identity rule for an element-wise
// nonlinearity. The quotient is taken in closed form (sigmoid(x) for SiLU, Φ(x) or its tanh
// approximation for GELU), in float32: LXT divides act(x) by (x + 1e-10), which is NaN at x = 0 in
// half precision; the two agree wherever |x| > 1e-6.
at::Tensor IdentityRuleActivation(const at::Tensor& x, Activation activation);

// Plain act(x) (differentiable as usual).
at::Tensor Activate(const at::Tensor& x, Activation activation);

// RMSNorm / LayerNorm with the normalising factor held constant in the backward (identity rule).
// Statistics in float32; the forward equals RmsNorm(...) / at::layer_norm(...) up to rounding.
at::Tensor RmsNormIdentityRule(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor LayerNormIdentityRule(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

}  // namespace attribution::engine
