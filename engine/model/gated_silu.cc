// SPDX-License-Identifier: Apache-2.0
#include "engine/model/gated_silu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/model/cpu_row_kernels.h"

namespace attribution::engine {
namespace {

// out = gate * sigmoid * up over one row of `width` values.
ATTRIBUTION_VECTORIZED_CLONES
void GatedSiluRow(const float* gate, const float* up, const float* sigmoid, float* out, int64_t width) {
  for (int64_t i = 0; i < width; ++i) out[i] = gate[i] * sigmoid[i] * up[i];
}

// With s = sigmoid(gate): d silu(gate) / d gate = s * (1 + gate * (1 - s)).
ATTRIBUTION_VECTORIZED_CLONES
void GatedSiluGradientRow(const float* grad, const float* gate, const float* up, const float* sigmoid, float* grad_gate,
                          float* grad_up, int64_t width) {
  for (int64_t i = 0; i < width; ++i) {
    const float s = sigmoid[i], g = grad[i];
    grad_gate[i] = g * up[i] * s * (1.0f + gate[i] * (1.0f - s));
    grad_up[i] = g * gate[i] * s;
  }
}

int64_t Width(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.size(-1) % 2 == 0, "GatedSilu: gate_up's last dimension ", gate_up.size(-1), " is odd");
  return gate_up.size(-1) / 2;
}

// [..., 2 I] float32 contiguous -> ([..., I] output, [..., I] sigmoid of the gate).
std::pair<at::Tensor, at::Tensor> FusedForward(const at::Tensor& gate_up) {
  const int64_t width = Width(gate_up), rows = gate_up.numel() / (2 * width);
  std::vector<int64_t> sizes = gate_up.sizes().vec();
  sizes.back() = width;
  // ATen's sigmoid is vectorized with its own exp; reading the gate half through a strided view is one pass.
  at::Tensor sigmoid = at::sigmoid(gate_up.narrow(-1, 0, width)).contiguous();  // [..., I]
  at::Tensor out = at::empty(sizes, gate_up.options());                         // [..., I]
  const float* in = gate_up.const_data_ptr<float>();
  const float* s = sigmoid.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, RowGrain(2 * width), [&](int64_t first, int64_t end) {
    for (int64_t r = first; r < end; ++r) {
      GatedSiluRow(in + r * 2 * width, in + r * 2 * width + width, s + r * width, o + r * width, width);
    }
  });
  return {out, sigmoid};
}

class GatedSiluFunction : public torch::autograd::Function<GatedSiluFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate_up) {
    auto [out, sigmoid] = FusedForward(gate_up);
    ctx->save_for_backward({gate_up, sigmoid});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& gate_up = saved[0];  // [..., 2 I]
    const at::Tensor& sigmoid = saved[1];  // [..., I]
    const at::Tensor grad = grad_outputs[0].contiguous();
    const int64_t width = Width(gate_up), rows = gate_up.numel() / (2 * width);
    at::Tensor grad_gate_up = at::empty_like(gate_up);
    const float* in = gate_up.const_data_ptr<float>();
    const float* s = sigmoid.const_data_ptr<float>();
    const float* g = grad.const_data_ptr<float>();
    float* out = grad_gate_up.mutable_data_ptr<float>();
    at::parallel_for(0, rows, RowGrain(2 * width), [&](int64_t first, int64_t end) {
      for (int64_t r = first; r < end; ++r) {
        const int64_t fused = r * 2 * width, half = r * width;
        GatedSiluGradientRow(g + half, in + fused, in + fused + width, s + half, out + fused, out + fused + width,
                             width);
      }
    });
    return {grad_gate_up};
  }
};

}  // namespace

at::Tensor GatedSilu(const at::Tensor& gate_up) {
  if (!RunsCpuRowKernel(gate_up)) {
    const int64_t width = Width(gate_up);
    return at::silu(gate_up.narrow(-1, 0, width)) * gate_up.narrow(-1, width, width);
  }
  if (c10::GradMode::is_enabled() && gate_up.requires_grad()) return GatedSiluFunction::apply(gate_up);
  return FusedForward(gate_up).first;
}

}  // namespace attribution::engine
