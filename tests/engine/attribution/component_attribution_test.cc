// SPDX-License-Identifier: Apache-2.0
// Component attribution through the batching engine on random models, checked by what must hold
// whatever the weights: patching where the prompts agree changes nothing, patching the embedding where
// they differ turns one run into the other, layer integrated gradients sum to the patching effect with
// an error that shrinks with steps, one left Riemann step is attribution patching, and pairs batched
// together equal pairs alone. The numbers against transformers and TransformerLens are in
// tests/e2e/components_e2e_test.cc.
#include "engine/attribution/component_attribution.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

// Clean and corrupted differ at position 2 only.
const PromptPair kPair{.clean_ids = {11, 42, 97, 150, 23, 64, 201}, .corrupted_ids = {11, 42, 180, 150, 23, 64, 201}};
const PromptPair kOtherPair{.clean_ids = {5, 77, 130, 99, 18, 240, 61},
                            .corrupted_ids = {5, 77, 130, 99, 250, 240, 61}};

class ComponentAttributionTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    auto model = CausalLM::Load(TestModelsDir() + "/" + GetParam(), {});
    ASSERT_THAT(model.status(), IsOk());
    model_ = std::move(*model);
    engine_ = std::move(*BatchingEngine::Create(MakeModelExecutor(model_), {.max_queue_delay = absl::ZeroDuration()}));
  }
  absl::StatusOr<ComponentResult> Run(ComponentRequest request, ComponentLimits limits = {}) {
    std::promise<absl::StatusOr<ComponentResult>> promise;
    AttributeComponents(*engine_, engine_->NewRequest(), model_->config(), limits, std::move(request),
                        [&promise](absl::StatusOr<ComponentResult> r) { promise.set_value(std::move(r)); });
    return promise.get_future().get();
  }
  static ComponentRequest Request(ComponentMethod method, std::vector<ComponentSite> sites) {
    return {.pairs = {kPair}, .answer = 17, .wrong_answer = 29, .method = method, .sites = std::move(sites)};
  }
  const ModelConfig& config() const { return model_->config(); }

  std::shared_ptr<CausalLM> model_;
  std::unique_ptr<BatchingEngine> engine_;
};

TEST_P(ComponentAttributionTest, PatchingTheEmbeddingWhereThePromptsDifferTurnsOneRunIntoTheOther) {
  for (PatchDirection direction : {PatchDirection::kDenoising, PatchDirection::kNoising}) {
    ComponentRequest request = Request(ComponentMethod::kActivationPatching,
                                       {ComponentSite::kResidPre, ComponentSite::kAttnOut, ComponentSite::kMlpOut});
    request.direction = direction;
    absl::StatusOr<ComponentResult> result = Run(request);
    ASSERT_THAT(result.status(), IsOk());
    const PairComponents& pair = result->pairs[0];
    const double full = direction == PatchDirection::kDenoising ? pair.clean_metric - pair.corrupted_metric
                                                                : pair.corrupted_metric - pair.clean_metric;
    ASSERT_GT(std::abs(full), 1e-3);
    const ComponentGrid& resid = result->grids[0];
    ASSERT_EQ(resid.shape, (std::vector<int64_t>{config().num_layers, 7}));
    EXPECT_NEAR(resid.values[2], full, 1e-5 * std::abs(full));
    for (const ComponentGrid& grid : result->grids) {
      // Nothing differs before position 2 (causal attention): each patch there is its own value.
      for (int64_t layer = 0; layer < config().num_layers; ++layer) {
        for (int64_t p = 0; p < 2; ++p) EXPECT_EQ(grid.values[layer * 7 + p], 0.0) << layer << ", " << p;
      }
    }
  }
}

TEST_P(ComponentAttributionTest, LayerIntegratedGradientsSumToThePatchingEffectBetterWithMoreSteps) {
  ComponentRequest patching = Request(ComponentMethod::kActivationPatching, {ComponentSite::kHeads});
  patching.direction = PatchDirection::kNoising;
  absl::StatusOr<ComponentResult> effect = Run(patching);
  ASSERT_THAT(effect.status(), IsOk());
  double previous_error = 0;
  for (int64_t steps : {32, 2}) {
    ComponentRequest lig = patching;
    lig.method = ComponentMethod::kLayerIntegratedGradients;
    lig.n_steps = steps;
    absl::StatusOr<ComponentResult> integrated = Run(lig);
    ASSERT_THAT(integrated.status(), IsOk());
    const ComponentGrid& grid = integrated->grids[0];
    ASSERT_EQ(grid.shape, (std::vector<int64_t>{config().num_layers, config().num_heads}));
    double error = 0, scale = 0;
    for (size_t i = 0; i < grid.values.size(); ++i) {
      const double patched = effect->grids[0].values[i];
      EXPECT_NEAR(grid.convergence_deltas[i], grid.values[i] - patched, 1e-6 * (1 + std::abs(patched)));
      error = std::max(error, std::abs(grid.values[i] - patched));
      scale = std::max(scale, std::abs(patched));
    }
    ASSERT_GT(scale, 1e-4);
    if (steps == 32) {
      EXPECT_LT(error, 1e-4 * scale);
    } else {
      EXPECT_GT(error, previous_error) << "2 steps were as close as 32";
    }
    previous_error = error;
  }
}

