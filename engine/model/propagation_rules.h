// SPDX-License-Identifier: Apache-2.0
// How a forward pass propagates its backward: the plain gradient, or the layer-wise relevance
// propagation rules of AttnLRP (Achtibat et al., ICML 2024) or CP-LRP (Ali et al., ICML 2022) in
// LXT's gradient x input form. Under an LRP rule the forward values are unchanged; only the gradient
// is shaped, so that Σ_hidden(input · gradient) at the embeddings is each token's relevance.
#pragma once

namespace attribution::engine {

enum class PropagationRules {
  kGradient,  // plain autograd
  // Norms: the normalising factor is a constant (identity rule). Element-wise activations pass
  // gradient act(x)/x (identity rule). Products of two activations (q·kᵀ, A·v, act(gate)·up) split
  // their gradient uniformly: q and k get ¼ (½ from each product they take part in), v and both MLP
  // factors ½. Softmax, linear layers (ε-rule with ε→0) and residual additions keep their gradient.
  kAttnLrp,
  // As AttnLRP, but nothing flows through q and k (the attention weights are constants) nor through
  // the gate of a gated MLP; no products are split (they became linear).
  kCpLrp,
};
inline constexpr int kPropagationRuleCount = 3;

}  // namespace attribution::engine
