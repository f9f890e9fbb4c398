// SPDX-License-Identifier: Apache-2.0
// The server's request conversion (server/conversion.h) without a running server: proto requests to
// engine requests on the committed default model and its SentencePiece tokenizer (bos 1, eos 2, no
// pad). Every proto enum value maps to the engine value of the same meaning, written out here by
// hand; _UNSPECIFIED means the documented default; unknown enum values and bad fields are
// INVALID_ARGUMENT naming the field.
#include "server/conversion.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "server/conversion_parts.h"
#include "tests/testing/served_default_model.h"
#include "tests/testing/status_matchers.h"

namespace attribution::server {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::SpecifiedValues;
using ::attribution::test_support::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr int kUnknownEnumValue = 77;
constexpr int64_t kBos = 1, kEos = 2;

class ConversionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    served_ = test_support::LoadServedDefaultModel(ATTRIBUTION_DEFAULT_MODEL_DIR);
    ASSERT_NE(served_, nullptr);
  }
  static void TearDownTestSuite() { delete served_; }

  // A valid request: text prompt, text target, everything else at its default.
  static v1::AttributeRequest Request() {
    v1::AttributeRequest proto;
    proto.mutable_prompt()->set_text("Is the sky blue?");
    proto.mutable_target()->set_text(" yes");
    return proto;
  }
  static absl::StatusOr<AttributeCall> Convert(const v1::AttributeRequest& proto) {
    return ToAttributeCall(proto, *served_, absl::InfiniteFuture());
  }
  static std::vector<int64_t> Encode(const std::string& text, bool add_special_tokens) {
    return served_->tokenizer->Encode(text, add_special_tokens)->ids;
  }

  static ServedModel* served_;
};
ServedModel* ConversionTest::served_ = nullptr;

TEST_F(ConversionTest, EveryMethodMapsToItsEngineMethodAndBack) {
  const std::map<v1::Method, engine::AttributionMethod> expected = {
      {v1::INTEGRATED_GRADIENTS, engine::AttributionMethod::kIntegratedGradients},
      {v1::GRADIENT_SHAP, engine::AttributionMethod::kGradientShap},
      {v1::SALIENCY, engine::AttributionMethod::kSaliency},
      {v1::INPUT_X_GRADIENT, engine::AttributionMethod::kInputXGradient},
      {v1::FEATURE_ABLATION, engine::AttributionMethod::kFeatureAblation},
      {v1::SHAPLEY_VALUES, engine::AttributionMethod::kShapleyValues},
      {v1::SHAPLEY_VALUE_SAMPLING, engine::AttributionMethod::kShapleyValueSampling},
      {v1::LIME, engine::AttributionMethod::kLime},
      {v1::KERNEL_SHAP, engine::AttributionMethod::kKernelShap},
      {v1::ATTN_LRP, engine::AttributionMethod::kAttnLrp},
      {v1::CP_LRP, engine::AttributionMethod::kCpLrp},
  };
  for (v1::Method method : SpecifiedValues<v1::Method>(v1::Method_descriptor())) {
    SCOPED_TRACE(v1::Method_Name(method));
    ASSERT_EQ(expected.count(method), 1u);
    v1::AttributeRequest proto = Request();
    proto.set_method(method);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.method, expected.at(method));
    // The response names the method the request ran.
    v1::AttributeResponse response;
    ToAttributeResponse(engine::AttributionResult{}, *call, *served_, &response);
    EXPECT_EQ(response.method(), method);
  }
}

TEST_F(ConversionTest, EveryIntegrationRuleMapsToItsEngineRule) {
  const std::map<v1::IntegrationRule, engine::IntegrationRule> expected = {
      {v1::GAUSS_LEGENDRE, engine::IntegrationRule::kGaussLegendre},
      {v1::RIEMANN_LEFT, engine::IntegrationRule::kRiemannLeft},
      {v1::RIEMANN_RIGHT, engine::IntegrationRule::kRiemannRight},
      {v1::RIEMANN_MIDDLE, engine::IntegrationRule::kRiemannMiddle},
      {v1::RIEMANN_TRAPEZOID, engine::IntegrationRule::kRiemannTrapezoid},
      {v1::FEJER2, engine::IntegrationRule::kFejer2},
  };
  for (v1::IntegrationRule rule : SpecifiedValues<v1::IntegrationRule>(v1::IntegrationRule_descriptor())) {
    SCOPED_TRACE(v1::IntegrationRule_Name(rule));
    ASSERT_EQ(expected.count(rule), 1u);
    v1::AttributeRequest proto = Request();
    proto.set_rule(rule);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.rule, expected.at(rule));
  }
}

TEST_F(ConversionTest, AnUnspecifiedRuleIsGaussLegendreOrWithAToleranceTheNestedFejer2) {
  v1::AttributeRequest proto = Request();
  absl::StatusOr<AttributeCall> fixed = Convert(proto);
  ASSERT_THAT(fixed, IsOk());
  EXPECT_EQ(fixed->request.rule, engine::IntegrationRule::kGaussLegendre);
  proto.set_completeness_tolerance(1e-3);
  absl::StatusOr<AttributeCall> to_tolerance = Convert(proto);
  ASSERT_THAT(to_tolerance, IsOk());
  EXPECT_EQ(to_tolerance->request.rule, engine::IntegrationRule::kFejer2);
  // A rule asked for is kept.
  proto.set_rule(v1::GAUSS_LEGENDRE);
  absl::StatusOr<AttributeCall> asked = Convert(proto);
  ASSERT_THAT(asked, IsOk());
  EXPECT_EQ(asked->request.rule, engine::IntegrationRule::kGaussLegendre);
}

