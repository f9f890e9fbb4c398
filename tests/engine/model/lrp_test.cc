// SPDX-License-Identifier: Apache-2.0
// The LRP rules inside the forward pass (ForwardBatch.rules) on the architecture models: relevance at
// the residual stream after each layer equals LXT's (tools/lxt_reference.py), CP-LRP conserves the
// objective where nothing absorbs relevance (no biases), rows batch without changing, and half
// precision stays finite and close to float32.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;

const nlohmann::json& Reference() {
  static const nlohmann::json* reference = [] {
    std::ifstream in(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/lxt_reference.json"));
    return new nlohmann::json(nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false));
  }();
  return *reference;
}

std::unique_ptr<CausalLM> Load(const std::string& name, at::ScalarType dtype = at::kFloat) {
  auto model = CausalLM::Load(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/", name), {.dtype = dtype});
  EXPECT_THAT(model, IsOk());
  return model.ok() ? std::move(*model) : nullptr;
}

// The summed logit of `target` after `prompt`, the objective of the LXT reference.
RowObjective TargetLogits(size_t prompt_length, const std::vector<int64_t>& target) {
  RowObjective objective{.tokens = target, .quantity = TokenQuantity::kLogit};
  for (size_t j = 0; j < target.size(); ++j) objective.positions.push_back(static_cast<int64_t>(prompt_length + j) - 1);
  return objective;
}

struct Relevance {
  double objective = 0;
  at::Tensor gradient;                   // [S, hidden] float64: dObjective / d(input embeddings)
  at::Tensor per_token;                  // [S] float64: Σ_hidden embedding · gradient
  std::vector<double> after_each_layer;  // Σ over positions and hidden of h_l · dObjective/dh_l
};

// One row: prompt + target through `model` under `rules`, the objective seeded with 1.
Relevance Propagate(const CausalLM& model, const std::vector<int64_t>& prompt, const std::vector<int64_t>& target,
                    PropagationRules rules) {
  std::vector<int64_t> ids = prompt;
  ids.insert(ids.end(), target.begin(), target.end());
  c10::AutoGradMode grad_mode(true);
  at::Tensor embeds = model.Embed(at::tensor(ids, at::kLong).unsqueeze(0))->detach().requires_grad_(true);
  std::vector<at::Tensor> layers;
  ActivationHooks hooks{.after_layer = [&](int64_t, const at::Tensor& residual) {
    layers.push_back(residual);
    return at::Tensor();
  }};
  ForwardBatch batch{.inputs_embeds = embeds, .hooks = &hooks, .rules = rules};
  absl::StatusOr<at::Tensor> values = model.ObjectiveValues(batch, {TargetLogits(prompt.size(), target)});
  EXPECT_THAT(values, IsOk());
  std::vector<at::Tensor> wrt = layers;
  wrt.push_back(embeds);
  const std::vector<at::Tensor> grads = torch::autograd::grad({values->sum()}, wrt);
  Relevance out{.objective = values->item<double>()};
  for (size_t l = 0; l < layers.size(); ++l) {
    out.after_each_layer.push_back((layers[l] * grads[l]).sum().item<double>());
  }
  out.gradient = grads.back()[0].to(at::kDouble).detach();
  out.per_token = (embeds[0].to(at::kDouble).detach() * out.gradient).sum(-1);
  return out;
}

const char* RulesName(PropagationRules rules) { return rules == PropagationRules::kAttnLrp ? "attn_lrp" : "cp_lrp"; }

class LrpRules : public ::testing::TestWithParam<std::tuple<std::string, PropagationRules>> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(Reference().is_discarded()) << "no lxt_reference.json (ctest fixture make_lxt_reference)";
    reference_ = &Reference()["models"][name()];
    prompt_ = (*reference_)["prompt"].get<std::vector<int64_t>>();
    target_ = (*reference_)["target"].get<std::vector<int64_t>>();
  }
  const std::string& name() const { return std::get<0>(GetParam()); }
  PropagationRules rules() const { return std::get<1>(GetParam()); }

  const nlohmann::json* reference_ = nullptr;
  std::vector<int64_t> prompt_, target_;
};

