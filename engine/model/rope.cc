// SPDX-License-Identifier: Apache-2.0
#include "engine/model/rope.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>

#include "engine/model/cpu_row_kernels.h"

namespace attribution::engine {

at::Tensor RopeInverseFrequencies(const ModelConfig& config, const at::Device& device) {
  const int64_t dim = config.head_dim;
  at::Tensor exponents = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim;
  at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(config.rope_theta, at::kFloat), exponents);
  if (config.linear_rope_factor) inv = inv / *config.linear_rope_factor;
  if (config.llama3_rope_scaling) {
    const Llama3RopeScaling& s = *config.llama3_rope_scaling;
    const double old_context = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = old_context / s.low_freq_factor;
    const double high_freq_wavelen = old_context / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv;
    // Long wavelengths are slowed by `factor`; short ones kept; the band between is interpolated.
    at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv / s.factor, inv);
    at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv = at::where(medium, smoothed, scaled);
  }
  return inv.to(device);
}

RopeAngles RopeAnglesAt(const at::Tensor& positions, const at::Tensor& inverse_frequencies, at::ScalarType dtype) {
  // [B, S, head_dim / 2] angles in float32, duplicated to [B, S, head_dim] as rotate-half expects.
  at::Tensor angles = positions.to(at::kFloat).unsqueeze(-1) * inverse_frequencies;
  at::Tensor doubled = at::cat({angles, angles}, -1);
  at::Tensor half_sin = angles.sin();
  return {.cos = doubled.cos().to(dtype).unsqueeze(1),
          .signed_sin = at::cat({-half_sin, half_sin}, -1).to(dtype).unsqueeze(1)};
}

at::Tensor ApplyRope(const at::Tensor& x, const RopeAngles& angles) {
  // rotate_half(x) = cat(-x2, x1) = roll(x, half) with its first half negated; the sign lives in
  // signed_sin, so forward is one copy (the roll) and backward one roll back, where slicing and
  // concatenating cost zero-filled gradients, copies and extra adds. The products are the same.
  const int64_t half = x.size(-1) / 2;
  return x * angles.cos + x.roll(half, -1) * angles.signed_sin;
}

namespace {

// out = x * cos + roll(x, half) * signed_sin over one head of 2 * half values (ApplyRope's product).
ATTRIBUTION_VECTORIZED_CLONES
void RotateHead(const float* x, const float* cos, const float* signed_sin, float* out, int64_t half) {
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] + x[i + half] * signed_sin[i];
  for (int64_t i = half; i < 2 * half; ++i) out[i] = x[i] * cos[i] + x[i - half] * signed_sin[i];
}

// The transpose of RotateHead: x[i] reaches out[i] through cos[i] and out[i ± half] through signed_sin there.
ATTRIBUTION_VECTORIZED_CLONES
void RotateHeadGradient(const float* grad, const float* cos, const float* signed_sin, float* out, int64_t half) {
  for (int64_t i = 0; i < half; ++i) out[i] = grad[i] * cos[i] + grad[i + half] * signed_sin[i + half];
  for (int64_t i = half; i < 2 * half; ++i) out[i] = grad[i] * cos[i] + grad[i - half] * signed_sin[i - half];
}

struct HeadShape {
  int64_t batch, seq, heads, kv_heads, dim;
  int64_t width() const { return (heads + 2 * kv_heads) * dim; }
};

// The loops below trust these sizes; a mismatch is a caller's bug, thrown as ATen's own checks throw.
HeadShape ShapeOf(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim, const RopeAngles& angles) {
  const HeadShape shape{qkv.size(0), qkv.size(1), heads, kv_heads, head_dim};
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) == shape.width(), "SplitHeads: qkv is ", qkv.sizes(), " for ", heads,
              " + 2 x ", kv_heads, " heads of ", head_dim);
  for (const at::Tensor* t : {&angles.cos, &angles.signed_sin}) {
    TORCH_CHECK(t->numel() == shape.batch * shape.seq * head_dim, "SplitHeads: angles ", t->sizes(), " for qkv ",
                qkv.sizes());
  }
  return shape;
}

// The angles' rows of token (b, s): cos and signed_sin are [B, 1, S, D] contiguous.
int64_t AngleOffset(const HeadShape& shape, int64_t b, int64_t s) { return (b * shape.seq + s) * shape.dim; }

// q and k rotated ([B, S, heads, D], [B, S, kv_heads, D]) and, with `copy_v`, v copied ([B, S, kv_heads, D]).
std::vector<at::Tensor> RotateForward(const at::Tensor& qkv, const HeadShape& shape, const RopeAngles& angles,
                                      bool copy_v) {
  const at::TensorOptions options = qkv.options();
  at::Tensor q = at::empty({shape.batch, shape.seq, shape.heads, shape.dim}, options);
  at::Tensor k = at::empty({shape.batch, shape.seq, shape.kv_heads, shape.dim}, options);
  at::Tensor v = copy_v ? at::empty_like(k) : at::Tensor();
  const float* in = qkv.const_data_ptr<float>();
  const float* cos = angles.cos.const_data_ptr<float>();
  const float* sin = angles.signed_sin.const_data_ptr<float>();
  float* q_out = q.mutable_data_ptr<float>();
  float* k_out = k.mutable_data_ptr<float>();
  float* v_out = copy_v ? v.mutable_data_ptr<float>() : nullptr;
  const int64_t d = shape.dim, half = d / 2, kv_width = shape.kv_heads * d;
  at::parallel_for(0, shape.batch * shape.seq, RowGrain(shape.width()), [&](int64_t first, int64_t end) {
    for (int64_t token = first; token < end; ++token) {
      const int64_t angle = AngleOffset(shape, token / shape.seq, token % shape.seq);
      const float* row = in + token * shape.width();
      for (int64_t h = 0; h < shape.heads; ++h) {
        RotateHead(row + h * d, cos + angle, sin + angle, q_out + (token * shape.heads + h) * d, half);
      }
      const float* k_in = row + shape.heads * d;
      for (int64_t h = 0; h < shape.kv_heads; ++h) {
        RotateHead(k_in + h * d, cos + angle, sin + angle, k_out + token * kv_width + h * d, half);
      }
      if (copy_v) std::memcpy(v_out + token * kv_width, k_in + kv_width, kv_width * sizeof(float));
    }
  });
  return {q, k, v};
}

