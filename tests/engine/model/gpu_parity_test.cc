// SPDX-License-Identifier: Apache-2.0
// On a CUDA device (label gpu; skipped where there is none, so CI compiles it against the CUDA
// LibTorch but cannot run it): our forward pass on cuda:0 against transformers' reference logits for
// every architecture in fp32 / bf16 / fp16, and attribution through the batching engine on the GPU
// against the same request on the CPU.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/attribution/attributor.h"
#include "tests/testing/cuda_device.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::HasCudaDevice;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::LoadReference;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::TestModelsDir;

struct Case {
  std::string arch;
  std::string dtype;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << "/" << c.dtype; }

class GpuParity : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(GpuParity, LogitsOnTheDeviceMatchTransformers) {
  LoadOptions options{.dtype = *ParseDtype(GetParam().dtype), .device = "cuda:0"};
  auto model = CausalLM::Load(TestModelsDir() + "/" + GetParam().arch, options);
  ASSERT_THAT(model, IsOk());
  const test_support::Reference reference = LoadReference(GetParam().arch, GetParam().dtype);
  const auto rows = reference.spec["rows"].get<std::vector<std::vector<int64_t>>>();
  c10::InferenceMode inference;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto length = static_cast<int64_t>(rows[r].size());
    ForwardBatch batch{.input_ids = at::tensor(rows[r], at::kLong).unsqueeze(0)};  // the model moves it
    auto hidden = (*model)->Hidden(batch);
    ASSERT_THAT(hidden, IsOk());
    std::vector<int64_t> row_of(length, 0), positions(length);
    for (int64_t p = 0; p < length; ++p) positions[p] = p;
    at::Tensor logits = (*model)->LogitsAt(*hidden, row_of, positions).to(at::kCPU).to(at::kFloat);
    // The CPU suite's tolerances: fp32 1e-4 of the logit scale, half precisions 3e-2.
    EXPECT_LT(ScaledError(logits, reference.Tensor("logits_" + std::to_string(r))),
              GetParam().dtype == "float32" ? 1e-4 : 3e-2)
        << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, GpuParity,
                         ::testing::Values(Case{"llama", "float32"}, Case{"llama", "bfloat16"},
                                           Case{"llama", "float16"}, Case{"mistral", "float32"},
                                           Case{"mistral", "bfloat16"}, Case{"qwen2", "float32"},
                                           Case{"qwen2", "bfloat16"}, Case{"gpt2", "float32"}, Case{"gpt2", "bfloat16"},
                                           Case{"falcon", "float32"}, Case{"falcon", "bfloat16"},
                                           Case{"falcon-grouped", "bfloat16"}, Case{"mixtral", "float32"},
                                           Case{"mixtral", "bfloat16"}),
                         [](const auto& info) {
                           std::string name = info.param.arch + "_" + info.param.dtype;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Batches pause on the CPU only today (ModelExecutor::SetPausePoint), and the engine abandons a batch by
// throwing from a pause point. For when CUDA batches pause too: there the backward runs on autograd's
// device thread, which must hand the exception back to the caller as an error status, after which the
// model's gradients are exact again.
TEST(GpuAttribution, APausePointThatThrowsInTheBackwardStopsTheGradientsWithAnError) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<CausalLM> model = std::move(*CausalLM::Load(TestModelsDir() + "/llama", {.device = "cuda:0"}));
  ForwardBatch batch{.inputs_embeds = *model->Embed(
                         at::tensor(std::vector<int64_t>{1, 17, 42, 99}, at::kLong).unsqueeze(0).to(model->device()))};
  const RowObjective objective{.positions = {3}, .tokens = {11}};
  auto plain = model->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(plain, IsOk());
  // Llama pauses as each layer begins, between its attention and MLP, and before the final norm.
  const int backward_first_pause = 2 * static_cast<int>(model->config().num_layers) + 2;
  int pauses = 0;
  ForwardBatch abandoned = batch;
  abandoned.pause_point = [&] {
    if (++pauses == backward_first_pause) throw std::runtime_error("batch abandoned");
  };
  EXPECT_FALSE(model->ObjectiveGradients(abandoned, {objective}).ok());
  EXPECT_EQ(pauses, backward_first_pause);
  auto after = model->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(after, IsOk());
  EXPECT_TRUE(at::equal(after->gradients, plain->gradients));
}

// The same attribution requests through an engine on each device.
TEST(GpuAttribution, EveryMethodOnTheDeviceEqualsTheCpuRun) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  auto attribute = [](const std::string& device, AttributionRequest request) {
    std::shared_ptr<const CausalLM> model = std::move(*CausalLM::Load(TestModelsDir() + "/llama", {.device = device}));
    auto engine = std::move(*BatchingEngine::Create(MakeModelExecutor(model), {}));
    Attributor attributor(model, engine.get());
    return attributor.AttributeAndWait(request);
  };
  for (AttributionMethod method :
       {AttributionMethod::kIntegratedGradients, AttributionMethod::kGradientShap, AttributionMethod::kSaliency,
        AttributionMethod::kInputXGradient, AttributionMethod::kFeatureAblation,
        AttributionMethod::kShapleyValueSampling, AttributionMethod::kLime, AttributionMethod::kKernelShap,
        AttributionMethod::kAttnLrp, AttributionMethod::kCpLrp}) {
    AttributionRequest request{.prompt_ids = {1, 17, 42, 99, 7, 23, 5},
                               .target_ids = {11, 12},
                               .method = method,
                               .n_steps = 16,
                               .n_samples = 8,
                               .want_token_matrix = true,
                               .want_faithfulness = true};
    auto cpu = attribute("cpu", request);
    auto gpu = attribute("cuda:0", request);
    ASSERT_THAT(cpu, IsOk()) << AttributionMethodName(method);
    ASSERT_THAT(gpu, IsOk()) << AttributionMethodName(method);
    double scale = 1e-6, error = 0;
    for (size_t f = 0; f < cpu->sequence.size(); ++f) {
      scale = std::max(scale, std::abs(cpu->sequence[f]));
      error = std::max(error, std::abs(cpu->sequence[f] - gpu->sequence[f]));
    }
    // fp32 on both; cuBLAS and the CPU kernels sum in different orders (TF32 is off by default).
    EXPECT_LT(error / scale, 1e-3) << AttributionMethodName(method);
    EXPECT_NEAR(gpu->faithfulness->comprehensiveness_aopc, cpu->faithfulness->comprehensiveness_aopc, 1e-4)
        << AttributionMethodName(method);
  }
}

}  // namespace
}  // namespace attribution::engine