// Where a rule were placed wrong, the layer sums show from which layer on (float32: within 1e-4 of the
// largest; observed below 1e-5).
TEST_P(LrpRules, RelevanceAfterEachLayerEqualsLxt) {
  std::unique_ptr<CausalLM> model = Load(name());
  ASSERT_NE(model, nullptr);
  const Relevance ours = Propagate(*model, prompt_, target_, rules());
  const auto expected = (*reference_)[RulesName(rules())]["layer_relevance"].get<std::vector<double>>();
  ASSERT_EQ(ours.after_each_layer.size(), expected.size());
  double scale = 0;
  for (double v : expected) scale = std::max(scale, std::abs(v));
  for (size_t l = 0; l < expected.size(); ++l) {
    EXPECT_NEAR(ours.after_each_layer[l], expected[l], 1e-4 * scale) << "layer " << l;
  }
}

// With the rules off (plain autograd, what InputXGradient runs) the same readout is LXT's unpatched
// gradient × input: what the rules change is the backward alone.
TEST_P(LrpRules, WithoutTheRulesTheReadoutIsGradientTimesInput) {
  std::unique_ptr<CausalLM> model = Load(name());
  ASSERT_NE(model, nullptr);
  const at::Tensor ours = Propagate(*model, prompt_, target_, PropagationRules::kGradient).per_token;
  const at::Tensor expected = at::tensor((*reference_)["input_x_gradient"].get<std::vector<double>>(), at::kDouble);
  EXPECT_LT((ours - expected).abs().max().item<double>(), 1e-4 * expected.abs().max().item<double>());
  const at::Tensor lrp =
      at::tensor((*reference_)[RulesName(rules())]["relevance"].get<std::vector<double>>(), at::kDouble);
  EXPECT_GT((ours - lrp).abs().max().item<double>(), 1e-2 * lrp.abs().max().item<double>());
}

// A padded batch of rows of different lengths gives each row what it gets alone.
TEST_P(LrpRules, RowsInABatchEqualRowsAlone) {
  std::unique_ptr<CausalLM> model = Load(name());
  ASSERT_NE(model, nullptr);
  const std::vector<size_t> prompt_lengths = {prompt_.size(), prompt_.size() - 5, prompt_.size() - 2};
  const int64_t longest = static_cast<int64_t>(prompt_.size() + target_.size());
  c10::AutoGradMode grad_mode(true);
  at::Tensor embeds = at::zeros({3, longest, model->config().hidden_size});
  ForwardBatch batch{.rules = rules()};
  std::vector<RowObjective> objectives;
  std::vector<at::Tensor> alone;
  for (int64_t r = 0; r < 3; ++r) {
    std::vector<int64_t> prompt(prompt_.begin(), prompt_.begin() + static_cast<int64_t>(prompt_lengths[r]));
    std::vector<int64_t> ids = prompt;
    ids.insert(ids.end(), target_.begin(), target_.end());
    embeds[r].narrow(0, 0, static_cast<int64_t>(ids.size())).copy_((*model->Embed(at::tensor(ids).unsqueeze(0)))[0]);
    batch.lengths.push_back(static_cast<int64_t>(ids.size()));
    objectives.push_back(TargetLogits(prompt.size(), target_));
    alone.push_back(Propagate(*model, prompt, target_, rules()).per_token);
  }
  batch.inputs_embeds = embeds;
  absl::StatusOr<InputGradients> grads = model->ObjectiveGradients(batch, objectives);
  ASSERT_THAT(grads, IsOk());
  for (int64_t r = 0; r < 3; ++r) {
    const at::Tensor batched =
        (embeds[r] * grads->gradients[r]).sum(-1).narrow(0, 0, batch.lengths[r]).to(at::kDouble).detach();
    // float32 sums in another order over another padded shape (observed up to 1.2e-6).
    EXPECT_LT((batched - alone[r]).abs().max().item<double>(), 1e-5 * alone[r].abs().max().item<double>())
        << "row " << r;
  }
}

