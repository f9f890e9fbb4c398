// SPDX-License-Identifier: Apache-2.0
// int8 / nf4 round trips against the numpy reference implementation in tools/make_test_models.py,
// autograd through quantized linears, and quantized models end to end.
#include "engine/model/quantization.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <iostream>

#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;
using ::testing::HasSubstr;

at::Tensor ReferenceTensor(const std::string& name) {
  auto file = SafetensorsFile::Open(TestModelsDir() + "/quantization.safetensors");
  EXPECT_THAT(file, IsOk());
  return (*file)->View(*(*file)->Find(name)).clone();
}

class RoundTrip : public ::testing::TestWithParam<Quantization> {};

TEST_P(RoundTrip, MatchesReferenceImplementation) {
  at::Tensor weight = ReferenceTensor("weight");
  auto quantized = Quantize(weight, GetParam());
  ASSERT_THAT(quantized, IsOk());
  at::Tensor ours = Dequantize(*quantized, at::kFloat);
  at::Tensor expected = ReferenceTensor(QuantizationName(GetParam()));
  // Same scheme, so the same codes: only float rounding of the final product may differ.
  EXPECT_TRUE(at::allclose(ours, expected, /*rtol=*/1e-6, /*atol=*/1e-6))
      << "max diff " << (ours - expected).abs().max().item<double>();
  EXPECT_TRUE(at::equal(ours[5], at::zeros({weight.size(1)})));  // the all-zero row stays zero
}

TEST_P(RoundTrip, ErrorIsBoundedByTheScheme) {
  at::Tensor weight = ReferenceTensor("weight");
  at::Tensor ours = Dequantize(*Quantize(weight, GetParam()), at::kFloat);
  at::Tensor error = (ours - weight).abs();
  if (GetParam() == Quantization::kInt8) {
    // Half a quantization step of each row: absmax / 127 / 2.
    at::Tensor half_step = weight.abs().amax(1, true) / 254.0;
    EXPECT_TRUE((error <= half_step + 1e-6).all().item<bool>());
  } else {
    // Half the widest gap between NF4 codes (0.3038 / 2), in units of each block's absmax (plus float
    // rounding).
    at::Tensor absmax = weight.reshape({-1, 64}).abs().amax(1, true);
    at::Tensor bound = (absmax * (0.3039 / 2 + 1e-3)).expand({-1, 64}).reshape(weight.sizes());
    EXPECT_TRUE((error <= bound).all().item<bool>());
  }
}

TEST_P(RoundTrip, ResidentBytesShrink) {
  at::Tensor weight = ReferenceTensor("weight");
  const double bf16_bytes = 2.0 * weight.numel();
  const double ratio = Quantize(weight, GetParam())->ResidentBytes() / bf16_bytes;
  // int8: 8 bits + a float32 per row of 256; nf4: 4 bits + a float32 absmax per 64 weights (+ the
  // 64-byte code book).
  const double code_book = GetParam() == Quantization::kInt8 ? 0 : 64.0 / bf16_bytes;
  EXPECT_NEAR(ratio, GetParam() == Quantization::kInt8 ? 0.5 + 4.0 / 512 : 4.5 / 16 + code_book, 1e-9);
}

