// SPDX-License-Identifier: Apache-2.0
// The gated MLP's activation, silu(gate) * up, read from the fused gate/up projection's output.
//
//   at::Tensor inner = GatedSilu(layer.gate_up.Forward(x));  // [..., 2 I] -> [..., I]
#pragma once

#include <ATen/core/Tensor.h>

namespace attribution::engine {

// [..., 2 * I] (gate in the first half, up in the second) -> [..., I] in gate_up's dtype; differentiable.
// On the CPU in float32 one pass each way, the backward writing both halves' gradients into one tensor
// (ATen's ops take three passes and a concatenation of the two halves).
at::Tensor GatedSilu(const at::Tensor& gate_up);

}  // namespace attribution::engine
