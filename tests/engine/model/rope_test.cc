// SPDX-License-Identifier: Apache-2.0
// SplitHeads against transformers' apply_rotary_pos_emb (q * cos + rotate_half(q) * sin, rotate_half
// by slicing and concatenating), differentiated by autograd in float64.
#include "engine/model/rope.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "tests/testing/reference.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::ScaledError;

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// [B, heads, S, D] from qkv's columns [first, first + heads * D), rotated when `rotate`.
at::Tensor ReferenceHeads(const at::Tensor& qkv, int64_t first, int64_t heads, int64_t dim, const at::Tensor& cos,
                          const at::Tensor& sin, bool rotate) {
  at::Tensor x = qkv.narrow(-1, first, heads * dim).view({qkv.size(0), qkv.size(1), heads, dim}).transpose(1, 2);
  return rotate ? x * cos + RotateHalf(x) * sin : x;
}

struct Case {
  int64_t batch, seq, heads, kv_heads, dim;
};

class SplitHeadsTest : public ::testing::TestWithParam<Case> {};

TEST_P(SplitHeadsTest, ForwardAndGradientMatchFloat64) {
  const Case c = GetParam();
  at::manual_seed(7);
  ModelConfig config;
  config.head_dim = c.dim;
  config.rope_theta = 10000;
  const at::Tensor positions = at::arange(c.seq, at::kLong).repeat({c.batch, 1}) + 3 * at::arange(c.batch).unsqueeze(1);
  const RopeAngles angles = RopeAnglesAt(positions, RopeInverseFrequencies(config, at::kCPU), at::kFloat);
  const int64_t width = (c.heads + 2 * c.kv_heads) * c.dim;
  at::Tensor qkv = at::randn({c.batch, c.seq, width}).requires_grad_(true);
  const AttentionHeads ours = SplitHeads(qkv, c.heads, c.kv_heads, c.dim, angles);

  // The same float32 angles, in transformers' form: its sin is the plain sine of the doubled angles, where
  // ours carries rotate_half's sign on the first half.
  at::Tensor qkv64 = qkv.detach().to(at::kDouble).requires_grad_(true);
  const at::Tensor cos = angles.cos.to(at::kDouble);
  const at::Tensor sine = angles.signed_sin.narrow(-1, c.dim / 2, c.dim / 2);
  const at::Tensor plain_sin = at::cat({sine, sine}, -1).to(at::kDouble);
  const at::Tensor q = ReferenceHeads(qkv64, 0, c.heads, c.dim, cos, plain_sin, true);
  const at::Tensor k = ReferenceHeads(qkv64, c.heads * c.dim, c.kv_heads, c.dim, cos, plain_sin, true);
  const at::Tensor v = ReferenceHeads(qkv64, (c.heads + c.kv_heads) * c.dim, c.kv_heads, c.dim, cos, plain_sin, false);
  EXPECT_LT(ScaledError(ours.q, q), 1e-6);
  EXPECT_LT(ScaledError(ours.k, k), 1e-6);
  EXPECT_LT(ScaledError(ours.v, v), 1e-6);
  ASSERT_EQ(ours.q.sizes(), q.sizes());
  ASSERT_EQ(ours.k.sizes(), k.sizes());

  // Gradients as the attention hands them back: [B, H, S, D] contiguous, so transposed to ours.
  const at::Tensor gq = at::randn(q.sizes()), gk = at::randn(k.sizes()), gv = at::randn(v.sizes());
  at::Tensor grad = torch::autograd::grad({ours.q, ours.k, ours.v}, {qkv}, {gq, gk, gv})[0];
  at::Tensor expected =
      torch::autograd::grad({q, k, v}, {qkv64}, {gq.to(at::kDouble), gk.to(at::kDouble), gv.to(at::kDouble)})[0];
  EXPECT_LT(ScaledError(grad, expected), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SplitHeadsTest,
                         ::testing::Values(Case{2, 5, 4, 4, 8}, Case{3, 70, 8, 2, 64}, Case{1, 1, 2, 1, 2}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "b" + std::to_string(c.batch) + "_s" + std::to_string(c.seq) + "_h" +
                                  std::to_string(c.heads) + "_kv" + std::to_string(c.kv_heads) + "_d" +
                                  std::to_string(c.dim);
                         });

TEST(SplitHeads, WithoutGradModeMatchesTheGradientPath) {
  ModelConfig config;
  config.head_dim = 16;
  config.rope_theta = 500000;
  const RopeAngles angles =
      RopeAnglesAt(at::arange(9, at::kLong).unsqueeze(0), RopeInverseFrequencies(config, at::kCPU), at::kFloat);
  const at::Tensor qkv = at::randn({1, 9, (4 + 2 * 2) * 16});
  const AttentionHeads with_grad = SplitHeads(qkv.clone().requires_grad_(true), 4, 2, 16, angles);
  c10::InferenceMode inference;
  const AttentionHeads without = SplitHeads(qkv, 4, 2, 16, angles);
  EXPECT_TRUE(at::equal(without.q, with_grad.q.detach()));
  EXPECT_TRUE(at::equal(without.k, with_grad.k.detach()));
  EXPECT_TRUE(at::equal(without.v, with_grad.v.detach()));
}

// Without angles (GPT-2) the heads are qkv's columns, unrotated and not copied.
TEST(SplitHeads, WithoutAnglesViewsTheColumns) {
  const at::Tensor qkv = at::randn({2, 3, (2 + 2 * 1) * 4});
  const AttentionHeads split = SplitHeads(qkv, 2, 1, 4, RopeAngles{});
  EXPECT_TRUE(at::equal(split.q, ReferenceHeads(qkv, 0, 2, 4, {}, {}, false)));
  EXPECT_TRUE(at::equal(split.k, ReferenceHeads(qkv, 8, 1, 4, {}, {}, false)));
  EXPECT_TRUE(at::equal(split.v, ReferenceHeads(qkv, 12, 1, 4, {}, {}, false)));
  EXPECT_EQ(split.v.data_ptr(), qkv.data_ptr<float>() + 12);
}

}  // namespace
}  // namespace attribution::engine