// Head h's values of token (b, s) in a gradient shaped [B, S, heads, D] with any strides but the last.
const float* HeadAt(const at::Tensor& grad, int64_t b, int64_t s, int64_t h) {
  return grad.const_data_ptr<float>() + b * grad.stride(0) + s * grad.stride(1) + h * grad.stride(2);
}

at::Tensor InnermostContiguous(const at::Tensor& grad) { return grad.stride(-1) == 1 ? grad : grad.contiguous(); }

class RotatedHeadsFunction : public torch::autograd::Function<RotatedHeadsFunction> {
 public:
  // Returns {q, k, v}, each [B, S, heads, D]; the caller transposes them.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& qkv,
                                                int64_t heads, int64_t kv_heads, const at::Tensor& cos,
                                                const at::Tensor& signed_sin) {
    const RopeAngles angles{cos, signed_sin};
    ctx->save_for_backward({cos, signed_sin});
    return RotateForward(qkv, ShapeOf(qkv, heads, kv_heads, cos.size(-1), angles), angles, /*copy_v=*/true);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const float* cos = saved[0].const_data_ptr<float>();
    const float* sin = saved[1].const_data_ptr<float>();
    const at::Tensor gq = InnermostContiguous(grads[0]), gk = InnermostContiguous(grads[1]);
    const at::Tensor gv = InnermostContiguous(grads[2]);
    // The gradients have the outputs' shapes: [B, S, heads, D] and [B, S, kv_heads, D].
    const HeadShape shape{gq.size(0), gq.size(1), gq.size(2), gk.size(2), gq.size(3)};
    at::Tensor grad_qkv = at::empty({shape.batch, shape.seq, shape.width()}, saved[0].options());
    float* out = grad_qkv.mutable_data_ptr<float>();
    const int64_t d = shape.dim, half = d / 2;
    at::parallel_for(0, shape.batch * shape.seq, RowGrain(shape.width()), [&](int64_t first, int64_t end) {
      for (int64_t token = first; token < end; ++token) {
        const int64_t b = token / shape.seq, s = token % shape.seq, angle = AngleOffset(shape, b, s);
        float* row = out + token * shape.width();
        for (int64_t h = 0; h < shape.heads; ++h) {
          RotateHeadGradient(HeadAt(gq, b, s, h), cos + angle, sin + angle, row + h * d, half);
        }
        float* k_row = row + shape.heads * d;
        for (int64_t h = 0; h < shape.kv_heads; ++h) {
          RotateHeadGradient(HeadAt(gk, b, s, h), cos + angle, sin + angle, k_row + h * d, half);
          std::memcpy(k_row + (shape.kv_heads + h) * d, HeadAt(gv, b, s, h), d * sizeof(float));
        }
      }
    });
    return {grad_qkv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

AttentionHeads SplitHeads(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim,
                          const RopeAngles& angles) {
  const int64_t b = qkv.size(0), s = qkv.size(1), d = head_dim;
  const bool rotate = angles.cos.defined();
  if (!rotate || !RunsCpuRowKernel(qkv, angles.cos, angles.signed_sin) || d % 2 != 0) {
    // Views into qkv; splitting the last dim keeps them views.
    const std::vector<at::Tensor> parts = qkv.split_with_sizes({heads * d, kv_heads * d, kv_heads * d}, -1);
    at::Tensor q = parts[0].view({b, s, heads, d}).transpose(1, 2);
    at::Tensor k = parts[1].view({b, s, kv_heads, d}).transpose(1, 2);
    if (rotate) {
      q = ApplyRope(q, angles);
      k = ApplyRope(k, angles);
    }
    return {q, k, parts[2].view({b, s, kv_heads, d}).transpose(1, 2)};
  }
  if (c10::GradMode::is_enabled() && qkv.requires_grad()) {
    const auto out = RotatedHeadsFunction::apply(qkv, heads, kv_heads, angles.cos, angles.signed_sin);
    return {out[0].transpose(1, 2), out[1].transpose(1, 2), out[2].transpose(1, 2)};
  }
  const std::vector<at::Tensor> out =
      RotateForward(qkv, ShapeOf(qkv, heads, kv_heads, d, angles), angles, /*copy_v=*/false);
  const at::Tensor v = qkv.narrow(-1, (heads + kv_heads) * d, kv_heads * d).view({b, s, kv_heads, d});
  return {out[0].transpose(1, 2), out[1].transpose(1, 2), v.transpose(1, 2)};
}

}  // namespace attribution::engine
