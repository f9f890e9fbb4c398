// SPDX-License-Identifier: Apache-2.0
#include "engine/model/rope.h"

#include <ATen/ATen.h>

#include <cmath>

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

}  // namespace attribution::engine
