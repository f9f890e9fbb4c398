// SPDX-License-Identifier: Apache-2.0
// AttributeComponents at the edge (server/component_conversion.h) without a running server, on the committed
// default model: every proto enum value maps to the engine value of the same meaning (written out here by
// hand) and the response names it back; _UNSPECIFIED means the documented default; unknown values are
// INVALID_ARGUMENT naming the field.
#include "server/component_conversion.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <utility>

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

constexpr int kUnknownEnumValue = 77;

class ComponentConversionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    served_ = test_support::LoadServedDefaultModel(ATTRIBUTION_DEFAULT_MODEL_DIR);
    ASSERT_NE(served_, nullptr);
  }
  static void TearDownTestSuite() { delete served_; }

  // A valid request: one pair of equal length, answer and wrong answer, everything else at its default.
  static v1::AttributeComponentsRequest Request() {
    v1::AttributeComponentsRequest proto;
    v1::PromptPair* pair = proto.add_pairs();
    pair->mutable_clean()->set_text("the cat sat on the mat");
    pair->mutable_corrupted()->set_text("the dog sat on the mat");
    proto.mutable_answer()->set_text(" Yes");
    proto.mutable_wrong_answer()->set_text(" No");
    return proto;
  }
  static absl::StatusOr<ComponentsCall> Convert(const v1::AttributeComponentsRequest& proto,
                                                int64_t max_response_bytes = int64_t{4} << 20) {
    return ToComponentsCall(proto, *served_, absl::InfiniteFuture(), max_response_bytes);
  }
  static v1::AttributeComponentsResponse Respond(const ComponentsCall& call, const engine::ComponentResult& result) {
    v1::AttributeComponentsResponse response;
    ToComponentsResponse(result, call, *served_, &response);
    return response;
  }

  static ServedModel* served_;
};
ServedModel* ComponentConversionTest::served_ = nullptr;

TEST_F(ComponentConversionTest, UnspecifiedFieldsTakeTheDocumentedDefaults) {
  absl::StatusOr<ComponentsCall> call = Convert(Request());
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->request.method, engine::ComponentMethod::kActivationPatching);
  EXPECT_EQ(call->request.metric, engine::ComponentMetric::kLogitDifference);
  EXPECT_EQ(call->request.direction, engine::PatchDirection::kDenoising);
  EXPECT_THAT(call->request.sites, ElementsAre(engine::ComponentSite::kHeads));
  EXPECT_EQ(call->request.granularity, std::nullopt);
  EXPECT_EQ(call->request.n_steps, 16);
  // An operator's lower step limit lowers the default (it was refused, naming 16, a value never sent).
  engine::AttributionLimits lower = served_->attributor->limits();
  lower.max_steps = 8;
  std::unique_ptr<engine::Attributor> saved =
      std::exchange(served_->attributor, std::make_unique<engine::Attributor>(served_->model, nullptr, lower));
  call = Convert(Request());
  served_->attributor = std::move(saved);
  ASSERT_THAT(call, IsOk());
  EXPECT_EQ(call->request.n_steps, 8);
}

// Each pair is checked as it is read, before the next is tokenized: 64 pairs of 15 KB were all read (1 s of a
// handler thread) to refuse the first for its lengths. The second pair here would be refused for being empty.
TEST_F(ComponentConversionTest, APairIsRefusedBeforeTheNextIsRead) {
  v1::AttributeComponentsRequest proto = Request();
  proto.mutable_pairs(0)->mutable_corrupted()->set_text("the dog sat on the mat and more");
  proto.add_pairs();
  EXPECT_THAT(Convert(proto), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pairs[0]: clean has")));
}

// So are the answers and every other field, with the first pair: a wrong answer equal to the answer was refused
// after all 64 pairs were read (1.3 s). The second pair here would be refused for being empty.
TEST_F(ComponentConversionTest, TheRequestIsCheckedWithItsFirstPairBeforeTheNextIsRead) {
  v1::AttributeComponentsRequest proto = Request();
  proto.add_pairs();
  v1::AttributeComponentsRequest same_answers = proto;
  same_answers.mutable_wrong_answer()->set_text(" Yes");
  EXPECT_THAT(Convert(same_answers),
              StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("wrong_answer: the same")));
  v1::AttributeComponentsRequest twice = proto;
  twice.add_sites(v1::ATTENTION_HEADS);
  twice.add_sites(v1::ATTENTION_HEADS);
  EXPECT_THAT(Convert(twice), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is named twice")));
  EXPECT_THAT(Convert(proto), StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("pairs[1].clean")));
}

