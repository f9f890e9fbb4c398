// SPDX-License-Identifier: Apache-2.0
#include "engine/model/rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "engine/model/cpu_row_kernels.h"

namespace attribution::engine {
namespace {

// inverse_rms = 1 / sqrt(mean(x^2) + eps): [..., 1] float32.
at::Tensor InverseRms(const at::Tensor& x32, double eps) {
  return at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

// The sum of a[i] * b[i] * c[i], in 16 partial sums the compiler keeps in vector registers.
ATTRIBUTION_VECTORIZED_CLONES
float Dot(const float* a, const float* b, const float* c, int64_t n) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[i + l] * c[i + l];
  }
  float total = 0;
  for (; i < n; ++i) total += a[i] * b[i] * c[i];
  for (float lane : lanes) total += lane;
  return total;
}

ATTRIBUTION_VECTORIZED_CLONES
void ScaleRow(const float* x, const float* weight, float inverse_rms, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inverse_rms);
}

// out = r * (g - x * projection) with g = grad * weight, as RmsNormFunction::backward states it.
ATTRIBUTION_VECTORIZED_CLONES
void GradientRow(const float* grad, const float* weight, const float* x, float inverse_rms, float projection,
                 float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = (grad[i] * weight[i] - x[i] * projection) * inverse_rms;
}

// [rows, n] float32 contiguous -> (normalized [rows, n], inverse_rms [rows]), a row at a time.
std::pair<at::Tensor, at::Tensor> FusedForward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  TORCH_CHECK(weight.numel() == n, "RmsNorm: weight ", weight.sizes(), " for x ", x.sizes());
  at::Tensor out = at::empty_like(x);
  at::Tensor inverse_rms = at::empty({rows}, x.options());
  const float* in = x.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  float* r = inverse_rms.mutable_data_ptr<float>();
  const std::vector<float> ones(n, 1.0f);
  at::parallel_for(0, rows, RowGrain(n), [&](int64_t first, int64_t end) {
    for (int64_t row = first; row < end; ++row) {
      const float* x_row = in + row * n;
      // x * x * 1: one kernel for both sums; the multiply by one is exact.
      r[row] = static_cast<float>(1.0 / std::sqrt(Dot(x_row, x_row, ones.data(), n) / n + eps));
      ScaleRow(x_row, w, r[row], o + row * n, n);
    }
  });
  return {out, inverse_rms};
}

// Autograd node for the input gradient only (the weight is a buffer here, never a parameter).
class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    if (RunsCpuRowKernel(x, weight)) {
      auto [out, inverse_rms] = FusedForward(x, weight, eps);
      ctx->save_for_backward({x, weight, inverse_rms});
      return out;
    }
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
    if (RunsCpuRowKernel(x, saved[1])) return {FusedBackward(x, saved[1], inverse_rms, grad_outputs[0]), {}, {}};
    // The weight multiplies in x's dtype, as the forward did; the rest runs in float32.
    at::Tensor g = (grad_outputs[0] * saved[1]).to(at::kFloat);  // [..., hidden]
    at::Tensor x32 = x.to(at::kFloat);
    at::Tensor projection = (g * x32).mean(-1, /*keepdim=*/true) * inverse_rms.square();  // [..., 1]
    at::Tensor grad_x = (g - x32 * projection) * inverse_rms;
    return {grad_x.to(x.scalar_type()), at::Tensor(), at::Tensor()};
  }

 private:
  // The same gradient a row at a time: mean(g * x) while the row is in cache, then one write.
  static at::Tensor FusedBackward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& inverse_rms,
                                  const at::Tensor& grad_output) {
    const at::Tensor grad = grad_output.contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    at::Tensor grad_x = at::empty_like(x);
    const float* in = x.const_data_ptr<float>();
    const float* w = weight.const_data_ptr<float>();
    const float* g = grad.const_data_ptr<float>();
    const float* r = inverse_rms.const_data_ptr<float>();
    float* out = grad_x.mutable_data_ptr<float>();
    at::parallel_for(0, rows, RowGrain(n), [&](int64_t first, int64_t end) {
      for (int64_t row = first; row < end; ++row) {
        const float* g_row = g + row * n;
        const float* x_row = in + row * n;
        const float projection = Dot(g_row, w, x_row, n) / n * r[row] * r[row];
        GradientRow(g_row, w, x_row, r[row], projection, out + row * n, n);
      }
    });
    return grad_x;
  }
};

}  // namespace

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (c10::GradMode::is_enabled() && x.requires_grad()) return RmsNormFunction::apply(x, weight, eps);
  if (RunsCpuRowKernel(x, weight)) return FusedForward(x, weight, eps).first;
  at::Tensor x32 = x.to(at::kFloat);
  return weight * (x32 * InverseRms(x32, eps)).to(x.scalar_type());
}

}  // namespace attribution::engine
