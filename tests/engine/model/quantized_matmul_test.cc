// SPDX-License-Identifier: Apache-2.0
// The CUDA kernels that dequantize inside the product (label gpu; skipped without a CUDA device, so CI
// only compiles them): against the closed form, the dequantized weight times the input in float64 on
// the CPU, for every weight format, compute dtype and side, on shapes that leave every tile ragged; then
// QuantizedLinear's autograd and a quantized model's logits on the device against the CPU run.
#include "engine/model/quantized_matmul.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <string>

#include "engine/model/causal_lm.h"
#include "tests/testing/cuda_device.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::HasCudaDevice;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::TestModelsDir;

QuantizedWeight ToDevice(const QuantizedWeight& weight, const at::Device& device) {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  QuantizedWeight out = weight;
  out.codes = move(weight.codes);
  out.scales = move(weight.scales);
  out.code_book = move(weight.code_book);
  if (weight.nested) {
    out.nested = NestedAbsmax{.codes = move(weight.nested->codes),
                              .code_book = move(weight.nested->code_book),
                              .scales = move(weight.nested->scales),
                              .offsets = move(weight.nested->offsets)};
  }
  return out;
}

struct Format {
  Quantization kind;
  bool double_quantization;
};

struct Shape {
  int64_t rows, in_features, out_features;
};

struct Case {
  Format format;
  at::ScalarType dtype;
  Shape shape;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << QuantizationName(c.format.kind) << (c.format.double_quantization ? "+nested/" : "/") << c.dtype << "/"
      << c.shape.rows << "x" << c.shape.in_features << "->" << c.shape.out_features;
}

// Accumulation is float32 in both kernels; the output is rounded once to the compute dtype.
double Tolerance(at::ScalarType dtype) {
  if (dtype == at::kFloat) return 1e-5;
  return dtype == at::kBFloat16 ? 1e-2 : 2e-3;
}

class FusedMatmul : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(CudaQuantizedMatmulCompiled()) << "a CUDA device, but a build without the kernels";
  }
};

TEST_P(FusedMatmul, ForwardAndInputGradientMatchDequantizedProductInFloat64) {
  const Case& c = GetParam();
  at::manual_seed(7);
  const at::Tensor weight = at::randn({c.shape.out_features, c.shape.in_features});
  auto quantized =
      Quantize(weight, c.format.kind, {.block_size = 64, .double_quantization = c.format.double_quantization});
  ASSERT_THAT(quantized, IsOk());
  const at::Tensor dense = Dequantize(*quantized, c.dtype).to(at::kDouble);  // [out, in]
  const QuantizedWeight on_device = ToDevice(*quantized, at::Device("cuda:0"));

  for (MatmulSide side : {MatmulSide::kForward, MatmulSide::kInputGradient}) {
    const bool forward = side == MatmulSide::kForward;
    const int64_t width = forward ? c.shape.in_features : c.shape.out_features;
    // A leading batch dimension: the kernel sees [rows, width] after the wrapper's reshape.
    const at::Tensor x = at::randn({1, c.shape.rows, width}).to(c.dtype);
    const at::Tensor expected =
        forward ? at::matmul(x.to(at::kDouble), dense.t()) : at::matmul(x.to(at::kDouble), dense);
    std::optional<at::Tensor> ours = FusedQuantizedMatmul(x.to("cuda:0"), on_device, side);
    ASSERT_TRUE(ours.has_value());
    EXPECT_EQ(ours->scalar_type(), c.dtype);
    EXPECT_EQ(ours->sizes(), expected.sizes());
    EXPECT_LT(ScaledError(ours->to(at::kCPU).to(at::kFloat), expected.to(at::kFloat)), Tolerance(c.dtype))
        << (forward ? "forward" : "input gradient");
  }
}

// An identity input reads the dequantized weight back through each product: every output is one
// weight element times one, exact in float32 accumulation, so the kernel's dequantization must equal
// Dequantize's bit for bit (scale rounding to the dtype included), not only within the tolerance.
TEST_P(FusedMatmul, IdentityInputGivesTheDequantizedWeightExactly) {
  const Case& c = GetParam();
  at::manual_seed(5);
  auto quantized = Quantize(at::randn({c.shape.out_features, c.shape.in_features}), c.format.kind,
                            {.block_size = 64, .double_quantization = c.format.double_quantization});
  ASSERT_THAT(quantized, IsOk());
  const at::Tensor dense = Dequantize(*quantized, c.dtype);  // [out, in]
  const QuantizedWeight on_device = ToDevice(*quantized, at::Device("cuda:0"));
  const auto cuda = at::TensorOptions().dtype(c.dtype).device(at::Device("cuda:0"));
  auto forward = FusedQuantizedMatmul(at::eye(c.shape.in_features, cuda), on_device, MatmulSide::kForward);
  auto input_gradient =
      FusedQuantizedMatmul(at::eye(c.shape.out_features, cuda), on_device, MatmulSide::kInputGradient);
  ASSERT_TRUE(forward.has_value() && input_gradient.has_value());
  EXPECT_TRUE(at::equal(forward->to(at::kCPU), dense.t().contiguous()));
  EXPECT_TRUE(at::equal(input_gradient->to(at::kCPU), dense));
}