TEST_F(ConversionTest, EveryQuantityMapsToItsEngineQuantity) {
  const std::map<v1::Quantity, engine::TokenQuantity> expected = {
      {v1::LOG_PROB, engine::TokenQuantity::kLogProb},
      {v1::PROB, engine::TokenQuantity::kProb},
      {v1::LOGIT, engine::TokenQuantity::kLogit},
  };
  for (v1::Quantity quantity : SpecifiedValues<v1::Quantity>(v1::Quantity_descriptor())) {
    SCOPED_TRACE(v1::Quantity_Name(quantity));
    ASSERT_EQ(expected.count(quantity), 1u);
    v1::AttributeRequest proto = Request();
    proto.set_quantity(quantity);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.quantity, expected.at(quantity));
  }
}

TEST_F(ConversionTest, EveryPriorityMapsToItsEnginePriority) {
  const std::map<v1::Priority, engine::Priority> expected = {
      {v1::LOW, engine::Priority::kLow}, {v1::NORMAL, engine::Priority::kNormal}, {v1::HIGH, engine::Priority::kHigh}};
  for (v1::Priority priority : SpecifiedValues<v1::Priority>(v1::Priority_descriptor())) {
    SCOPED_TRACE(v1::Priority_Name(priority));
    ASSERT_EQ(expected.count(priority), 1u);
    v1::AttributeRequest proto = Request();
    proto.set_priority(priority);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.priority, expected.at(priority));
  }
}

TEST_F(ConversionTest, UnspecifiedFieldsTakeTheDocumentedDefaults) {
  const absl::Time deadline = absl::FromUnixSeconds(2000000000);
  absl::StatusOr<AttributeCall> call = ToAttributeCall(Request(), *served_, deadline);
  ASSERT_THAT(call, IsOk());
  const engine::AttributionRequest& r = call->request;
  EXPECT_EQ(r.method, engine::AttributionMethod::kIntegratedGradients);
  EXPECT_EQ(r.rule, engine::IntegrationRule::kGaussLegendre);
  EXPECT_EQ(r.quantity, engine::TokenQuantity::kLogProb);
  EXPECT_EQ(r.priority, engine::Priority::kNormal);
  EXPECT_EQ(r.n_steps, 50);
  EXPECT_EQ(r.n_samples, 25);
  EXPECT_EQ(r.baseline_token_id, 0);
  EXPECT_FALSE(r.zero_embedding_baseline);
  EXPECT_TRUE(r.saliency_abs);
  EXPECT_FALSE(r.want_token_matrix);
  EXPECT_TRUE(r.foil_ids.empty());
  EXPECT_EQ(r.deadline, deadline);
  // The prompt as the tokenizer reads it (with bos); the target as its continuation, without bos.
  EXPECT_EQ(r.prompt_ids, Encode("Is the sky blue?", true));
  EXPECT_EQ(r.prompt_ids.front(), kBos);
  EXPECT_FALSE(r.target_ids.empty());
  EXPECT_NE(r.target_ids.front(), kBos);
  // Every prompt token but the bos is a feature.
  ASSERT_EQ(r.features.size(), r.prompt_ids.size() - 1);
  for (size_t f = 0; f < r.features.size(); ++f) {
    EXPECT_EQ(r.features[f].begin, static_cast<int64_t>(f) + 1);
    EXPECT_EQ(r.features[f].end, static_cast<int64_t>(f) + 2);
  }
}

// A default above an operator's lower limit is lowered to it, and a new-token default to the room the prompt
// leaves: before, a request that set nothing was refused for "n_steps = 50 is outside [1, 8]", a value it never
// sent. A value sent is checked as before.
TEST_F(ConversionTest, DefaultsAboveTheOperatorsLimitsAreLoweredToThem) {
  const engine::AttributionLimits saved = served_->spec.limits;
  served_->spec.limits.max_steps = 8;
  served_->spec.limits.max_samples = 8;
  served_->spec.limits.max_new_tokens = 8;
  absl::StatusOr<AttributeCall> call = Convert(Request());
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->request.n_steps, 8);
  EXPECT_EQ(call->request.n_samples, 8);
  v1::AttributeRequest generated = Request();
  generated.clear_target();
  call = Convert(generated);
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->request.generation.max_new_tokens, 8);
  v1::GenerateRequest generate;
  generate.mutable_prompt()->set_text("Is the sky blue?");
  absl::StatusOr<GenerateCall> generation = ToGenerateCall(generate, *served_);
  ASSERT_THAT(generation, IsOk());
  EXPECT_EQ(generation->options.max_new_tokens, 8);
  v1::AttributeRequest too_many = Request();
  too_many.set_n_steps(9);
  EXPECT_THAT(Convert(too_many), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_steps")));
  // Room for 3 new tokens after the prompt: the default takes 3.
  served_->spec.limits.max_tokens = static_cast<int64_t>(Encode("Is the sky blue?", true).size()) + 3;
  generation = ToGenerateCall(generate, *served_);
  served_->spec.limits = saved;
  ASSERT_THAT(generation, IsOk());
  EXPECT_EQ(generation->options.max_new_tokens, 3);
}