TEST_P(ComponentAttributionTest, OneLeftRiemannStepIsAttributionPatching) {
  // Both read d metric / d activation at the run's own value, one through d / d alpha of a patched
  // row, the other through every site's gradient in one backward.
  auto expect_equal = [this](ComponentRequest atp) {
    ComponentRequest step = atp;
    step.method = ComponentMethod::kLayerIntegratedGradients;
    step.rule = IntegrationRule::kRiemannLeft;
    step.n_steps = 1;
    absl::StatusOr<ComponentResult> estimated = Run(atp), stepped = Run(step);
    ASSERT_THAT(estimated.status(), IsOk());
    ASSERT_THAT(stepped.status(), IsOk());
    for (size_t g = 0; g < atp.sites.size(); ++g) {
      const std::vector<double>& a = estimated->grids[g].values;
      const std::vector<double>& b = stepped->grids[g].values;
      ASSERT_EQ(a.size(), b.size());
      double scale = 0;
      for (double v : b) scale = std::max(scale, std::abs(v));
      ASSERT_GT(scale, 0);
      for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * scale) << g << ", " << i;
    }
  };
  for (ComponentGranularity granularity : {ComponentGranularity::kLayerHead, ComponentGranularity::kLayerPosition,
                                           ComponentGranularity::kLayerPositionHead}) {
    for (PatchDirection direction : {PatchDirection::kDenoising, PatchDirection::kNoising}) {
      SCOPED_TRACE(static_cast<int>(granularity) * 2 + static_cast<int>(direction));
      ComponentRequest atp = Request(ComponentMethod::kAttributionPatching, {ComponentSite::kHeads});
      atp.granularity = granularity;
      atp.direction = direction;
      atp.metric = ComponentMetric::kProbDifference;
      expect_equal(atp);
    }
  }
  expect_equal(Request(ComponentMethod::kAttributionPatching,
                       {ComponentSite::kResidPre, ComponentSite::kAttnOut, ComponentSite::kMlpOut}));
}

TEST_P(ComponentAttributionTest, AttributionPatchingStarOfTheLastLayersOutputsIsTheMagnitudeOfAtP) {
  // The last layer's outputs reach the metric directly: dropping an earlier layer's gradient leaves
  // theirs as it is, dropping their own layer's zeroes it, so Σ_l |AtP_l| / (L − 1) = |AtP|.
  for (PatchDirection direction : {PatchDirection::kDenoising, PatchDirection::kNoising}) {
    ComponentRequest atp =
        Request(ComponentMethod::kAttributionPatching, {ComponentSite::kAttnOut, ComponentSite::kMlpOut});
    atp.direction = direction;
    ComponentRequest star = atp;
    star.method = ComponentMethod::kAttributionPatchingStar;
    absl::StatusOr<ComponentResult> plain = Run(atp), starred = Run(star);
    ASSERT_THAT(plain.status(), IsOk());
    ASSERT_THAT(starred.status(), IsOk());
    EXPECT_EQ(starred->rows, 2 + config().num_layers);
    const int64_t length = kPair.length(), last = (config().num_layers - 1) * length;
    for (size_t g = 0; g < 2; ++g) {
      for (int64_t p = 0; p < length; ++p) {
        const double a = plain->grids[g].values[last + p];
        EXPECT_NEAR(starred->grids[g].values[last + p], std::abs(a), 1e-6 * (1 + std::abs(a))) << g << ", " << p;
      }
    }
  }
}

TEST_P(ComponentAttributionTest, PairsTogetherEqualPairsAloneAndAverage) {
  for (ComponentMethod method : {ComponentMethod::kActivationPatching, ComponentMethod::kAttributionPatching,
                                 ComponentMethod::kAttributionPatchingStar}) {
    ComponentRequest both = Request(method, {ComponentSite::kHeads, ComponentSite::kMlpOut});
    both.pairs = {kPair, kOtherPair};
    both.metric = ComponentMetric::kNormalizedLogitDifference;
    ComponentRequest first = both, second = both;
    first.pairs = {kPair};
    second.pairs = {kOtherPair};
    absl::StatusOr<ComponentResult> together = Run(both), alone0 = Run(first), alone1 = Run(second);
    ASSERT_THAT(together.status(), IsOk());
    ASSERT_THAT(alone0.status(), IsOk());
    ASSERT_THAT(alone1.status(), IsOk());
    ASSERT_EQ(together->pairs.size(), 2u);
    for (size_t g = 0; g < 2; ++g) {
      for (size_t i = 0; i < together->grids[g].values.size(); ++i) {
        const double a = alone0->grids[g].values[i], b = alone1->grids[g].values[i];
        // Batches of other rows round differently (float32); the normalisation by a small clean -
        // corrupted difference magnifies that, hence 1e-4.
        EXPECT_NEAR(together->pairs[0].grids[g].values[i], a, 1e-4 * (1 + std::abs(a)));
        EXPECT_NEAR(together->pairs[1].grids[g].values[i], b, 1e-4 * (1 + std::abs(b)));
        EXPECT_NEAR(together->grids[g].values[i], (a + b) / 2, 1e-4 * (1 + std::abs(a) + std::abs(b)));
      }
    }
  }
}

