// SPDX-License-Identifier: Apache-2.0
// Rotary position embeddings as Llama, Mistral and Qwen2 use them (rotate-half layout), with the
// linear and llama3 frequency scalings.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/model_config.h"

namespace attribution::engine {

// Inverse frequencies [head_dim / 2] float32 on `device`, scaled as the config asks.
at::Tensor RopeInverseFrequencies(const ModelConfig& config, const at::Device& device);

// Rotates x ([B, heads, S, head_dim]) by the angles of `positions` ([B, S] int64).
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inverse_frequencies);

}  // namespace attribution::engine