TEST_F(ConversionTest, FieldsAreCopiedIntoTheEngineRequest) {
  v1::AttributeRequest proto = Request();
  proto.set_method(v1::GRADIENT_SHAP);
  proto.set_n_steps(7);
  proto.set_n_samples(9);
  proto.set_stdev(0.25);
  proto.set_seed(1234);
  proto.set_signed_saliency(true);
  proto.set_want_token_matrix(true);
  proto.set_want_faithfulness(true);
  proto.set_include_special_tokens(true);
  proto.set_no_special_tokens(true);
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  const engine::AttributionRequest& r = call->request;
  EXPECT_EQ(r.n_steps, 7);
  EXPECT_EQ(r.n_samples, 9);
  EXPECT_EQ(r.stdev, 0.25);
  EXPECT_EQ(r.seed, 1234u);
  EXPECT_FALSE(r.saliency_abs);
  EXPECT_TRUE(r.want_token_matrix);
  EXPECT_TRUE(r.want_faithfulness);
  EXPECT_EQ(r.prompt_ids, Encode("Is the sky blue?", false));  // no bos
  EXPECT_TRUE(r.features.empty());                             // every token a feature: the engine's default
}

// Each method's settings as its Captum counterpart takes them; the rest are named as unread, whatever their value.
TEST_F(ConversionTest, SettingsTheMethodDoesNotReadAreNamed) {
  auto unread = [](v1::Method method, const std::function<void(v1::AttributeRequest&)>& set) {
    v1::AttributeRequest proto = Request();
    proto.set_method(method);
    set(proto);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    EXPECT_THAT(call, IsOk());
    return call.ok() ? call->unread_settings : std::vector<std::string>{"(refused)"};
  };
  auto every_setting = [](v1::AttributeRequest& proto) {
    proto.set_n_steps(8);
    proto.set_rule(v1::RIEMANN_LEFT);
    proto.set_n_samples(4);
    proto.set_stdev(0.1);
    proto.set_seed(3);
    proto.set_signed_saliency(true);
    proto.set_baseline(v1::EOS_TOKEN);
  };
  EXPECT_THAT(unread(v1::INTEGRATED_GRADIENTS, every_setting),
              ElementsAre("n_samples", "stdev", "seed", "signed_saliency"));
  EXPECT_THAT(unread(v1::GRADIENT_SHAP, every_setting), ElementsAre("n_steps", "rule", "signed_saliency"));
  EXPECT_THAT(unread(v1::SALIENCY, every_setting),
              ElementsAre("n_steps", "rule", "n_samples", "stdev", "seed", "baseline"));
  EXPECT_THAT(unread(v1::FEATURE_ABLATION, every_setting),
              ElementsAre("n_steps", "rule", "n_samples", "stdev", "seed", "signed_saliency"));
  EXPECT_THAT(unread(v1::LIME, every_setting), ElementsAre("n_steps", "rule", "stdev", "signed_saliency"));
  EXPECT_THAT(unread(v1::ATTN_LRP, every_setting),
              ElementsAre("n_steps", "rule", "n_samples", "stdev", "seed", "signed_saliency", "baseline"));
  EXPECT_THAT(unread(v1::SALIENCY, [](v1::AttributeRequest&) {}), ::testing::IsEmpty());
  // Faithfulness curves read the baseline whatever the method.
  EXPECT_THAT(unread(v1::SALIENCY,
                     [](v1::AttributeRequest& proto) {
                       proto.set_baseline(v1::EOS_TOKEN);
                       proto.set_want_faithfulness(true);
                     }),
              ::testing::IsEmpty());
  // Whatever the method: generation settings beside a given target, and the request's baseline where every group
  // has its own.
  EXPECT_THAT(unread(v1::SALIENCY, [](v1::AttributeRequest& proto) { proto.mutable_generation()->set_top_k(5); }),
              ElementsAre("generation"));
  auto groups = [](bool every_one_its_baseline) {
    return [every_one_its_baseline](v1::AttributeRequest& proto) {
      proto.set_baseline(v1::EOS_TOKEN);
      for (int64_t begin : {1, 2}) {  // after the bos
        v1::FeatureGroup* group = proto.add_feature_groups();
        group->set_token_begin(begin);
        group->set_token_end(begin + 1);
        if (every_one_its_baseline || begin == 1) group->mutable_baseline()->add_token_ids(5);
      }
    };
  };
  EXPECT_THAT(unread(v1::FEATURE_ABLATION, groups(true)), ElementsAre("baseline"));
  EXPECT_THAT(unread(v1::FEATURE_ABLATION, groups(false)), ::testing::IsEmpty());
  // A group's own baseline where the method puts no feature at a baseline (it was named nowhere).
  EXPECT_THAT(unread(v1::SALIENCY, groups(false)), ElementsAre("baseline", "feature_groups.baseline"));
  EXPECT_THAT(unread(v1::ATTN_LRP, groups(true)), ElementsAre("baseline", "feature_groups.baseline"));
  // How text becomes tokens, where no text is given for it to apply to; read where there is.
  const auto as_ids = [](bool prompt_as_ids, bool target_as_ids) {
    return [=](v1::AttributeRequest& proto) {
      proto.set_no_special_tokens(true);
      proto.set_target_tokenization(v1::SEPARATE);
      if (prompt_as_ids) proto.mutable_prompt()->Clear(), proto.mutable_prompt()->add_token_ids(5);
      if (target_as_ids) proto.mutable_target()->Clear(), proto.mutable_target()->add_token_ids(7);
    };
  };
  EXPECT_THAT(unread(v1::SALIENCY, as_ids(true, true)), ElementsAre("no_special_tokens", "target_tokenization"));
  EXPECT_THAT(unread(v1::SALIENCY, as_ids(false, true)), ElementsAre("target_tokenization"));
  EXPECT_THAT(unread(v1::SALIENCY, as_ids(true, false)), ElementsAre("no_special_tokens"));
  EXPECT_THAT(unread(v1::SALIENCY, as_ids(false, false)), ::testing::IsEmpty());
  // A seed that also seeded the sampled target decided it (the clients send their one seed option both ways): it
  // was named as having changed nothing. Another generation seed, greedy decoding, or a given target leave it unread.
  const auto seeded = [](uint64_t generation_seed, bool target, double temperature = 1) {
    return [=](v1::AttributeRequest& proto) {
      if (!target) proto.clear_target();
      proto.set_seed(9);
      proto.mutable_generation()->set_seed(generation_seed);
      proto.mutable_generation()->set_temperature(temperature);
    };
  };
  EXPECT_THAT(unread(v1::SALIENCY, seeded(9, false)), ::testing::IsEmpty());
  EXPECT_THAT(unread(v1::SALIENCY, seeded(10, false)), ElementsAre("seed"));
  EXPECT_THAT(unread(v1::SALIENCY, seeded(9, false, 0)), ElementsAre("seed"));
  EXPECT_THAT(unread(v1::SALIENCY, seeded(9, true)), ElementsAre("seed", "generation"));
  // The answer carries them.
  v1::AttributeRequest proto = Request();
  proto.set_method(v1::SALIENCY);
  proto.set_n_steps(8);
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  v1::AttributeResponse response;
  ToAttributeResponse(engine::AttributionResult{}, *call, *served_, &response);
  EXPECT_THAT(response.unread_settings(), ElementsAre("n_steps"));
}