TEST_P(ComponentAttributionTest, BadRequestsNameTheField) {
  ComponentRequest request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kHeads});
  request.pairs[0].corrupted_ids.pop_back();
  EXPECT_THAT(Run(request).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("pairs[0]"), HasSubstr("clean has 7 tokens"), HasSubstr("corrupted has 6"))));
  request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kMlpOut});
  request.granularity = ComponentGranularity::kLayerHead;
  EXPECT_THAT(Run(request).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("granularity")));
  request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kHeads});
  request.wrong_answer = request.answer;
  EXPECT_THAT(Run(request).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("wrong_answer")));
  request = Request(ComponentMethod::kLayerIntegratedGradients, {ComponentSite::kHeads});
  request.granularity = ComponentGranularity::kLayerPositionHead;
  request.n_steps = 64;
  EXPECT_THAT(Run(request, {.max_rows = 1000}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("rows"), HasSubstr("n_steps"))));
  request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kHeads});
  request.pairs[0].clean_ids[0] = config().vocab_size;
  EXPECT_THAT(Run(request).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pairs[0].clean")));
  // Equal prompts leave nothing to normalise by: refused before any row runs.
  request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kHeads});
  request.pairs[0].corrupted_ids = request.pairs[0].clean_ids;
  request.metric = ComponentMetric::kNormalizedLogitDifference;
  EXPECT_THAT(Run(request).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pairs[0]: clean and corrupted are the same")));
}

// The model's executor, with every patched row's metric (and derivative along the patch) NaN: what a model that
// overflows only once a component is patched answers.
class NaNWherePatched : public BatchExecutor {
 public:
  explicit NaNWherePatched(std::unique_ptr<BatchExecutor> model) : model_(std::move(model)) {}
  absl::Status Run(RowKind kind, const std::vector<const Row*>& rows, std::vector<RowResult>& results) override {
    RETURN_IF_ERROR(model_->Run(kind, rows, results));
    for (size_t i = 0; i < rows.size(); ++i) {
      if (!rows[i]->component.patch) continue;
      results[i].value = std::numeric_limits<double>::quiet_NaN();
      results[i].alpha_gradient = std::numeric_limits<double>::quiet_NaN();
    }
    return absl::OkStatus();
  }
  int64_t CapturedBytesPerToken(bool attention_inputs) const override {
    return model_->CapturedBytesPerToken(attention_inputs);
  }

 private:
  std::unique_ptr<BatchExecutor> model_;
};

// A NaN in a grid ranked its components in index order, answered OK; it is FAILED_PRECONDITION naming the pair.
TEST_P(ComponentAttributionTest, AGridWithNaNIsRefusedNamingThePair) {
  engine_ = std::move(*BatchingEngine::Create(std::make_unique<NaNWherePatched>(MakeModelExecutor(model_)),
                                              {.max_queue_delay = absl::ZeroDuration()}));
  for (ComponentMethod method : {ComponentMethod::kActivationPatching, ComponentMethod::kLayerIntegratedGradients}) {
    SCOPED_TRACE(static_cast<int>(method));
    ComponentRequest request = Request(method, {ComponentSite::kHeads});
    request.pairs.push_back(kOtherPair);
    request.n_steps = 2;
    EXPECT_THAT(Run(request).status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                HasSubstr("pairs[0]: the components' attributions (a patched run's "
                                                          "metric or its gradient) came out NaN")));
  }
}

// Every row runs one 7-token prompt of the pair, so the request's rows hold 7 x rows tokens: a limit of
// exactly that passes, one token less is refused before any row is built.
TEST_P(ComponentAttributionTest, TheRowsTokensAreCountedAgainstTheLimitBeforeAnyRowIsBuilt) {
  ComponentRequest request = Request(ComponentMethod::kActivationPatching, {ComponentSite::kResidPre});
  absl::StatusOr<ComponentResult> all = Run(request);
  ASSERT_THAT(all, IsOk());
  const int64_t tokens = 7 * all->rows;
  EXPECT_THAT(Run(request, {.max_queued_tokens = tokens}), IsOk());
  EXPECT_THAT(Run(request, {.max_queued_tokens = tokens - 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(absl::StrCat(all->rows, " rows would run ", tokens, " tokens")),
                             HasSubstr("limits.max_queued_tokens (" + std::to_string(tokens - 1) + ")"))));
}

INSTANTIATE_TEST_SUITE_P(Models, ComponentAttributionTest, ::testing::Values("llama", "gpt2", "qwen2"));

}  // namespace
}  // namespace attribution::engine