// And by the response the pairs read so far make: 64 pairs of 15 KB were all read (2 to 6 s of CPU) to refuse a
// response of 12 MB. The bound never refuses a response that fits: one pair's, measured whole, is the limit here.
TEST_F(ComponentConversionTest, AResponseTheFirstPairsMakeTooLargeIsRefusedBeforeTheNextIsRead) {
  v1::AttributeComponentsRequest one_pair = Request();
  std::string clean, corrupted;
  for (int i = 0; i < 30; ++i) {
    clean += "the cat sat on the mat ";
    corrupted += "the dog sat on the mat ";
  }
  one_pair.mutable_pairs(0)->mutable_clean()->set_text(clean);
  one_pair.mutable_pairs(0)->mutable_corrupted()->set_text(corrupted);
  absl::StatusOr<ComponentsCall> call = Convert(one_pair);
  ASSERT_THAT(call, IsOk());
  const auto fits = static_cast<int64_t>(
      Respond(*call, engine::ComponentResultOfZeros(call->request, served_->model->config())).ByteSizeLong());
  EXPECT_THAT(Convert(one_pair, fits), IsOk());
  v1::AttributeComponentsRequest three_pairs = one_pair;
  *three_pairs.add_pairs() = one_pair.pairs(0);
  three_pairs.add_pairs();
  EXPECT_THAT(Convert(three_pairs, fits), StatusIs(absl::StatusCode::kInvalidArgument,
                                                   AllOf(HasSubstr("at least"), HasSubstr("pairs[0..1] alone"))));
}

// A call that ends while its pairs are read stops there: cancelled while 64 pairs of 15 KB were read, it held
// its admission slot for seconds and was logged as answered (INVALID_ARGUMENT for its size); a drain waited for it
// past its grace period.
TEST_F(ComponentConversionTest, ACallThatEndsWhileItsPairsAreReadStops) {
  v1::AttributeComponentsRequest proto = Request();
  *proto.add_pairs() = proto.pairs(0);
  proto.add_pairs();  // refused for being empty, if read
  int asked = 0;
  EXPECT_THAT(ToComponentsCall(proto, *served_, absl::InfiniteFuture(), int64_t{4} << 20,
                               [&] { return ++asked > 2 ? absl::CancelledError("gone") : absl::OkStatus(); }),
              StatusIs(absl::StatusCode::kCancelled, "gone"));
  EXPECT_EQ(asked, 3);
}

TEST_F(ComponentConversionTest, EveryMethodMapsToItsEngineMethodAndBack) {
  const std::map<v1::ComponentMethod, engine::ComponentMethod> expected = {
      {v1::ACTIVATION_PATCHING, engine::ComponentMethod::kActivationPatching},
      {v1::LAYER_INTEGRATED_GRADIENTS, engine::ComponentMethod::kLayerIntegratedGradients},
      {v1::ATTRIBUTION_PATCHING, engine::ComponentMethod::kAttributionPatching},
      {v1::ATTRIBUTION_PATCHING_STAR, engine::ComponentMethod::kAttributionPatchingStar},
  };
  for (v1::ComponentMethod method : SpecifiedValues<v1::ComponentMethod>(v1::ComponentMethod_descriptor())) {
    SCOPED_TRACE(v1::ComponentMethod_Name(method));
    ASSERT_EQ(expected.count(method), 1u);
    v1::AttributeComponentsRequest proto = Request();
    proto.set_method(method);
    absl::StatusOr<ComponentsCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.method, expected.at(method));
    EXPECT_EQ(Respond(*call, {}).method(), method);
  }
}