// The answer named no setting a server filled in: two servers whose limits lowered defaults differently answered
// one request 0.8 apart (KernelSHAP) and nothing in either answer said why. Each method's answer names what it
// read, as it read it.
TEST_F(ConversionTest, TheAnswerNamesTheSettingsTheMethodRanWith) {
  const engine::AttributionLimits saved = served_->spec.limits;
  served_->spec.limits.max_samples = 10;
  auto used = [](v1::Method method, const std::function<void(v1::AttributeRequest&)>& set) {
    v1::AttributeRequest proto = Request();
    proto.set_method(method);
    set(proto);
    absl::StatusOr<AttributeCall> call = Convert(proto);
    EXPECT_THAT(call, IsOk());
    v1::AttributeResponse response;
    if (call.ok()) ToAttributeResponse(engine::AttributionResult{}, *call, *served_, &response);
    return response.settings_used();
  };
  const v1::SettingsUsed kernel_shap = used(v1::KERNEL_SHAP, [](v1::AttributeRequest&) {});
  EXPECT_EQ(kernel_shap.n_samples(), 10);  // the default 25, lowered to the limit
  EXPECT_TRUE(kernel_shap.has_seed());
  EXPECT_EQ(kernel_shap.seed(), 0u);
  EXPECT_EQ(kernel_shap.baseline(), v1::TOKEN_ID);
  EXPECT_EQ(kernel_shap.baseline_token_id(), 0);
  EXPECT_FALSE(kernel_shap.has_n_steps());
  EXPECT_FALSE(kernel_shap.has_rule());
  EXPECT_FALSE(kernel_shap.has_stdev());

  const v1::SettingsUsed ig =
      used(v1::INTEGRATED_GRADIENTS, [](v1::AttributeRequest& p) { p.set_baseline(v1::ZERO_EMBEDDING); });
  EXPECT_EQ(ig.n_steps(), 50);
  EXPECT_EQ(ig.rule(), v1::GAUSS_LEGENDRE);
  EXPECT_EQ(ig.baseline(), v1::ZERO_EMBEDDING);
  EXPECT_FALSE(ig.has_baseline_token_id());
  EXPECT_FALSE(ig.has_n_samples());
  EXPECT_FALSE(ig.has_seed());
  const v1::SettingsUsed tolerant =
      used(v1::INTEGRATED_GRADIENTS, [](v1::AttributeRequest& p) { p.set_completeness_tolerance(0.01); });
  EXPECT_EQ(tolerant.rule(), v1::FEJER2);
  EXPECT_EQ(tolerant.n_steps(), served_->spec.limits.max_steps);
  const v1::SettingsUsed eos =
      used(v1::FEATURE_ABLATION, [](v1::AttributeRequest& p) { p.set_baseline(v1::EOS_TOKEN); });
  EXPECT_EQ(eos.baseline(), v1::TOKEN_ID);
  EXPECT_EQ(eos.baseline_token_id(), *served_->tokenizer->special_tokens().eos);
  const v1::SettingsUsed gradient_shap = used(v1::GRADIENT_SHAP, [](v1::AttributeRequest& p) { p.set_stdev(0.25); });
  EXPECT_DOUBLE_EQ(gradient_shap.stdev(), 0.25);
  EXPECT_EQ(gradient_shap.n_samples(), 10);
  // Saliency reads none of them; with faithfulness curves it reads the baseline.
  EXPECT_EQ(used(v1::SALIENCY, [](v1::AttributeRequest&) {}).ByteSizeLong(), 0u);
  EXPECT_TRUE(used(v1::SALIENCY, [](v1::AttributeRequest& p) { p.set_want_faithfulness(true); }).has_baseline());
  served_->spec.limits = saved;
}