// bfloat16 and float16 stay finite (no NaN from a rule's quotient, no overflow) and close to float32:
// float16 within 5% of the largest relevance (observed 0.08-1.5%). bfloat16 keeps 8 bits of mantissa
// through the forward: plain gradient x input is 1.1-7.2% off on these models, LRP 0.8-2.4%, but on
// mistral 7.6% (CP-LRP) and 27% (AttnLRP, whose relevances cancel: they sum to 0.05 of a 0.8
// objective); the bar is 30%.
TEST_P(LrpRules, HalfPrecisionStaysFiniteAndCloseToFloat32) {
  std::unique_ptr<CausalLM> full = Load(name());
  ASSERT_NE(full, nullptr);
  const at::Tensor expected = Propagate(*full, prompt_, target_, rules()).per_token;
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    std::unique_ptr<CausalLM> half = Load(name(), dtype);
    ASSERT_NE(half, nullptr);
    const at::Tensor ours = Propagate(*half, prompt_, target_, rules()).per_token;
    ASSERT_TRUE(ours.isfinite().all().item<bool>());
    const double error = (ours - expected).abs().max().item<double>() / expected.abs().max().item<double>();
    std::cout << name() << " " << RulesName(rules()) << " " << c10::toString(dtype) << ": scaled error " << error
              << "\n";
    EXPECT_LT(error, dtype == at::kHalf ? 5e-2 : 3e-1);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryArchitecture, LrpRules,
                         ::testing::Combine(::testing::Values("llama", "llama3-scaled", "mistral", "qwen2", "gpt2"),
                                            ::testing::Values(PropagationRules::kAttnLrp, PropagationRules::kCpLrp)),
                         [](const auto& info) {
                           std::string name = std::get<0>(info.param) + "_" + RulesName(std::get<1>(info.param));
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Closed form: with every detached factor a constant, a network without biases is linear in its input
// embeddings, so CP-LRP's relevance sums to the objective, at every layer too (float32 rounding only).
// GPT-2 adds position embeddings inside the model: their relevance is part of the sum. Falcon's parallel
// blocks split the residual three ways; Mixtral's routing weights are constants under the LRP rules.
TEST(CpLrp, ConservesTheObjectiveWhereNoBiasAbsorbsRelevance) {
  const nlohmann::json& ids = Reference()["models"]["llama"];
  const auto prompt = ids["prompt"].get<std::vector<int64_t>>(), target = ids["target"].get<std::vector<int64_t>>();
  for (const std::string name :
       {"llama", "llama3-scaled", "mistral", "qwen2-zero-bias", "gpt2-zero-bias", "falcon-zero-bias", "mixtral"}) {
    SCOPED_TRACE(name);
    std::unique_ptr<CausalLM> model = Load(name);
    ASSERT_NE(model, nullptr);
    const Relevance r = Propagate(*model, prompt, target, PropagationRules::kCpLrp);
    double total = r.per_token.sum().item<double>();
    if (name == "gpt2-zero-bias") {
      auto weights =
          SafetensorsFile::Open(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/", name, "/model.safetensors"));
      ASSERT_THAT(weights, IsOk());
      const TensorRecord* positions = (*weights)->Find("transformer.wpe.weight");
      ASSERT_NE(positions, nullptr);
      const at::Tensor used = (*weights)->View(*positions).narrow(0, 0, r.gradient.size(0)).to(at::kDouble);
      const double position_relevance = (used * r.gradient).sum().item<double>();
      EXPECT_GT(std::abs(position_relevance), 1e-3);  // so the check below includes it
      total += position_relevance;
    }
    const double tolerance = 1e-5 * std::max(1.0, std::abs(r.objective));
    EXPECT_NEAR(total, r.objective, tolerance);
    if (name != "gpt2-zero-bias") {  // there the layers' sums also hold the position embeddings' share
      for (double layer : r.after_each_layer) EXPECT_NEAR(layer, r.objective, tolerance);
    }
  }
}

// Biases do absorb relevance: with them the sum misses the objective (so the test above can fail).
TEST(CpLrp, BiasesAbsorbRelevance) {
  const nlohmann::json& ids = Reference()["models"]["llama"];
  std::unique_ptr<CausalLM> model = Load("qwen2");
  ASSERT_NE(model, nullptr);
  const Relevance r = Propagate(*model, ids["prompt"].get<std::vector<int64_t>>(),
                                ids["target"].get<std::vector<int64_t>>(), PropagationRules::kCpLrp);
  EXPECT_GT(std::abs(r.per_token.sum().item<double>() - r.objective), 1e-2 * std::abs(r.objective));
}

}  // namespace
}  // namespace attribution::engine
