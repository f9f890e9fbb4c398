// SPDX-License-Identifier: Apache-2.0
// Private to engine/model: the weights of a loaded CausalLM, shared by the loader and the forward pass.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "engine/model/causal_lm.h"
#include "engine/model/linear.h"

namespace attribution::engine {

// A Mixtral MLP: each expert is a gated SiLU MLP; the router's logits pick the experts of each token.
struct ExpertsMlp {
  Linear router;                // [num_experts, hidden]; --quantization leaves it dense (its top-k is discontinuous)
  std::vector<Linear> gate_up;  // per expert, parts {gate (w1), up (w3)}
  std::vector<Linear> down;     // per expert, w2
};

// One pre-norm decoder block. Llama-family blocks use RMSNorm (no norm biases) and a gated SiLU MLP
// (Mixtral: a mixture of such experts); GPT-2 and Falcon blocks use LayerNorm with biases and a GELU
// MLP without gate. Falcon's parallel blocks feed the block's input to both attention and MLP, through
// one shared norm (mlp_norm_weight undefined) or two. Projections that read the same input are fused
// into one matmul: a few wide matmuls keep the device busier than many narrow ones.
struct DecoderLayer {
  at::Tensor attention_norm_weight, attention_norm_bias;  // [hidden]
  at::Tensor mlp_norm_weight, mlp_norm_bias;              // [hidden]
  Linear qkv;  // parts {q: heads * head_dim, k: kv_heads * head_dim, v: kv_heads * head_dim}
  Linear o;
  Linear gate_up;  // parts {gate, up: intermediate each}; GPT-2 and Falcon: one part
  Linear down;
  ExpertsMlp experts;  // Mixtral only; gate_up and down are then empty
};

class CausalLM::Impl {
 public:
  ModelConfig config;
  LoadOptions options;
  bool prequantized = false;  // config.json's quantization_config: linears load as stored
  at::Device device{at::kCPU};
  at::Tensor token_embedding;     // [vocab, hidden]
  at::Tensor position_embedding;  // [max_positions, hidden], GPT-2 only
  std::vector<DecoderLayer> layers;
  at::Tensor final_norm_weight, final_norm_bias;
  Linear lm_head;                           // tied: its weight is token_embedding's tensor
  bool tied_head = false;                   // true: logits = hidden @ token_embedding^T
  at::Tensor rope_inverse_frequencies;      // [head_dim / 2], Llama family only
  int64_t resident_weight_bytes = 0;        // counted once at load
  std::vector<std::string> unused_weights;  // stored tensors the architecture does not use
  std::vector<std::string> load_warnings;   // what loading did that the checkpoint's config did not say

  bool is_gpt2() const { return config.architecture == Architecture::kGpt2; }
  bool uses_layer_norm() const { return is_gpt2() || config.architecture == Architecture::kFalcon; }
  bool uses_rope() const { return !is_gpt2(); }
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, PropagationRules rules) const;
  at::Tensor Mlp(const DecoderLayer& layer, int64_t index, const at::Tensor& x, PropagationRules rules,
                 const ActivationHooks* hooks) const;
  at::Tensor GatedMlp(const Linear& gate_up, const Linear& down, const at::Tensor& x, PropagationRules rules) const;
  // `hooks` may read the router's logits.
  at::Tensor ExpertsForward(const ExpertsMlp& experts, int64_t layer, const at::Tensor& x, PropagationRules rules,
                            const ActivationHooks* hooks) const;
  at::Tensor Forward(const ForwardBatch& batch) const;  // throws c10::Error on LibTorch failures
};

// Reads every weight the architecture needs from `dir` into `impl`, and lists the stored tensors it
// does not use in impl.unused_weights (throws nothing; statuses only).
absl::Status LoadWeights(const std::string& dir, CausalLM::Impl& impl);

// Calls `visit` on every linear of `model` (a CausalLM::Impl, const or not): each layer's projections, the
// experts and their router, and the head.
template <typename Model, typename Visit>
void ForEachLinear(Model& model, Visit&& visit) {
  for (auto& layer : model.layers) {
    for (auto* linear : {&layer.qkv, &layer.o, &layer.gate_up, &layer.down, &layer.experts.router}) visit(*linear);
    for (auto* experts : {&layer.experts.gate_up, &layer.experts.down}) {
      for (auto& linear : *experts) visit(linear);
    }
  }
  visit(model.lm_head);
}

}  // namespace attribution::engine