// n_steps and rule beside a method without steps were accepted and ignored without a word, where Attribute
// names such settings: the answer names them; layer integrated gradients reads both.
TEST_F(ComponentConversionTest, StepsAndRuleBesideAMethodWithoutStepsAreNamedAsUnread) {
  for (v1::ComponentMethod method : SpecifiedValues<v1::ComponentMethod>(v1::ComponentMethod_descriptor())) {
    SCOPED_TRACE(v1::ComponentMethod_Name(method));
    v1::AttributeComponentsRequest proto = Request();
    proto.set_method(method);
    proto.set_n_steps(8);
    proto.set_rule(v1::RIEMANN_LEFT);
    absl::StatusOr<ComponentsCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    const v1::AttributeComponentsResponse response = Respond(*call, {});
    if (method == v1::LAYER_INTEGRATED_GRADIENTS) {
      EXPECT_THAT(response.unread_settings(), ::testing::IsEmpty());
    } else {
      EXPECT_THAT(response.unread_settings(), ElementsAre("n_steps", "rule"));
    }
  }
  EXPECT_THAT(Respond(*Convert(Request()), {}).unread_settings(), ::testing::IsEmpty());
}

TEST_F(ComponentConversionTest, EveryMetricMapsToItsEngineMetricAndBack) {
  struct Expected {
    engine::ComponentMetric metric;
    bool compares;  // reads wrong_answer
  };
  const std::map<v1::ComponentMetric, Expected> expected = {
      {v1::LOGIT_DIFFERENCE, {engine::ComponentMetric::kLogitDifference, true}},
      {v1::NORMALIZED_LOGIT_DIFFERENCE, {engine::ComponentMetric::kNormalizedLogitDifference, true}},
      {v1::ANSWER_LOG_PROB, {engine::ComponentMetric::kLogProb, false}},
      {v1::ANSWER_PROB, {engine::ComponentMetric::kProb, false}},
      {v1::PROB_DIFFERENCE, {engine::ComponentMetric::kProbDifference, true}},
  };
  for (v1::ComponentMetric metric : SpecifiedValues<v1::ComponentMetric>(v1::ComponentMetric_descriptor())) {
    SCOPED_TRACE(v1::ComponentMetric_Name(metric));
    ASSERT_EQ(expected.count(metric), 1u);
    v1::AttributeComponentsRequest proto = Request();
    proto.set_metric(metric);
    if (!expected.at(metric).compares) {
      EXPECT_THAT(Convert(proto), StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("wrong_answer: ")));
      proto.clear_wrong_answer();
    }
    absl::StatusOr<ComponentsCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.metric, expected.at(metric).metric);
    EXPECT_EQ(Respond(*call, {}).metric(), metric);
  }
}

TEST_F(ComponentConversionTest, EveryDirectionMapsToItsEngineDirectionAndBack) {
  const std::map<v1::PatchDirection, engine::PatchDirection> expected = {
      {v1::DENOISING, engine::PatchDirection::kDenoising},
      {v1::NOISING, engine::PatchDirection::kNoising},
  };
  for (v1::PatchDirection direction : SpecifiedValues<v1::PatchDirection>(v1::PatchDirection_descriptor())) {
    SCOPED_TRACE(v1::PatchDirection_Name(direction));
    ASSERT_EQ(expected.count(direction), 1u);
    v1::AttributeComponentsRequest proto = Request();
    proto.set_direction(direction);
    absl::StatusOr<ComponentsCall> call = Convert(proto);
    ASSERT_THAT(call, IsOk());
    EXPECT_EQ(call->request.direction, expected.at(direction));
    EXPECT_EQ(Respond(*call, {}).direction(), direction);
  }
}

