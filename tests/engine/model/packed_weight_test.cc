// SPDX-License-Identifier: Apache-2.0
// MKL's packed layout for products of few rows: every row count up to the limit, with and without a bias,
// must give x · weightᵀ (+ bias) as float64 arithmetic gives it, and a product whose gradient autograd must
// record must not take the packed path.
#include "engine/model/packed_weight.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "engine/model/linear.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;

// The float64 product, independent of MKL's float32 kernels.
at::Tensor Reference(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor y = at::matmul(x.to(at::kDouble), weight.to(at::kDouble).t());
  return bias.defined() ? y + bias.to(at::kDouble) : y;
}

double RelativeError(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want).abs().max().item<double>() / want.abs().max().item<double>();
}

std::shared_ptr<const PackedWeight> PackOrSkip(const at::Tensor& weight) {
  std::shared_ptr<const PackedWeight> packed = PackedWeight::Pack(weight);
  if (packed == nullptr) ADD_FAILURE() << "MKL's packed GEMM is not in this LibTorch";
  return packed;
}

struct Shape {
  int64_t out, in;
};

class PackedProduct : public ::testing::TestWithParam<Shape> {};

// The layout is packed once, for kMaxRows; every smaller row count reads it too.
TEST_P(PackedProduct, EveryRowCountEqualsTheFloat64Product) {
  at::manual_seed(11);
  const at::Tensor weight = at::randn({GetParam().out, GetParam().in});
  const at::Tensor bias = at::randn({GetParam().out}), bias_before = bias.clone();
  const std::shared_ptr<const PackedWeight> packed = PackOrSkip(weight);
  if (packed == nullptr) return;
  for (int64_t rows : {int64_t{1}, int64_t{1}, int64_t{2}, int64_t{7}, int64_t{20}, PackedWeight::kMaxRows}) {
    const at::Tensor x = at::randn({rows, GetParam().in});
    ASSERT_TRUE(packed->Suits(x));
    EXPECT_LT(RelativeError(packed->Multiply(x, at::Tensor()), Reference(x, weight, at::Tensor())), 1e-6)
        << rows << " rows";
    EXPECT_LT(RelativeError(packed->Multiply(x, bias), Reference(x, weight, bias)), 1e-6) << rows << " rows, bias";
  }
  EXPECT_TRUE(at::equal(bias, bias_before)) << "the product was written into the bias";
}

INSTANTIATE_TEST_SUITE_P(Shapes, PackedProduct,
                         ::testing::Values(Shape{384, 256}, Shape{37, 19}, Shape{4000, 256}, Shape{256, 768}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::to_string(info.param.out) + "x" + std::to_string(info.param.in);
                         });

TEST(PackedWeight, KeepsLeadingDimensionsAndHandlesNoRows) {
  at::manual_seed(12);
  const at::Tensor weight = at::randn({24, 16});
  const std::shared_ptr<const PackedWeight> packed = PackOrSkip(weight);
  if (packed == nullptr) return;
  const at::Tensor x = at::randn({2, 3, 16}).transpose(0, 1);  // [3, 2, 16], not contiguous
  const at::Tensor y = packed->Multiply(x, at::Tensor());
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 2, 24}));
  EXPECT_LT(RelativeError(y, Reference(x, weight, at::Tensor())), 1e-6);
  EXPECT_EQ(packed->Multiply(at::empty({0, 16}), at::Tensor()).sizes(), (std::vector<int64_t>{0, 24}));
}

TEST(PackedWeight, TakesOnlyFewRowsOfFloat32WithoutARecordedGradient) {
  const std::shared_ptr<const PackedWeight> packed = PackOrSkip(at::randn({8, 4}));
  if (packed == nullptr) return;
  EXPECT_FALSE(packed->Suits(at::randn({PackedWeight::kMaxRows + 1, 4})));
  EXPECT_FALSE(packed->Suits(at::randn({2, 4}, at::kBFloat16)));
  EXPECT_FALSE(packed->Suits(at::randn({2, 5})));
  const at::Tensor leaf = at::randn({2, 4}).requires_grad_(true);
  EXPECT_FALSE(packed->Suits(leaf));
  c10::AutoGradMode no_grad(false);
  EXPECT_TRUE(packed->Suits(leaf));
}

TEST(PackedWeight, OnlyFloat32CpuMatricesArePacked) {
  EXPECT_EQ(PackedWeight::Pack(at::randn({8, 4}, at::kBFloat16)), nullptr);
  EXPECT_EQ(PackedWeight::Pack(at::randn({8})), nullptr);
  EXPECT_EQ(PackedWeight::Pack(at::empty({0, 4})), nullptr);
}

// Through Linear: a packed linear answers few rows as before, records gradients through at::linear, and
// counts its packed copy among its resident bytes.
TEST(PackedLinear, ForwardAndGradientsAreThoseOfTheDenseWeight) {
  at::manual_seed(13);
  const at::Tensor weight = at::randn({48, 32}), bias = at::randn({48});
  auto linear = Linear::Create(weight, bias, Quantization::kNone);
  ASSERT_THAT(linear, IsOk());
  const int64_t dense_bytes = linear->ResidentBytes();
  linear->PackForFewRows();
  if (linear->ResidentBytes() == dense_bytes) GTEST_FAIL() << "MKL's packed GEMM is not in this LibTorch";
  EXPECT_EQ(linear->ResidentBytes(), dense_bytes + weight.numel() * 4);

  const at::Tensor x = at::randn({1, 5, 32});
  {
    c10::AutoGradMode no_grad(false);
    EXPECT_LT(RelativeError(linear->Forward(x), Reference(x, weight, bias)), 1e-6);
  }
  const at::Tensor leaf = x.clone().requires_grad_(true);
  const at::Tensor y = linear->Forward(leaf);
  ASSERT_TRUE(y.requires_grad());
  const at::Tensor upstream = at::randn({1, 5, 48});
  y.backward(upstream);
  const at::Tensor want = at::matmul(upstream.to(at::kDouble), weight.to(at::kDouble));
  EXPECT_LT(RelativeError(leaf.grad(), want), 1e-6);
}

}  // namespace
}  // namespace attribution::engine
