// SPDX-License-Identifier: Apache-2.0
// Rotary position embeddings as Llama, Mistral and Qwen2 use them (rotate-half layout), with the
// linear and llama3 frequency scalings.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/model_config.h"

namespace attribution::engine {

// Inverse frequencies [head_dim / 2] float32 on `device`, scaled as the config asks.
at::Tensor RopeInverseFrequencies(const ModelConfig& config, const at::Device& device);

// The cosines and sines of one batch's positions, computed once per forward and shared by every layer.
struct RopeAngles {
  at::Tensor cos;         // [B, 1, S, head_dim], compute dtype
  at::Tensor signed_sin;  // [B, 1, S, head_dim], compute dtype: -sin on the first half, +sin on the second
};

// The angles of `positions` ([B, S] int64) in `dtype`.
RopeAngles RopeAnglesAt(const at::Tensor& positions, const at::Tensor& inverse_frequencies, at::ScalarType dtype);

// Rotates x ([B, heads, S, head_dim]) by `angles`.
at::Tensor ApplyRope(const at::Tensor& x, const RopeAngles& angles);

// The attention's inputs, each [B, heads, S, head_dim] (a transposed view of [B, S, heads, head_dim]).
struct AttentionHeads {
  at::Tensor q, k, v;
};

// Splits the fused projection's output qkv ([B, S, (heads + 2 kv_heads) * head_dim]) into heads and, when
// `angles` is given (undefined tensors: GPT-2, no rotation), rotates q and k by it; differentiable.
// Rotated on the CPU in float32, one pass each way, the backward writing q's, k's and v's gradients into
// one tensor (ATen's ops take four passes per rotation and a concatenation of the three).
AttentionHeads SplitHeads(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim,
                          const RopeAngles& angles);

}  // namespace attribution::engine