TEST_P(RoundTrip, LinearBackwardUsesDequantizedWeight) {
  at::Tensor weight = ReferenceTensor("weight");
  QuantizedWeight quantized = *Quantize(weight, GetParam());
  at::Tensor bias = at::randn({weight.size(0)});
  at::Tensor x = at::randn({3, 5, weight.size(1)}).requires_grad_(true);
  at::Tensor y = QuantizedLinear(x, quantized, bias);
  at::Tensor grad_out = at::randn_like(y);
  at::Tensor grad = torch::autograd::grad({y}, {x}, {grad_out})[0];
  at::Tensor dense = Dequantize(quantized, at::kFloat);
  EXPECT_LT(ScaledError(y, at::linear(x.detach(), dense, bias)), 1e-5);
  EXPECT_LT(ScaledError(grad, at::matmul(grad_out, dense)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Schemes, RoundTrip, ::testing::Values(Quantization::kInt8, Quantization::kNf4),
                         [](const auto& info) { return std::string(QuantizationName(info.param)); });

TEST(Quantize, RejectsWeightsNotInWholeBlocks) {
  EXPECT_THAT(Quantize(at::zeros({3, 10}), Quantization::kNf4), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Quantize(at::zeros({8}), Quantization::kInt8), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseQuantization("fp8"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fp8")));
}

// A Llama whose linears dominate its size, as in real Llamas: quantized models stay close to the
// float model, keep gradients flowing, and shrink.
class QuantizedModel : public ::testing::TestWithParam<Quantization> {};

TEST_P(QuantizedModel, StaysCloseToFloatModelAndShrinks) {
  const std::string dir = TestModelsDir() + "/llama-wide";
  auto dense = CausalLM::Load(dir, {.dtype = at::kBFloat16});
  auto quantized = CausalLM::Load(dir, {.dtype = at::kBFloat16, .quantization = GetParam()});
  ASSERT_THAT(dense, IsOk());
  ASSERT_THAT(quantized, IsOk());
  const double ratio = static_cast<double>((*quantized)->ResidentWeightBytes()) / (*dense)->ResidentWeightBytes();
  std::cout << "[ quant    ] " << QuantizationName(GetParam()) << " resident bytes / bf16 = " << ratio << "\n";
  EXPECT_LT(ratio, GetParam() == Quantization::kNf4 ? 0.30 : 0.55);

  ForwardBatch batch{.inputs_embeds = *(*dense)->Embed(at::tensor({5, 9, 200, 31, 7, 77}, at::kLong).unsqueeze(0))};
  RowObjective objective{.positions = {3, 4, 5}, .tokens = {10, 11, 12}};
  auto exact = (*dense)->ObjectiveGradients(batch, {objective});
  auto approx = (*quantized)->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(exact, IsOk());
  ASSERT_THAT(approx, IsOk());
  const double cosine =
      at::cosine_similarity(exact->gradients.flatten().to(at::kFloat), approx->gradients.flatten().to(at::kFloat), 0)
          .item<double>();
  std::cout << "[ quant    ] " << QuantizationName(GetParam()) << " objective " << approx->values[0].item<double>()
            << " vs " << exact->values[0].item<double>() << ", gradient cosine " << cosine << "\n";
  EXPECT_GT(cosine, GetParam() == Quantization::kNf4 ? 0.9 : 0.99);
}

INSTANTIATE_TEST_SUITE_P(Schemes, QuantizedModel, ::testing::Values(Quantization::kInt8, Quantization::kNf4),
                         [](const auto& info) { return std::string(QuantizationName(info.param)); });

// The llama test model's k_proj holds 2,048 weights: half a block of 4,096. Quantize knows no tensor names;
// the loader's refusal says which weight.
TEST(QuantizedLoad, WeightOfPartialBlocksIsNamed) {
  EXPECT_THAT(CausalLM::Load(TestModelsDir() + "/llama",
                             {.quantization = Quantization::kNf4, .four_bit = {.block_size = 4096}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"model.layers.0.self_attn.k_proj.weight\": quantize nf4: weight of 2048 elements "
                                 "is not a multiple of the block size 4096")));
}

// Falcon's query_key_value is reordered by head slot before it is quantized: a 4-bit block spanning two slots
// (a head's 16 rows of 64 inputs are 1,024 weights) would hold other weights than bitsandbytes' block and
// its codes would differ (log-probs off by 1.5e-2), so such a block size is refused naming the tensor.
TEST(QuantizedLoad, BlocksSpanningFalconHeadSlotsAreRefused) {
  EXPECT_THAT(CausalLM::Load(TestModelsDir() + "/falcon-grouped",
                             {.quantization = Quantization::kNf4, .four_bit = {.block_size = 2048}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"transformer.h.0.self_attention.query_key_value.weight\": a head's rows hold "
                                 "1024 weights, not whole 4-bit blocks of 2048")));
  EXPECT_THAT(CausalLM::Load(TestModelsDir() + "/falcon-grouped",
                             {.quantization = Quantization::kNf4, .four_bit = {.block_size = 1024}}),
              IsOk());
}

// Every architecture loaded quantized against transformers on the same model with each decoder linear
// round-tripped through the scheme on its own: fusing q/k/v and gate/up (GQA widths in llama and
// mistral, q/k/v biases in qwen2, GPT-2's stored c_attn, Falcon's reordered query_key_value, each Mixtral
// expert) must not move a scale or a block.
struct ArchScheme {
  std::string arch;
  Quantization quantization;
};

void PrintTo(const ArchScheme& c, std::ostream* os) { *os << c.arch << "/" << QuantizationName(c.quantization); }

class QuantizedParity : public ::testing::TestWithParam<ArchScheme> {};

TEST_P(QuantizedParity, LogitsAndInputGradientMatchTransformersOnRoundTrippedWeights) {
  const std::string scheme = QuantizationName(GetParam().quantization);
  auto model = CausalLM::Load(TestModelsDir() + "/" + GetParam().arch, {.quantization = GetParam().quantization});
  ASSERT_THAT(model, IsOk());
  const test_support::Reference reference = test_support::LoadReference(GetParam().arch, scheme);
  const auto rows = reference.spec["rows"].get<std::vector<std::vector<int64_t>>>();
  {
    c10::InferenceMode inference;
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto length = static_cast<int64_t>(rows[r].size());
      auto hidden = (*model)->Hidden({.input_ids = at::tensor(rows[r], at::kLong).unsqueeze(0)});
      ASSERT_THAT(hidden, IsOk());
      std::vector<int64_t> positions(length);
      for (int64_t p = 0; p < length; ++p) positions[p] = p;
      at::Tensor logits = (*model)->LogitsAt(*hidden, std::vector<int64_t>(length, 0), positions);
      EXPECT_LT(ScaledError(logits, reference.Tensor("logits_" + std::to_string(r))), 1e-4) << "row " << r;
    }
  }
  ForwardBatch batch{.inputs_embeds = *(*model)->Embed(at::tensor(rows[0], at::kLong).unsqueeze(0))};
  RowObjective objective{.positions = reference.spec["objective_positions"].get<std::vector<int64_t>>(),
                         .tokens = reference.spec["objective_tokens"].get<std::vector<int64_t>>()};
  auto result = (*model)->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(result, IsOk());
  EXPECT_NEAR(result->values[0].item<double>(), reference.Tensor("objective")[0].item<double>(), 1e-4);
  EXPECT_LT(ScaledError(result->gradients[0], reference.Tensor("gradient")), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, QuantizedParity, ::testing::ValuesIn([] {
                           std::vector<ArchScheme> cases;
                           for (const char* arch : {"llama", "mistral", "qwen2", "gpt2", "falcon", "falcon-grouped",
                                                    "falcon-sequential", "mixtral"}) {
                             for (Quantization q : {Quantization::kInt8, Quantization::kNf4})
                               cases.push_back({arch, q});
                           }
                           return cases;
                         }()),
                         [](const auto& info) {
                           std::string name = info.param.arch + "_" + QuantizationName(info.param.quantization);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace attribution::engine
