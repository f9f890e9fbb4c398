// SPDX-License-Identifier: Apache-2.0
// Mixtral's sparse MLP, as transformers computes it: the router's softmax (float32) over every expert,
// the top k kept and renormalised to sum 1, and each token's output the weighted sum of its experts'.
#include <ATen/ATen.h>

#include "engine/model/causal_lm_impl.h"

namespace attribution::engine {

at::Tensor CausalLM::Impl::ExpertsForward(const ExpertsMlp& experts, int64_t layer, const at::Tensor& x,
                                          PropagationRules rules, const ActivationHooks* hooks) const {
  const int64_t top_k = config.mixture_of_experts->experts_per_token;
  const int64_t num_experts = static_cast<int64_t>(experts.down.size());
  const at::Tensor tokens = x.reshape({-1, x.size(-1)});  // [T, hidden], every row of the batch
  const at::Tensor logits = experts.router.Forward(tokens);
  if (hooks != nullptr && hooks->router_logits) hooks->router_logits(layer, logits.view({x.size(0), x.size(1), -1}));
  // The choice of experts is not differentiated; the kept weights are (through the softmax), except
  // under the LRP rules, which treat them as constants so each expert's relevance is conserved.
  auto [top_weights, top_experts] = at::softmax(logits, -1, at::kFloat).topk(top_k, -1);  // [T, k]
  top_weights = top_weights / top_weights.sum(-1, /*keepdim=*/true);
  if (rules != PropagationRules::kGradient) top_weights = top_weights.detach();

  // Assignments (token, slot) grouped by expert: one matmul per expert over all its tokens, and one
  // device-to-host copy (the group sizes) per layer.
  const at::Tensor assigned_experts = top_experts.reshape(-1);
  const at::Tensor order = at::argsort(assigned_experts, /*stable=*/true);
  const at::Tensor token_of = at::floor_divide(order, top_k);
  const at::Tensor weight_of = top_weights.reshape(-1).index_select(0, order);
  const at::Tensor counts = at::bincount(assigned_experts, {}, num_experts).to(at::kCPU);
  const int64_t* count = counts.data_ptr<int64_t>();
  at::Tensor out = at::zeros_like(tokens);
  for (int64_t e = 0, begin = 0; e < num_experts; begin += count[e], ++e) {
    if (count[e] == 0) continue;
    const at::Tensor routed = token_of.narrow(0, begin, count[e]);
    at::Tensor y = GatedMlp(experts.gate_up[e], experts.down[e], tokens.index_select(0, routed), rules);
    // float32 weights times the expert's output, then back to the compute dtype (as transformers).
    y = (y * weight_of.narrow(0, begin, count[e]).unsqueeze(1)).to(x.scalar_type());
    out = out.index_add(0, routed, y);
  }
  return out.view_as(x);
}

}  // namespace attribution::engine
