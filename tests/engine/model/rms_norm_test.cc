// SPDX-License-Identifier: Apache-2.0
// The hand-written RMSNorm input gradient (and, on the CPU in float32, the row loops of both
// directions) against autograd through Hugging Face's composite formula.
#include "engine/model/rms_norm.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "tests/testing/reference.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::ScaledError;

// transformers' LlamaRMSNorm.forward, differentiated by autograd.
at::Tensor ComposedRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

class RmsNormGradient : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(RmsNormGradient, MatchesAutogradThroughTheComposedFormula) {
  const at::ScalarType dtype = GetParam();
  at::manual_seed(5);
  at::Tensor x = (at::randn({3, 7, 64}) * 3).to(dtype).requires_grad_(true);  // [batch, seq, hidden]
  at::Tensor weight = (1 + 0.1 * at::randn({64})).to(dtype);
  at::Tensor grad_out = at::randn({3, 7, 64}).to(dtype);
  at::Tensor ours = RmsNorm(x, weight, 1e-5);
  at::Tensor expected = ComposedRmsNorm(x, weight, 1e-5);
  if (dtype == at::kFloat) {  // the CPU's float32 row loop: the same formula, summed in another order
    EXPECT_LT(ScaledError(ours, expected), 1e-6);
  } else {
    EXPECT_TRUE(at::equal(ours, expected));  // the same sequence of ops
  }
  at::Tensor grad = torch::autograd::grad({ours}, {x}, {grad_out})[0];
  at::Tensor expected_grad = torch::autograd::grad({expected}, {x}, {grad_out})[0];
  // fp32: rounding of a different but equivalent formula; half precisions: one rounding of the
  // result.
  EXPECT_LT(ScaledError(grad, expected_grad), dtype == at::kFloat ? 1e-5 : 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RmsNormGradient, ::testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(RmsNorm, WithoutGradModeIsTheSameForward) {
  at::Tensor x = at::randn({2, 5, 32});
  at::Tensor weight = at::randn({32});
  EXPECT_LT(ScaledError(RmsNorm(x, weight, 1e-6), ComposedRmsNorm(x, weight, 1e-6)), 1e-6);
  at::Tensor x16 = x.to(at::kBFloat16), weight16 = weight.to(at::kBFloat16);
  EXPECT_TRUE(at::equal(RmsNorm(x16, weight16, 1e-6), ComposedRmsNorm(x16, weight16, 1e-6)));
}

// Widths that leave a tail after the 16-lane sums, and enough rows for both intra-op threads: the CPU
// loops against the composed formula in float64.
TEST(RmsNorm, CpuRowLoopsMatchFloat64AtOddWidths) {
  at::manual_seed(11);
  for (int64_t width : {1, 15, 37, 512}) {
    at::Tensor x = (at::randn({4, 300, width}) * 2).requires_grad_(true);
    at::Tensor weight = 1 + 0.1 * at::randn({width});
    at::Tensor grad_out = at::randn({4, 300, width});
    at::Tensor ours = RmsNorm(x, weight, 1e-5);
    at::Tensor x64 = x.detach().to(at::kDouble).requires_grad_(true);
    at::Tensor expected = weight.to(at::kDouble) * x64 * at::rsqrt(x64.pow(2).mean(-1, /*keepdim=*/true) + 1e-5);
    EXPECT_LT(ScaledError(ours, expected), 1e-6) << "width " << width;
    at::Tensor grad = torch::autograd::grad({ours}, {x}, {grad_out})[0];
    at::Tensor expected_grad = torch::autograd::grad({expected}, {x64}, {grad_out.to(at::kDouble)})[0];
    EXPECT_LT(ScaledError(grad, expected_grad), 1e-5) << "width " << width;
  }
}

}  // namespace
}  // namespace attribution::engine