TEST_F(ConversionTest, TokenIdsArePassedAsGiven) {
  v1::AttributeRequest proto;
  const std::vector<int64_t> prompt = {kBos, 100, 200, 300}, target = {400, 500};
  proto.mutable_prompt()->mutable_token_ids()->Assign(prompt.begin(), prompt.end());
  proto.mutable_target()->mutable_token_ids()->Assign(target.begin(), target.end());
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  EXPECT_THAT(call->request.prompt_ids, ElementsAre(kBos, 100, 200, 300));
  EXPECT_THAT(call->request.target_ids, ElementsAre(400, 500));
}

TEST_F(ConversionTest, BaselineKindsPickTheModelsTokens) {
  const int64_t unk = *served_->tokenizer->special_tokens().unk;
  const std::map<v1::BaselineKind, int64_t> expected = {{v1::BASELINE_UNSPECIFIED, 0},
                                                        {v1::EOS_TOKEN, kEos},
                                                        {v1::BOS_TOKEN, kBos},
                                                        {v1::UNK_TOKEN, unk},
                                                        {v1::TOKEN_ID, 17}};
  for (const auto& [kind, id] : expected) {
    SCOPED_TRACE(v1::BaselineKind_Name(kind));
    v1::AttributeRequest proto = Request();
    proto.set_baseline(kind);
    if (kind == v1::TOKEN_ID) proto.set_baseline_token_id(17);  // refused beside another kind
    absl::StatusOr<AttributeCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.baseline_token_id, id);
    EXPECT_FALSE(call->request.zero_embedding_baseline);
  }
  v1::AttributeRequest zero = Request();
  zero.set_baseline(v1::ZERO_EMBEDDING);
  absl::StatusOr<AttributeCall> call = Convert(zero);
  ASSERT_THAT(call, IsOk());
  EXPECT_TRUE(call->request.zero_embedding_baseline);
}

// A group's baseline is read by presence: set but empty (text or ids) deletes the span, unset takes the
// request's baseline token.
TEST_F(ConversionTest, AGroupBaselineSetButEmptyIsCarriedAsADeletion) {
  v1::AttributeRequest proto = Request();
  proto.set_method(v1::FEATURE_ABLATION);
  auto add_group = [&](int64_t begin, int64_t end) {
    v1::FeatureGroup* group = proto.add_feature_groups();
    group->set_token_begin(begin);
    group->set_token_end(end);
    return group;
  };
  add_group(1, 2)->mutable_baseline()->add_token_ids(9);
  add_group(2, 3)->mutable_baseline();                // empty ids
  add_group(3, 4)->mutable_baseline()->set_text("");  // empty text
  add_group(4, 5);                                    // unset
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  const std::vector<engine::FeatureSpan>& features = call->request.features;
  ASSERT_EQ(features.size(), 4u);
  EXPECT_EQ(features[0].baseline_ids, std::vector<int64_t>{9});
  EXPECT_EQ(features[1].baseline_ids, std::vector<int64_t>{});
  EXPECT_EQ(features[2].baseline_ids, std::vector<int64_t>{});
  EXPECT_EQ(features[3].baseline_ids, std::nullopt);
  // feature_range takes no baseline, an empty one included.
  v1::AttributeRequest range = Request();
  range.mutable_feature_range()->set_token_begin(1);
  range.mutable_feature_range()->set_token_end(3);
  range.mutable_feature_range()->mutable_baseline();
  EXPECT_THAT(Convert(range), StatusIs(kInvalid, HasSubstr("feature_range.baseline: is not used")));
}

// The groups' baselines are held together to one text's bytes before any is read, and to the tokens a row may hold
// as each is read: 3,999 groups of 1 KB were all tokenized (1.3 s of a handler thread) before the engine refused
// their sum.
TEST_F(ConversionTest, GroupBaselinesAreRefusedAtTheFirstThatOverflows) {
  const auto saved = served_->spec.limits;
  const int64_t prompt = static_cast<int64_t>(Encode("Is the sky blue?", true).size());
  served_->spec.limits.max_tokens = prompt + 10;
  v1::AttributeRequest tokens = Request();
  tokens.set_method(v1::FEATURE_ABLATION);
  for (int64_t p = 1; p < 5; ++p) {  // each baseline 3 tokens longer than its span: 3, 6, 9, then 12 > 10
    v1::FeatureGroup* group = tokens.add_feature_groups();
    group->set_token_begin(p);
    group->set_token_end(p + 1);
    for (int64_t id : {10, 11, 12, 13}) group->mutable_baseline()->add_token_ids(id);
  }
  const absl::StatusOr<AttributeCall> too_long = Convert(tokens);
  v1::AttributeRequest bytes = Request();
  bytes.set_method(v1::FEATURE_ABLATION);
  for (int64_t p = 1; p < 3; ++p) {  // each alone within one text's bytes, together over
    v1::FeatureGroup* group = bytes.add_feature_groups();
    group->set_token_begin(p);
    group->set_token_end(p + 1);
    group->mutable_baseline()->set_text(std::string(MaxTextBytes(*served_) / 2 + 1, ' '));
  }
  const absl::StatusOr<AttributeCall> too_large = Convert(bytes);
  served_->spec.limits = saved;
  EXPECT_THAT(too_long, StatusIs(kInvalid, HasSubstr("feature_groups[3].baseline: with every group up to this one at "
                                                     "its baseline a row holds")));
  EXPECT_THAT(too_large,
              StatusIs(kInvalid, HasSubstr("feature_groups[].baseline.text: the groups' baseline texts are")));
}

