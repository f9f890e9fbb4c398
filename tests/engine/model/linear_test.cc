// SPDX-License-Identifier: Apache-2.0
// Fused projections: a Linear concatenated from q/k/v-like parts of different widths (grouped-query
// attention) must compute, per part, what each part computes alone, in every weight format, forward
// and backward.
#include "engine/model/linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::StatusIs;

constexpr int64_t kIn = 128;

// q/k/v of grouped-query attention: 4 heads of 16, 2 key/value heads. Each part gets its own weight
// scale, so a scale or block landing in the wrong part shows.
std::vector<Linear> GqaParts(Quantization quantization, bool bias, const FourBitOptions& four_bit = {}) {
  const std::vector<int64_t> widths = {64, 32, 32};
  std::vector<Linear> parts;
  at::manual_seed(3);
  for (size_t i = 0; i < widths.size(); ++i) {
    at::Tensor weight = at::randn({widths[i], kIn}) * (1.0 + 4.0 * i);  // [out, in]
    at::Tensor b = bias ? at::randn({widths[i]}) : at::Tensor();
    auto part = Linear::Create(weight, b, quantization, {}, four_bit);
    EXPECT_THAT(part, IsOk());
    parts.push_back(std::move(*part));
  }
  return parts;
}

struct Case {
  Quantization quantization;
  bool bias;
  FourBitOptions four_bit = {};
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << QuantizationName(c.quantization) << (c.bias ? " with bias" : "")
      << (c.four_bit.double_quantization ? " double-quantized" : "");
}

class FusedLinear : public ::testing::TestWithParam<Case> {};

TEST_P(FusedLinear, EachPartEqualsThatProjectionAlone) {
  const std::vector<Linear> alone = GqaParts(GetParam().quantization, GetParam().bias, GetParam().four_bit);
  auto fused = Linear::Concat(GqaParts(GetParam().quantization, GetParam().bias, GetParam().four_bit));
  ASSERT_THAT(fused, IsOk());
  EXPECT_EQ(fused->output_parts(), (std::vector<int64_t>{64, 32, 32}));
  EXPECT_EQ(fused->out_features(), 128);

  at::Tensor x = at::randn({2, 5, kIn}).requires_grad_(true);  // [batch, seq, in]
  const std::vector<at::Tensor> parts = fused->ForwardParts(x);
  ASSERT_EQ(parts.size(), 3u);
  std::vector<at::Tensor> grad_outs;
  at::Tensor expected_grad = at::zeros_like(x);
  for (size_t i = 0; i < parts.size(); ++i) {
    at::Tensor expected = alone[i].Forward(x);  // [batch, seq, width_i]
    EXPECT_LT(ScaledError(parts[i], expected), 1e-5) << "part " << i;
    EXPECT_TRUE(parts[i].is_alias_of(parts[0])) << "part " << i << " is a copy, not a view";
    grad_outs.push_back(at::randn_like(expected));
    expected_grad += torch::autograd::grad({expected}, {x}, {grad_outs.back()})[0];
  }
  // Backward through the fused matmul (and, quantized, the dequantize-again node) to the input.
  at::Tensor grad = torch::autograd::grad(parts, {x}, grad_outs)[0];
  EXPECT_LT(ScaledError(grad, expected_grad), 1e-5);
}

TEST_P(FusedLinear, ResidentBytesAreThePartsBytes) {
  const std::vector<Linear> alone = GqaParts(GetParam().quantization, GetParam().bias, GetParam().four_bit);
  int64_t expected = 0;
  for (const Linear& part : alone) expected += part.ResidentBytes();
  if (IsFourBit(GetParam().quantization)) expected -= 2 * 16 * 4;  // the fused weight keeps one code book
  if (GetParam().four_bit.double_quantization) {
    // Parts of 128 and 64 blocks are not whole nested blocks of 256: the fused weight holds float32
    // absmaxes instead of each part's 8-bit codes, nested scales, offsets and 256-value code book.
    const int64_t blocks = (64 + 32 + 32) * kIn / 64, nested_bytes = 3 * (4 + 4 + 256 * 4);
    expected += blocks * 4 - blocks - nested_bytes;
  }
  EXPECT_EQ(Linear::Concat(GqaParts(GetParam().quantization, GetParam().bias, GetParam().four_bit))->ResidentBytes(),
            expected);
}

INSTANTIATE_TEST_SUITE_P(Formats, FusedLinear,
                         ::testing::Values(Case{Quantization::kNone, false}, Case{Quantization::kNone, true},
                                           Case{Quantization::kInt8, false}, Case{Quantization::kInt8, true},
                                           Case{Quantization::kNf4, false}, Case{Quantization::kNf4, true},
                                           Case{Quantization::kFp4, false}, Case{Quantization::kFp4, true},
                                           Case{Quantization::kNf4, false, {.double_quantization = true}}),
                         [](const auto& info) {
                           return std::string(QuantizationName(info.param.quantization)) +
                                  (info.param.bias ? "_bias" : "") +
                                  (info.param.four_bit.double_quantization ? "_double" : "");
                         });

TEST(FusedLinear, RejectsPartsOfDifferentFormatsOrBias) {
  std::vector<Linear> mixed_format = GqaParts(Quantization::kNone, false);
  mixed_format[1] = GqaParts(Quantization::kInt8, false)[1];
  EXPECT_EQ(Linear::Concat(std::move(mixed_format)).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Linear> mixed_bias = GqaParts(Quantization::kNf4, false);
  mixed_bias[2] = GqaParts(Quantization::kNf4, true)[2];
  EXPECT_EQ(Linear::Concat(std::move(mixed_bias)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Linear::Concat({}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FusedLinear, GivenOutputPartsSplitAStoredFusedWeight) {
  at::Tensor weight = at::randn({96, kIn});  // [3 * 32, in], as GPT-2's c_attn after transposing
  auto linear = Linear::Create(weight, at::Tensor(), Quantization::kNone, {32, 32, 32});
  ASSERT_THAT(linear, IsOk());
  at::Tensor x = at::randn({3, kIn});
  const std::vector<at::Tensor> parts = linear->ForwardParts(x);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_LT(ScaledError(parts[2], at::linear(x, weight.narrow(0, 64, 32))), 1e-5);
  EXPECT_THAT(Linear::Create(weight, at::Tensor(), Quantization::kNone, {32, 32}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace attribution::engine
