// SPDX-License-Identifier: Apache-2.0
// RMSNorm as Hugging Face's Llama, Mistral and Qwen2 compute it (statistics in float32, scaled back
// to the input dtype before the weight), with a hand-written input gradient: autograd through the
// composite ops spends about ten elementwise passes over the activations per norm, this one four, and
// on the CPU in float32 one each way (a row at a time, cpu_row_kernels.h).
//
//   at::Tensor y = RmsNorm(x, weight, 1e-5);  // differentiable in x; weight never requires grad
#pragma once

#include <ATen/core/Tensor.h>

namespace attribution::engine {

// [..., hidden] -> [..., hidden] in x's dtype; `weight` is [hidden] in x's dtype.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace attribution::engine