TEST_F(ConversionTest, ContrastiveRequestCarriesTheFoil) {
  v1::AttributeRequest proto;
  proto.mutable_prompt()->set_text("Is the sky blue?");
  proto.mutable_target()->add_token_ids(400);
  proto.mutable_foil()->add_token_ids(401);
  proto.set_contrastive(true);
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  EXPECT_THAT(call->request.foil_ids, ElementsAre(401));
}

TEST_F(ConversionTest, NoTargetMeansAGeneratedOneWithDefaultSettings) {
  v1::AttributeRequest proto = Request();
  proto.clear_target();
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  EXPECT_TRUE(call->request.target_ids.empty());
  EXPECT_EQ(call->request.generation.max_new_tokens, 25);
  EXPECT_EQ(call->request.generation.temperature, 0);
}

// An unknown value of each enum field is INVALID_ARGUMENT naming the field, the value and the names
// the server knows.
TEST_F(ConversionTest, UnknownEnumValuesNameTheFieldAndTheValidNames) {
  struct Case {
    std::string field, a_valid_name;
    std::function<void(v1::AttributeRequest&)> set;
  };
  const std::vector<Case> cases = {
      {"method", "KERNEL_SHAP", [](auto& p) { p.set_method(static_cast<v1::Method>(kUnknownEnumValue)); }},
      {"rule", "RIEMANN_TRAPEZOID", [](auto& p) { p.set_rule(static_cast<v1::IntegrationRule>(kUnknownEnumValue)); }},
      {"quantity", "LOGIT", [](auto& p) { p.set_quantity(static_cast<v1::Quantity>(kUnknownEnumValue)); }},
      {"priority", "HIGH", [](auto& p) { p.set_priority(static_cast<v1::Priority>(kUnknownEnumValue)); }},
      {"baseline", "PAD_TOKEN", [](auto& p) { p.set_baseline(static_cast<v1::BaselineKind>(kUnknownEnumValue)); }},
      {"target_tokenization", "SEPARATE",
       [](auto& p) { p.set_target_tokenization(static_cast<v1::TargetTokenization>(kUnknownEnumValue)); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    v1::AttributeRequest proto = Request();
    c.set(proto);
    EXPECT_THAT(Convert(proto),
                StatusIs(kInvalid, AllOf(StartsWith(c.field + ": "), HasSubstr("77"), HasSubstr(c.a_valid_name))));
  }
}

// Fields conversion itself reads; the ranges of the engine request (n_steps, n_samples, limits) are
// checked once, by the attributor (attribution_test, and bad_input_e2e_test through the server).
TEST_F(ConversionTest, BadFieldsAreInvalidArgumentNamingTheField) {
  struct Case {
    std::string name, message;
    std::function<void(v1::AttributeRequest&)> change;
  };
  const std::vector<Case> cases = {
      {"no prompt", "prompt:", [](auto& p) { p.clear_prompt(); }},
      {"prompt text and ids", "prompt:", [](auto& p) { p.mutable_prompt()->add_token_ids(5); }},
      {"prompt id outside the vocabulary", "prompt: token_ids[0] = 4000",
       [](auto& p) {
         p.mutable_prompt()->clear_text();
         p.mutable_prompt()->add_token_ids(4000);
       }},
      {"empty target", "target:", [](auto& p) { p.mutable_target()->clear_text(); }},
      {"negative stdev", "stdev", [](auto& p) { p.set_stdev(-1); }},
      // Generation settings beside a target are not read, and checked all the same.
      {"negative max_new_tokens beside a target", "generation.max_new_tokens = -1 is outside [1, 512]",
       [](auto& p) { p.mutable_generation()->set_max_new_tokens(-1); }},
      {"NaN temperature beside a target", "generation: temperature",
       [](auto& p) { p.mutable_generation()->set_temperature(std::nan("")); }},
      {"foil without contrastive", "contrastive:", [](auto& p) { p.mutable_foil()->set_text(" no"); }},
      {"contrastive without foil", "foil:", [](auto& p) { p.set_contrastive(true); }},
      {"foil of another length", "foil:",
       [](auto& p) {
         p.set_contrastive(true);
         p.mutable_foil()->add_token_ids(400);
         p.mutable_foil()->add_token_ids(401);
         p.mutable_foil()->add_token_ids(402);
       }},
      {"zero embedding for a perturbation", "baseline:",
       [](auto& p) {
         p.set_method(v1::FEATURE_ABLATION);
         p.set_baseline(v1::ZERO_EMBEDDING);
       }},
      {"no pad token", "baseline: model \"default\" has no pad token", [](auto& p) { p.set_baseline(v1::PAD_TOKEN); }},
      {"empty feature range", "feature_range:",
       [](auto& p) {
         p.mutable_feature_range()->set_token_begin(2);
         p.mutable_feature_range()->set_token_end(2);
       }},
      {"overlapping feature groups", "feature_groups[1]:",
       [](auto& p) {
         v1::FeatureGroup* a = p.add_feature_groups();
         a->set_token_begin(1);
         a->set_token_end(3);
         v1::FeatureGroup* b = p.add_feature_groups();
         b->set_token_begin(2);
         b->set_token_end(4);
       }},
      {"too many new tokens", "generation.max_new_tokens = 100000 is outside",
       [](auto& p) {
         p.clear_target();
         p.mutable_generation()->set_max_new_tokens(100000);
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::AttributeRequest proto = Request();
    c.change(proto);
    EXPECT_THAT(Convert(proto), StatusIs(kInvalid, HasSubstr(c.message)));
  }
}

TEST_F(ConversionTest, LogprobsCallScoresTheTargetAfterThePrompt) {
  v1::LogprobsRequest proto;
  proto.mutable_prompt()->set_text("Is the sky blue?");
  proto.mutable_target()->set_text(" yes it is");
  proto.set_top_k(3);
  proto.set_priority(v1::HIGH);
  absl::StatusOr<LogprobsCall> call = ToLogprobsCall(proto, *served_, /*max_top_k=*/20);
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->prompt.encoding.ids, Encode("Is the sky blue?", true));
  // A continuation: prompt and target tokenized together, the prompt's tokens taken off.
  std::vector<int64_t> together = Encode("Is the sky blue? yes it is", true);
  ASSERT_GT(together.size(), call->prompt.encoding.ids.size());
  together.erase(together.begin(), together.begin() + static_cast<int64_t>(call->prompt.encoding.ids.size()));
  EXPECT_EQ(call->target.encoding.ids, together);
  EXPECT_EQ(call->top_k, 3);
  EXPECT_EQ(call->priority, engine::Priority::kHigh);

  proto.set_target_tokenization(v1::SEPARATE);
  call = ToLogprobsCall(proto, *served_, 20);
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->target.encoding.ids, Encode(" yes it is", false));
}

TEST_F(ConversionTest, LogprobsBadFieldsAreInvalidArgumentNamingTheField) {
  v1::LogprobsRequest proto;
  proto.mutable_prompt()->set_text("Is the sky blue?");
  EXPECT_THAT(ToLogprobsCall(proto, *served_, 20), StatusIs(kInvalid, HasSubstr("target:")));
  proto.mutable_target()->set_text(" yes");
  proto.set_top_k(21);
  EXPECT_THAT(ToLogprobsCall(proto, *served_, 20), StatusIs(kInvalid, HasSubstr("top_k: 21 is outside [0, 20]")));
  proto.set_top_k(-1);
  EXPECT_THAT(ToLogprobsCall(proto, *served_, 20), StatusIs(kInvalid, HasSubstr("top_k")));
  proto.set_top_k(0);
  proto.set_priority(static_cast<v1::Priority>(kUnknownEnumValue));
  EXPECT_THAT(ToLogprobsCall(proto, *served_, 20), StatusIs(kInvalid, StartsWith("priority: ")));
}

// A known field number with another wire type was read as unset (n_steps sent as a fixed32 ran 50 steps; a method
// sent length-delimited ran integrated gradients); numbers this proto does not know, a newer client's settings,
// are named as unread.
TEST_F(ConversionTest, FieldsOfAnotherWireTypeAreRefusedAndUnknownOnesNamedUnread) {
  v1::AttributeRequest proto;
  const std::string n_steps_as_fixed32 = {'\x75', '\x03', '\0', '\0', '\0'};  // field 14, wire type 5
  ASSERT_TRUE(proto.ParseFromString(Request().SerializeAsString() + n_steps_as_fixed32));
  EXPECT_EQ(proto.n_steps(), 0);  // protobuf's reading: unset
  EXPECT_THAT(Convert(proto),
              StatusIs(kInvalid, AllOf(StartsWith("n_steps: field 14 arrived as a fixed32"), HasSubstr("int32"))));
  auto with_unknown = [](google::protobuf::Message* message) {
    return message->GetReflection()->MutableUnknownFields(message);
  };
  proto = Request();
  with_unknown(proto.mutable_prompt())->AddFixed64(2, 5);
  EXPECT_THAT(Convert(proto), StatusIs(kInvalid, StartsWith("prompt.token_ids: field 2 arrived as a fixed64, but it "
                                                            "is declared repeated int64")));
  proto = Request();
  with_unknown(&proto)->AddLengthDelimited(9, "x");  // method, an enum
  EXPECT_THAT(Convert(proto), StatusIs(kInvalid, HasSubstr("declared attribution.v1.Method")));

  proto = Request();
  proto.clear_target();  // generated: the generation settings are read
  with_unknown(&proto)->AddVarint(99, 1);
  with_unknown(&proto)->AddVarint(99, 2);
  with_unknown(proto.mutable_generation())->AddLengthDelimited(40, "x");
  absl::StatusOr<AttributeCall> call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  EXPECT_THAT(call->unread_settings, ElementsAre("field 99 (not in this server's attribution.proto)",
                                                 "generation.field 40 (not in this server's attribution.proto)"));

  // Many unknown fields: a few are named, then "more fields", in time linear in their number (160,000 of them,
  // each compared with all the others, held a conversion thread 33 s).
  proto = Request();
  for (int number = 100; number < 50100; ++number) with_unknown(&proto)->AddVarint(number, 1);
  call = Convert(proto);
  ASSERT_THAT(call, IsOk());
  ASSERT_EQ(call->unread_settings.size(), 9u);
  EXPECT_EQ(call->unread_settings[0], "field 100 (not in this server's attribution.proto)");
  EXPECT_EQ(call->unread_settings[8], "more fields (not in this server's attribution.proto)");

  v1::LogprobsRequest logprobs;
  logprobs.mutable_prompt()->set_text("Is the sky blue?");
  logprobs.mutable_target()->set_text(" yes");
  with_unknown(&logprobs)->AddLengthDelimited(5, "3");  // top_k, an int32
  EXPECT_THAT(ToLogprobsCall(logprobs, *served_, 20),
              StatusIs(kInvalid, StartsWith("top_k: field 5 arrived as length-delimited")));
  v1::GenerateRequest generate;
  generate.mutable_prompt()->set_text("Is the sky blue?");
  with_unknown(generate.mutable_generation())->AddFixed32(1, 4);  // max_new_tokens
  EXPECT_THAT(ToGenerateCall(generate, *served_),
              StatusIs(kInvalid, StartsWith("generation.max_new_tokens: field 1 arrived as a fixed32")));
}

// Counts the token ids every Decode call reads, around the model's real tokenizer.
class DecodeCounter : public engine::Tokenizer {
 public:
  explicit DecodeCounter(const engine::Tokenizer& inner) : inner_(inner) {}
  absl::StatusOr<engine::Encoding> Encode(const std::string& text, bool add_special_tokens) const override {
    return inner_.Encode(text, add_special_tokens);
  }
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    ids_decoded += static_cast<int64_t>(ids.size());
    return inner_.Decode(ids, skip_special_tokens);
  }
  std::string TokenText(int64_t id) const override { return inner_.TokenText(id); }
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  const engine::SpecialTokens& special_tokens() const override { return inner_.special_tokens(); }
  bool IsSpecial(int64_t id) const override { return inner_.IsSpecial(id); }

  mutable int64_t ids_decoded = 0;

 private:
  const engine::Tokenizer& inner_;
};

// The engine asks after every new token; a generation of max_new_tokens (512 by default) ran a check
// that decoded every prefix of the tokens so far (~n^3/6 ids: 22 million at 512 on the executor
// thread). Each token now decodes the continuation once: about n^2/2 ids in all, as the answer's own
// decoding costs.
// A streamed token is marked special exactly when the answer's text leaves it out. The SentencePiece
// model's <unk> was not (it is a feature in prompts), so a streaming client showed "<unk>" where the text had
// nothing, and found stop strings the server did not.
TEST_F(ConversionTest, AStreamedTokenIsSpecialExactlyWhenTheTextLeavesItOut) {
  const engine::Tokenizer& tokenizer = *served_->tokenizer;
  const int64_t word = Encode(" lake", false).back();
  const std::string around = *tokenizer.Decode({word, word}, /*skip_special_tokens=*/true);
  for (int64_t id = 0; id < tokenizer.vocab_size(); ++id) {
    v1::Token streamed;
    ToStreamedToken(id, 0, *served_, &streamed);
    EXPECT_EQ(streamed.special(), *tokenizer.Decode({word, id, word}, true) == around) << "token " << id;
  }
  v1::Token unknown;
  ASSERT_TRUE(tokenizer.special_tokens().unk.has_value());
  ToStreamedToken(*tokenizer.special_tokens().unk, 0, *served_, &unknown);
  EXPECT_TRUE(unknown.special());
}

TEST_F(ConversionTest, StopStringCheckDecodesEachNewTokenOnce) {
  v1::GenerateRequest proto;
  proto.mutable_prompt()->set_text("Is the sky blue?");
  proto.add_stop("\x01never");
  proto.add_stop("sky");
  auto call = ToGenerateCall(proto, *served_);
  ASSERT_THAT(call, IsOk());
  auto shared = std::make_shared<const GenerateCall>(std::move(*call));
  DecodeCounter counter(*served_->tokenizer);
  engine::StopCheck check = ToStopCheck(shared, counter);
  ASSERT_TRUE(check);

  const std::vector<int64_t> words = Encode(" The lake is deep and the", false);
  std::vector<int64_t> tokens;
  constexpr int64_t kTokens = 256;
  while (static_cast<int64_t>(tokens.size()) < kTokens) {
    tokens.push_back(words[tokens.size() % words.size()]);
    ASSERT_FALSE(check(tokens)) << "after " << tokens.size() << " tokens";
  }
  // One decoding per new token, of the continuation so far and a few words of the prompt: about n^2 / 2 ids
  // (decoding twice per token would pass n^2, every prefix again n^3 / 6).
  EXPECT_LE(counter.ids_decoded, kTokens * (kTokens + 1) / 2 + 16 * kTokens)
      << "ids decoded for " << kTokens << " tokens";
  const std::vector<int64_t> sky = Encode(" sky", false);
  tokens.insert(tokens.end(), sky.begin(), sky.end());
  EXPECT_TRUE(check(tokens));

  proto.clear_stop();
  auto without = ToGenerateCall(proto, *served_);
  ASSERT_THAT(without, IsOk());
  EXPECT_FALSE(ToStopCheck(std::make_shared<const GenerateCall>(std::move(*without)), counter));
}

}  // namespace
}  // namespace attribution::server
