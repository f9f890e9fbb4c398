// SPDX-License-Identifier: Apache-2.0
// GatedSilu against autograd through transformers' act_fn(gate_proj(x)) * up_proj(x), in float64.
#include "engine/model/gated_silu.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "tests/testing/reference.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::ScaledError;

at::Tensor ComposedGatedSilu(const at::Tensor& gate_up) {
  const int64_t width = gate_up.size(-1) / 2;
  return at::silu(gate_up.narrow(-1, 0, width)) * gate_up.narrow(-1, width, width);
}

// Widths with and without a vector tail; enough rows for both intra-op threads; values far into both
// tails of the sigmoid.
TEST(GatedSilu, ForwardAndGradientMatchFloat64) {
  at::manual_seed(3);
  for (int64_t width : {1, 13, 64, 1376}) {
    at::Tensor gate_up = (at::randn({3, 200, 2 * width}) * 6).requires_grad_(true);
    at::Tensor grad_out = at::randn({3, 200, width});
    at::Tensor ours = GatedSilu(gate_up);
    at::Tensor gate_up64 = gate_up.detach().to(at::kDouble).requires_grad_(true);
    at::Tensor expected = ComposedGatedSilu(gate_up64);
    EXPECT_LT(ScaledError(ours, expected), 1e-6) << "width " << width;
    at::Tensor grad = torch::autograd::grad({ours}, {gate_up}, {grad_out})[0];
    at::Tensor expected_grad = torch::autograd::grad({expected}, {gate_up64}, {grad_out.to(at::kDouble)})[0];
    EXPECT_LT(ScaledError(grad, expected_grad), 1e-6) << "width " << width;
  }
}

TEST(GatedSilu, WithoutGradModeIsTheSameForward) {
  at::Tensor gate_up = at::randn({5, 96}) * 4;
  at::Tensor expected = ComposedGatedSilu(gate_up.to(at::kDouble));
  c10::InferenceMode inference;
  EXPECT_LT(ScaledError(GatedSilu(gate_up), expected), 1e-6);
}

// A view into a wider tensor is not contiguous: the ATen ops run it, with the same result.
TEST(GatedSilu, NonContiguousInputTakesTheComposedOps) {
  at::Tensor wide = at::randn({6, 80}) * 3;
  at::Tensor gate_up = wide.narrow(-1, 8, 64);
  ASSERT_FALSE(gate_up.is_contiguous());
  EXPECT_LT(ScaledError(GatedSilu(gate_up), ComposedGatedSilu(gate_up.to(at::kDouble))), 1e-6);
}

// A batch of no rows (the loops would divide by zero) and an odd width (a caller's bug) take the ATen
// path and ATen's error.
TEST(GatedSilu, EmptyAndOddInputs) {
  EXPECT_EQ(GatedSilu(at::randn({0, 8}).requires_grad_(true)).sizes(), at::IntArrayRef({0, 4}));
  EXPECT_THROW(GatedSilu(at::randn({2, 7})), c10::Error);
}

}  // namespace
}  // namespace attribution::engine