// Each site at each granularity it has: the request carries both, and a grid of them is answered with the
// same proto values.
TEST_F(ComponentConversionTest, EverySiteAndGranularityMapsToTheEnginesAndBack) {
  const std::map<v1::ComponentSite, engine::ComponentSite> sites = {
      {v1::ATTENTION_HEADS, engine::ComponentSite::kHeads},
      {v1::ATTENTION_OUTPUT, engine::ComponentSite::kAttnOut},
      {v1::MLP_OUTPUT, engine::ComponentSite::kMlpOut},
      {v1::RESIDUAL_PRE, engine::ComponentSite::kResidPre},
  };
  const std::map<v1::ComponentGranularity, engine::ComponentGranularity> granularities = {
      {v1::LAYER_HEAD, engine::ComponentGranularity::kLayerHead},
      {v1::LAYER_POSITION, engine::ComponentGranularity::kLayerPosition},
      {v1::LAYER_POSITION_HEAD, engine::ComponentGranularity::kLayerPositionHead},
  };
  for (v1::ComponentSite site : SpecifiedValues<v1::ComponentSite>(v1::ComponentSite_descriptor())) {
    ASSERT_EQ(sites.count(site), 1u) << v1::ComponentSite_Name(site);
    for (v1::ComponentGranularity granularity :
         SpecifiedValues<v1::ComponentGranularity>(v1::ComponentGranularity_descriptor())) {
      SCOPED_TRACE(v1::ComponentSite_Name(site) + " " + v1::ComponentGranularity_Name(granularity));
      ASSERT_EQ(granularities.count(granularity), 1u);
      if (!engine::SiteHasGranularity(sites.at(site), granularities.at(granularity))) continue;
      v1::AttributeComponentsRequest proto = Request();
      proto.add_sites(site);
      proto.set_granularity(granularity);
      absl::StatusOr<ComponentsCall> call = Convert(proto);
      ASSERT_THAT(call, IsOk());
      EXPECT_THAT(call->request.sites, ElementsAre(sites.at(site)));
      EXPECT_EQ(call->request.granularity, granularities.at(granularity));
      engine::ComponentResult result;
      result.grids.push_back({.site = sites.at(site), .granularity = granularities.at(granularity)});
      const v1::AttributeComponentsResponse response = Respond(*call, result);
      ASSERT_EQ(response.grids_size(), 1);
      EXPECT_EQ(response.grids(0).site(), site);
      EXPECT_EQ(response.grids(0).granularity(), granularity);
    }
  }
}

TEST_F(ComponentConversionTest, UnknownEnumValuesNameTheFieldAndTheValidNames) {
  struct Case {
    std::string field, a_valid_name;
    std::function<void(v1::AttributeComponentsRequest&)> set;
  };
  const std::vector<Case> cases = {
      {"method", "ATTRIBUTION_PATCHING_STAR",
       [](auto& p) { p.set_method(static_cast<v1::ComponentMethod>(kUnknownEnumValue)); }},
      {"metric", "PROB_DIFFERENCE", [](auto& p) { p.set_metric(static_cast<v1::ComponentMetric>(kUnknownEnumValue)); }},
      {"direction", "NOISING", [](auto& p) { p.set_direction(static_cast<v1::PatchDirection>(kUnknownEnumValue)); }},
      {"sites[1]", "RESIDUAL_PRE",
       [](auto& p) {
         p.add_sites(v1::MLP_OUTPUT);
         p.add_sites(static_cast<v1::ComponentSite>(kUnknownEnumValue));
       }},
      {"granularity", "LAYER_POSITION_HEAD",
       [](auto& p) { p.set_granularity(static_cast<v1::ComponentGranularity>(kUnknownEnumValue)); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    v1::AttributeComponentsRequest proto = Request();
    c.set(proto);
    EXPECT_THAT(Convert(proto),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(StartsWith(c.field + ": "), HasSubstr("77"), HasSubstr(c.a_valid_name))));
  }
  v1::AttributeComponentsRequest proto = Request();
  proto.add_sites(v1::COMPONENT_SITE_UNSPECIFIED);
  EXPECT_THAT(Convert(proto), StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("sites[0]: ")));
}

// An answer of thousands of tokens is refused with a short message: a status message past gRPC's 8 KiB
// metadata limit reaches the caller as RESOURCE_EXHAUSTED.
TEST_F(ComponentConversionTest, AnAnswerOfManyTokensIsQuotedShortly) {
  v1::AttributeComponentsRequest proto = Request();
  proto.mutable_answer()->clear_text();
  for (int i = 0; i < 3000; ++i) proto.mutable_answer()->add_token_ids(298);
  const absl::StatusOr<ComponentsCall> call = Convert(proto);
  EXPECT_THAT(call, StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("answer: must be one token; it is 3000")));
  EXPECT_LT(call.status().message().size(), 200u);
}

// Messages of the engine's validation name values as the caller sent them.
TEST_F(ComponentConversionTest, EngineMessagesUseTheApisNames) {
  v1::AttributeComponentsRequest twice = Request();
  twice.add_sites(v1::ATTENTION_OUTPUT);
  twice.add_sites(v1::ATTENTION_OUTPUT);
  EXPECT_THAT(Convert(twice),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("attention_output is named twice")));
  v1::AttributeComponentsRequest same = Request();
  same.set_metric(v1::PROB_DIFFERENCE);
  same.mutable_wrong_answer()->set_text(" Yes");
  EXPECT_THAT(Convert(same), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prob_difference compares")));
}

}  // namespace
}  // namespace attribution::server