// A transposed (non-contiguous) input and an odd width, whose code bytes straddle two weight rows.
TEST(FusedQuantizedMatmul, NonContiguousInputAndOddWidth) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(9);
  auto quantized = Quantize(at::randn({64, 129}), Quantization::kNf4);
  ASSERT_THAT(quantized, IsOk());
  const at::Tensor dense = Dequantize(*quantized, at::kFloat).to(at::kDouble);
  const at::Tensor x = at::randn({129, 7}).t();  // [7, 129], column-major
  auto ours = FusedQuantizedMatmul(x.to("cuda:0"), ToDevice(*quantized, at::Device("cuda:0")), MatmulSide::kForward);
  ASSERT_TRUE(ours.has_value());
  EXPECT_LT(ScaledError(ours->to(at::kCPU), at::matmul(x.to(at::kDouble), dense.t()).to(at::kFloat)), 1e-5);
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (Format format : {Format{Quantization::kInt8, false}, Format{Quantization::kNf4, false},
                        Format{Quantization::kFp4, false}, Format{Quantization::kNf4, true}}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      // One row (decode), rows and widths that are not multiples of the 64 x 64 x 32 tile.
      for (Shape shape : {Shape{1, 192, 130}, Shape{77, 200, 96}, Shape{130, 64, 200}}) {
        cases.push_back({format, dtype, shape});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(EveryFormatDtypeAndShape, FusedMatmul, ::testing::ValuesIn(AllCases()));

// 15 rows take the fused kernel, 600 the dequantized copy (QuantizedLinear switches above a few hundred).
TEST(FusedQuantizedLinear, AutogradOnTheDeviceEqualsTheCpu) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(3);
  auto quantized = Quantize(at::randn({96, 200}), Quantization::kNf4);
  ASSERT_THAT(quantized, IsOk());
  const QuantizedWeight on_device = ToDevice(*quantized, at::Device("cuda:0"));
  for (int64_t batch : {3, 120}) {
    SCOPED_TRACE(batch * 5);
    const at::Tensor bias = at::randn({96}), x = at::randn({batch, 5, 200}), grad = at::randn({batch, 5, 96});

    auto run = [&](const QuantizedWeight& weight, const at::Device& device) {
      at::Tensor input = x.to(device).requires_grad_(true);
      at::Tensor y = QuantizedLinear(input, weight, bias.to(device));
      const at::Tensor dx = torch::autograd::grad({y}, {input}, {grad.to(device)})[0];
      return std::pair{y.detach().to(at::kCPU), dx.to(at::kCPU)};
    };
    const auto [cpu_y, cpu_dx] = run(*quantized, at::kCPU);
    const auto [gpu_y, gpu_dx] = run(on_device, at::Device("cuda:0"));
    EXPECT_LT(ScaledError(gpu_y, cpu_y), 1e-5);
    EXPECT_LT(ScaledError(gpu_dx, cpu_dx), 1e-5);
  }
}

// Every projection of a quantized model goes through the kernels on the device.
TEST(FusedQuantizedLinear, QuantizedModelLogitsOnTheDeviceEqualTheCpuRun) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  for (Quantization kind : {Quantization::kInt8, Quantization::kNf4, Quantization::kFp4}) {
    auto logits = [&](const std::string& device) {
      auto model = CausalLM::Load(TestModelsDir() + "/llama", {.device = device, .quantization = kind});
      EXPECT_THAT(model, IsOk());
      c10::InferenceMode inference;
      ForwardBatch batch{.input_ids =
                             at::tensor(std::vector<int64_t>{1, 17, 42, 99, 7, 23, 5}, at::kLong).unsqueeze(0)};
      auto hidden = (*model)->Hidden(batch);
      EXPECT_THAT(hidden, IsOk());
      return (*model)->LogitsAt(*hidden, {0, 0, 0}, {4, 5, 6}).to(at::kCPU).to(at::kFloat);
    };
    EXPECT_LT(ScaledError(logits("cuda:0"), logits("cpu")), 1e-4) << QuantizationName(kind);
  }
}

}  // namespace
}  // namespace attribution::engine
