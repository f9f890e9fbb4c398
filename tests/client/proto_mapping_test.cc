// SPDX-License-Identifier: Apache-2.0
// The client's mapping of server responses (client/proto_mapping.h) without a server: responses shaped
// as server/conversion.cc and server/component_conversion.cc build them map to the client's types
// value for value, and each shape the renderers index by, broken on its own, is DATA_LOSS naming the
// field.
#include "client/proto_mapping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace attribution::client {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::StatusCode kDataLoss = absl::StatusCode::kDataLoss;

void AddToken(int64_t id, const std::string& text, int64_t char_begin, bool special,
              google::protobuf::RepeatedPtrField<v1::Token>* out) {
  v1::Token* token = out->Add();
  token->set_id(id);
  token->set_text(text);
  token->set_token_bytes(text);
  token->set_char_begin(char_begin);
  token->set_char_end(char_begin + static_cast<int64_t>(text.size()));
  token->set_special(special);
}

// "Is it?" after bos, target " No ." with the token matrix and faithfulness: the bos is fixed (no feature
// by default), each other prompt token one feature.
v1::AttributeResponse WellFormedAttribution() {
  v1::AttributeResponse r;
  r.set_model("demo");
  r.set_method(v1::INTEGRATED_GRADIENTS);
  AddToken(1, "<s>", 0, true, r.mutable_prompt_tokens());
  AddToken(40, "Is", 0, false, r.mutable_prompt_tokens());
  AddToken(41, " it", 2, false, r.mutable_prompt_tokens());
  AddToken(42, "?", 5, false, r.mutable_prompt_tokens());
  AddToken(50, " No", 0, false, r.mutable_target_tokens());
  AddToken(51, " .", 3, false, r.mutable_target_tokens());
  for (int64_t p = 1; p <= 3; ++p) {
    v1::Feature* feature = r.add_features();
    feature->set_token_begin(p);
    feature->set_token_end(p + 1);
    feature->set_text(r.prompt_tokens(static_cast<int>(p)).text());
  }
  r.add_fixed_tokens(0);
  for (double v : {0.5, -0.25, 0.125}) r.add_sequence_attribution(v);
  for (const auto& row : {std::vector<double>{0.25, -0.125, 0.0625}, std::vector<double>{0.25, -0.125, 0.0625}}) {
    r.add_token_matrix()->mutable_values()->Assign(row.begin(), row.end());
  }
  r.set_objective(-1.5);
  r.set_convergence_delta(0.001);
  r.set_integration_steps(50);
  v1::Faithfulness* f = r.mutable_faithfulness();
  for (double p : {1, 5, 10, 20, 50}) f->add_percents(p);
  for (int64_t n : {1, 1, 1, 1, 2}) f->add_features_at(n);  // ceil(percent% of 3 features)
  f->set_full(0.25);
  f->set_empty(0.125);
  for (double p : {0.2, 0.2, 0.2, 0.2, 0.15}) f->add_deletion(p);
  for (double p : {0.15, 0.15, 0.15, 0.15, 0.2}) f->add_insertion(p);
  r.mutable_stats()->set_rows(51);
  return r;
}

// gRPC drops a connection whose metadata passes 8 KiB, failing its other calls as RESOURCE_EXHAUSTED: a
// request id over 1 KiB is refused before the call, naming the option, for every request kind.
TEST(ProtoMapping, RequestIdsOverOneKibibyteAreRefused) {
  const std::string longest(kMaxRequestIdBytes, 'r'), longer(kMaxRequestIdBytes + 1, 'r');
  EXPECT_THAT(ToProto(AttributeOptions{.prompt = "p", .request_id = longest}), IsOk());
  EXPECT_THAT(ToProto(AttributeOptions{.prompt = "p", .request_id = longer}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id: 1025 bytes")));
  EXPECT_THAT(ToProto(GenerateOptions{.prompt = "p", .request_id = longer}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
  EXPECT_THAT(ToProto(LogprobsOptions{.prompt = "p", .target = "t", .request_id = longer}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
  EXPECT_THAT(ToProto(ComponentOptions{.request_id = longer}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
}

// A byte outside printable ASCII in gRPC metadata is an assertion failure in gRPC that aborts the
// process: refused before the call instead, naming the option and the byte.
TEST(ProtoMapping, RequestIdsOutsidePrintableAsciiAreRefused) {
  EXPECT_THAT(ToProto(AttributeOptions{.prompt = "p", .request_id = "job-7 row ~42"}), IsOk());
  EXPECT_THAT(ToProto(AttributeOptions{.prompt = "p", .request_id = "r\xc3\xa9"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id: byte 1 (0xc3)")));
  EXPECT_THAT(ToProto(LogprobsOptions{.prompt = "p", .target = "t", .request_id = "a\tb"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id: byte 1 (0x09)")));
  EXPECT_THAT(ToProto(GenerateOptions{.prompt = "p", .request_id = std::string("a\x7f", 2)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id: byte 1 (0x7f)")));
}

TEST(ProtoMapping, MapsAWellFormedAttributeResponse) {
  absl::StatusOr<Attribution> a = FromProto(WellFormedAttribution());
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->model, "demo");
  EXPECT_EQ(a->method, "integrated_gradients");
  ASSERT_EQ(a->prompt_tokens.size(), 4u);
  EXPECT_TRUE(a->prompt_tokens[0].special);
  EXPECT_EQ(a->prompt_tokens[2].text, " it");
  EXPECT_EQ(a->prompt_tokens[2].char_begin, 2);
  EXPECT_EQ(a->prompt_tokens[2].char_end, 5);
  ASSERT_EQ(a->target_tokens.size(), 2u);
  EXPECT_EQ(a->target_tokens[0].id, 50);
  ASSERT_EQ(a->features.size(), 3u);
  EXPECT_EQ(a->features[2].token_begin, 3);
  EXPECT_EQ(a->features[2].token_end, 4);
  EXPECT_EQ(a->features[2].text, "?");
  EXPECT_THAT(a->fixed_tokens, ElementsAre(0));
  EXPECT_THAT(a->sequence, ElementsAre(0.5, -0.25, 0.125));
  ASSERT_EQ(a->token_matrix.size(), 2u);
  EXPECT_THAT(a->token_matrix[1], ElementsAre(0.25, -0.125, 0.0625));
  EXPECT_EQ(a->objective, -1.5);
  EXPECT_EQ(a->convergence_delta, 0.001);
  EXPECT_EQ(a->integration_steps, 50);
  EXPECT_FALSE(a->tolerance_met.has_value());
  ASSERT_TRUE(a->faithfulness.has_value());
  EXPECT_THAT(a->faithfulness->percents, ElementsAre(1, 5, 10, 20, 50));
  EXPECT_THAT(a->faithfulness->features_at, ElementsAre(1, 1, 1, 1, 2));
  EXPECT_THAT(a->faithfulness->deletion, ElementsAre(0.2, 0.2, 0.2, 0.2, 0.15));
  EXPECT_THAT(a->faithfulness->insertion, ElementsAre(0.15, 0.15, 0.15, 0.15, 0.2));
  EXPECT_EQ(a->stats.rows, 51);
}

// A newer server's method reads as its number, as the Python client and the component enums show it (it read
// as "", and `attribution-cli` printed "method ,").
TEST(ProtoMapping, AnUnknownMethodReadsAsItsNumber) {
  v1::AttributeResponse r = WellFormedAttribution();
  r.set_method(static_cast<v1::Method>(42));
  absl::StatusOr<Attribution> a = FromProto(r);
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->method, "42");
}

TEST(ProtoMapping, MapsAnAttributeResponseWithoutMatrixOrFaithfulness) {
  v1::AttributeResponse r = WellFormedAttribution();
  r.clear_token_matrix();
  r.clear_faithfulness();
  absl::StatusOr<Attribution> a = FromProto(r);
  ASSERT_THAT(a, IsOk());
  EXPECT_TRUE(a->token_matrix.empty());
  EXPECT_FALSE(a->faithfulness.has_value());
}

TEST(ProtoMapping, RefusesAFeatureThatIsNoNonEmptySpanOfThePrompt) {
  v1::AttributeResponse past_end = WellFormedAttribution();
  past_end.mutable_features(2)->set_token_end(5);
  EXPECT_THAT(FromProto(past_end),
              StatusIs(kDataLoss, AllOf(StartsWith("AttributeResponse.features[2]: "),
                                        HasSubstr("[3, 5) are not a non-empty span of the 4 prompt tokens"))));
  v1::AttributeResponse empty = WellFormedAttribution();
  empty.mutable_features(2)->set_token_end(3);
  EXPECT_THAT(FromProto(empty), StatusIs(kDataLoss, AllOf(StartsWith("AttributeResponse.features[2]: "),
                                                          HasSubstr("[3, 3) are not a non-empty span"))));
  v1::AttributeResponse negative = WellFormedAttribution();
  negative.mutable_features(0)->set_token_begin(-1);
  EXPECT_THAT(FromProto(negative), StatusIs(kDataLoss, AllOf(StartsWith("AttributeResponse.features[0]: "),
                                                             HasSubstr("[-1, 2) are not a non-empty span"))));
}

TEST(ProtoMapping, RefusesFeaturesThatOverlapOrGoBack) {
  v1::AttributeResponse r = WellFormedAttribution();
  r.mutable_features(1)->set_token_begin(1);  // [1, 3) after [1, 2)
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss, AllOf(StartsWith("AttributeResponse.features[1]: "),
                                                      HasSubstr("starts at token 1, before the previous feature "
                                                                "ends (2)"))));
}

TEST(ProtoMapping, RefusesASequenceAttributionNotOnePerFeature) {
  v1::AttributeResponse fewer = WellFormedAttribution();
  fewer.mutable_sequence_attribution()->RemoveLast();
  EXPECT_THAT(FromProto(fewer), StatusIs(kDataLoss,
                                         "AttributeResponse.sequence_attribution: 2 values, expected 3 "
                                         "(one per feature)"));
  v1::AttributeResponse more = WellFormedAttribution();
  more.add_sequence_attribution(1);
  EXPECT_THAT(FromProto(more), StatusIs(kDataLoss, HasSubstr("AttributeResponse.sequence_attribution: 4 values")));
}

TEST(ProtoMapping, RefusesAFixedTokenOutsideThePrompt) {
  v1::AttributeResponse past_end = WellFormedAttribution();
  past_end.add_fixed_tokens(4);
  EXPECT_THAT(FromProto(past_end),
              StatusIs(kDataLoss, "AttributeResponse.fixed_tokens[1]: token 4 is outside the 4 prompt tokens"));
  v1::AttributeResponse negative = WellFormedAttribution();
  negative.set_fixed_tokens(0, -1);
  EXPECT_THAT(FromProto(negative), StatusIs(kDataLoss, HasSubstr("AttributeResponse.fixed_tokens[0]: token -1")));
}

TEST(ProtoMapping, RefusesATokenMatrixNotOneRowPerTargetToken) {
  v1::AttributeResponse r = WellFormedAttribution();
  *r.add_token_matrix() = r.token_matrix(0);
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "AttributeResponse.token_matrix: 3 rows, expected 2 (one per "
                                     "target token)"));
}

TEST(ProtoMapping, RefusesATokenMatrixRowNotOneValuePerFeature) {
  v1::AttributeResponse r = WellFormedAttribution();
  r.mutable_token_matrix(1)->mutable_values()->RemoveLast();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "AttributeResponse.token_matrix: row 1 has 2 values, expected 3 (one "
                                     "per feature)"));
}

TEST(ProtoMapping, RefusesFaithfulnessCurvesNotOnePointPerPercent) {
  v1::AttributeResponse features_at = WellFormedAttribution();
  features_at.mutable_faithfulness()->add_features_at(3);
  EXPECT_THAT(FromProto(features_at), StatusIs(kDataLoss,
                                               "AttributeResponse.faithfulness.features_at: 6 values, "
                                               "expected 5 (one per percent)"));
  v1::AttributeResponse deletion = WellFormedAttribution();
  deletion.mutable_faithfulness()->mutable_deletion()->RemoveLast();
  EXPECT_THAT(FromProto(deletion), StatusIs(kDataLoss, HasSubstr("AttributeResponse.faithfulness.deletion: 4 values")));
  v1::AttributeResponse insertion = WellFormedAttribution();
  insertion.mutable_faithfulness()->mutable_insertion()->RemoveLast();
  EXPECT_THAT(FromProto(insertion),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.faithfulness.insertion: 4 values")));
}

TEST(ProtoMapping, RefusesFaithfulnessRemovingMoreFeaturesThanThereAre) {
  v1::AttributeResponse more = WellFormedAttribution();
  more.mutable_faithfulness()->set_features_at(4, 4);
  EXPECT_THAT(FromProto(more),
              StatusIs(kDataLoss, "AttributeResponse.faithfulness.features_at[4]: 4 features, outside [0, 3]"));
  v1::AttributeResponse negative = WellFormedAttribution();
  negative.mutable_faithfulness()->set_features_at(0, -1);
  EXPECT_THAT(FromProto(negative), StatusIs(kDataLoss, HasSubstr("AttributeResponse.faithfulness.features_at[0]: -1")));
}

void AddGrid(v1::ComponentSite site, v1::ComponentGranularity granularity, const std::vector<int64_t>& shape,
             const std::vector<std::string>& axes, bool deltas, v1::ComponentGrid* out) {
  out->set_site(site);
  out->set_granularity(granularity);
  out->mutable_shape()->Add(shape.begin(), shape.end());
  for (const std::string& axis : axes) out->add_axes(axis);
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  for (int64_t i = 0; i < n; ++i) out->add_values(0.5 * static_cast<double>(i));
  for (int64_t i = 0; deltas && i < n; ++i) out->add_convergence_deltas(0.001);
}

// Layer integrated gradients on a 2-layer, 3-head model, one pair of 4 tokens: the three granularities.
void AddGrids(google::protobuf::RepeatedPtrField<v1::ComponentGrid>* out) {
  AddGrid(v1::ATTENTION_HEADS, v1::LAYER_HEAD, {2, 3}, {"layer", "head"}, true, out->Add());
  AddGrid(v1::RESIDUAL_PRE, v1::LAYER_POSITION, {2, 4}, {"layer", "position"}, true, out->Add());
  AddGrid(v1::ATTENTION_HEADS, v1::LAYER_POSITION_HEAD, {2, 4, 3}, {"layer", "position", "head"}, true, out->Add());
}

v1::AttributeComponentsResponse WellFormedComponents() {
  v1::AttributeComponentsResponse r;
  r.set_model("demo");
  r.set_method(v1::LAYER_INTEGRATED_GRADIENTS);
  r.set_metric(v1::LOGIT_DIFFERENCE);
  r.set_direction(v1::DENOISING);
  AddGrids(r.mutable_grids());
  v1::PairComponents* pair = r.add_pairs();
  pair->set_clean_metric(2.5);
  pair->set_corrupted_metric(-1);
  AddGrids(pair->mutable_grids());
  for (const char* text : {"<s>", "When", " Mary", " gave"}) AddToken(7, text, 0, false, pair->mutable_clean_tokens());
  for (const char* text : {"<s>", "When", " John", " gave"}) {
    AddToken(8, text, 0, false, pair->mutable_corrupted_tokens());
  }
  r.mutable_answer()->set_id(60);
  r.mutable_answer()->set_text(" John");
  r.mutable_wrong_answer()->set_id(61);
  r.mutable_wrong_answer()->set_text(" Mary");
  r.mutable_stats()->set_rows(96);
  return r;
}

TEST(ProtoMapping, MapsAWellFormedComponentResponse) {
  absl::StatusOr<ComponentAttribution> a = FromProto(WellFormedComponents());
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->model, "demo");
  EXPECT_EQ(a->method, "layer_integrated_gradients");
  EXPECT_EQ(a->metric, "logit_difference");
  EXPECT_EQ(a->direction, "denoising");
  ASSERT_EQ(a->grids.size(), 3u);
  EXPECT_EQ(a->grids[0].site, "heads");
  EXPECT_EQ(a->grids[0].granularity, "layer_head");
  EXPECT_THAT(a->grids[0].shape, ElementsAre(2, 3));
  EXPECT_THAT(a->grids[0].axes, ElementsAre("layer", "head"));
  EXPECT_THAT(a->grids[0].values, ElementsAre(0, 0.5, 1, 1.5, 2, 2.5));
  EXPECT_EQ(a->grids[0].convergence_deltas.size(), 6u);
  EXPECT_EQ(a->grids[1].site, "resid_pre");
  EXPECT_THAT(a->grids[2].axes, ElementsAre("layer", "position", "head"));
  EXPECT_EQ(a->grids[2].values.size(), 24u);
  ASSERT_EQ(a->pairs.size(), 1u);
  EXPECT_EQ(a->pairs[0].clean_metric, 2.5);
  EXPECT_EQ(a->pairs[0].grids.size(), 3u);
  ASSERT_EQ(a->pairs[0].corrupted_tokens.size(), 4u);
  EXPECT_EQ(a->pairs[0].corrupted_tokens[2].text, " John");
  EXPECT_EQ(a->answer.id, 60);
  EXPECT_EQ(a->wrong_answer.text, " Mary");
  EXPECT_EQ(a->stats.rows, 96);
}

TEST(ProtoMapping, MapsGridsWithoutConvergenceDeltas) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  r.set_method(v1::ACTIVATION_PATCHING);
  for (v1::ComponentGrid& g : *r.mutable_grids()) g.clear_convergence_deltas();
  for (v1::ComponentGrid& g : *r.mutable_pairs(0)->mutable_grids()) g.clear_convergence_deltas();
  absl::StatusOr<ComponentAttribution> a = FromProto(r);
  ASSERT_THAT(a, IsOk());
  EXPECT_TRUE(a->grids[0].convergence_deltas.empty());
}

TEST(ProtoMapping, RefusesGridAxesOfNoKnownLayout) {
  v1::AttributeComponentsResponse swapped = WellFormedComponents();
  swapped.mutable_grids(0)->set_axes(0, "head");
  swapped.mutable_grids(0)->set_axes(1, "layer");
  EXPECT_THAT(FromProto(swapped), StatusIs(kDataLoss,
                                           "AttributeComponentsResponse.grids[0].axes: [head, layer] is "
                                           "not [layer, head], [layer, position] or [layer, position, "
                                           "head]"));
  v1::AttributeComponentsResponse pair = WellFormedComponents();
  pair.mutable_pairs(0)->mutable_grids(2)->set_axes(1, "column");
  EXPECT_THAT(FromProto(pair), StatusIs(kDataLoss, HasSubstr("AttributeComponentsResponse.pairs[0].grids[2].axes: "
                                                             "[layer, column, head]")));
}

TEST(ProtoMapping, RefusesAGridShapeNotOneSizePerAxis) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  r.mutable_grids(0)->add_shape(1);  // [2, 3, 1]: still 6 values
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "AttributeComponentsResponse.grids[0].shape: 3 sizes, expected 2 (one "
                                     "per axis)"));
}

TEST(ProtoMapping, RefusesANegativeGridSize) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  r.mutable_pairs(0)->mutable_grids(0)->set_shape(0, -2);  // [-2, -3]: still 6 values
  r.mutable_pairs(0)->mutable_grids(0)->set_shape(1, -3);
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss, "AttributeComponentsResponse.pairs[0].grids[0].shape[0]: -2 < 1"));
}

// A size of 0 beside sizes of 2^30 made a product of 0 that no values matched: the CLI then ran out of memory
// building tables of 2^30 x 2^30.
TEST(ProtoMapping, RefusesAnEmptyGridAxis) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  v1::ComponentGrid* grid = r.mutable_pairs(0)->mutable_grids(0);
  grid->set_shape(0, int64_t{1} << 30);
  grid->set_shape(1, 0);
  grid->clear_values();
  grid->clear_convergence_deltas();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss, "AttributeComponentsResponse.pairs[0].grids[0].shape[1]: 0 < 1"));
}

TEST(ProtoMapping, RefusesGridValuesNotTheProductOfTheShape) {
  v1::AttributeComponentsResponse fewer = WellFormedComponents();
  fewer.mutable_grids(2)->mutable_values()->RemoveLast();
  fewer.mutable_grids(2)->mutable_convergence_deltas()->RemoveLast();
  EXPECT_THAT(FromProto(fewer), StatusIs(kDataLoss,
                                         "AttributeComponentsResponse.grids[2].values: 23 values, expected "
                                         "the product of shape [2, 4, 3] = 24"));
  // A product past int64 must not wrap around to the values' count (2^62 * 4 = 2^64 = 0).
  v1::AttributeComponentsResponse overflow = WellFormedComponents();
  v1::ComponentGrid* grid = overflow.mutable_grids(0);
  grid->set_shape(0, int64_t{1} << 62);
  grid->set_shape(1, 4);
  grid->clear_values();
  grid->clear_convergence_deltas();
  EXPECT_THAT(FromProto(overflow), StatusIs(kDataLoss,
                                            "AttributeComponentsResponse.grids[0].values: 0 values, "
                                            "expected the product of shape [4611686018427387904, 4]"));
}

TEST(ProtoMapping, RefusesConvergenceDeltasNotOnePerComponent) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  r.mutable_grids(1)->mutable_convergence_deltas()->RemoveLast();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "AttributeComponentsResponse.grids[1].convergence_deltas: 7 values, "
                                     "expected 0 or 8 (one per component)"));
}

TEST(ProtoMapping, RefusesAPairWhosePromptsDifferInLength) {
  v1::AttributeComponentsResponse r = WellFormedComponents();
  r.mutable_pairs(0)->mutable_corrupted_tokens()->RemoveLast();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "AttributeComponentsResponse.pairs[0].corrupted_tokens: 3 tokens, "
                                     "expected 4 (as many as clean_tokens)"));
}

v1::LogprobsResponse WellFormedLogprobs() {
  v1::LogprobsResponse r;
  r.set_model("demo");
  AddToken(1, "<s>", 0, true, r.mutable_prompt_tokens());
  AddToken(40, "Is", 0, false, r.mutable_prompt_tokens());
  struct Scored {
    int64_t id;
    const char* text;
    float log_prob;
  };
  for (const Scored& scored : {Scored{50, " No", -0.5f}, Scored{51, ".", -1}}) {
    v1::TokenLogprob* entry = r.add_target();
    entry->mutable_token()->set_id(scored.id);
    entry->mutable_token()->set_text(scored.text);
    entry->mutable_token()->set_log_prob(scored.log_prob);
    v1::TopToken* top = entry->add_top();
    top->set_id(scored.id);
    top->set_text(scored.text);
    top->set_log_prob(scored.log_prob);
  }
  r.set_total_log_prob(-1.5);
  return r;
}

TEST(ProtoMapping, MapsAWellFormedLogprobsResponse) {
  absl::StatusOr<Logprobs> l = FromProto(WellFormedLogprobs());
  ASSERT_THAT(l, IsOk());
  ASSERT_EQ(l->prompt_tokens.size(), 2u);
  ASSERT_EQ(l->target.size(), 2u);
  EXPECT_EQ(l->target[0].token.text, " No");
  EXPECT_EQ(l->target[1].token.log_prob, -1);
  ASSERT_EQ(l->target[1].top.size(), 1u);
  EXPECT_EQ(l->target[1].top[0].id, 51);
  EXPECT_EQ(l->total_log_prob, -1.5);
}

TEST(ProtoMapping, RefusesALogprobsEntryWithoutItsToken) {
  v1::LogprobsResponse r = WellFormedLogprobs();
  r.mutable_target(1)->clear_token();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss, "LogprobsResponse.target[1].token: missing"));
}

v1::ListModelsResponse WellFormedModels() {
  v1::ListModelsResponse r;
  for (const char* name : {"demo", "tiny-qa-llama"}) {
    v1::ModelInfo* m = r.add_models();
    m->set_name(name);
    m->set_architecture("llama");
    m->set_vocab_size(256);
    m->mutable_limits()->set_max_steps(512);
  }
  return r;
}

TEST(ProtoMapping, MapsAWellFormedListModelsResponse) {
  absl::StatusOr<std::vector<ModelInfo>> models = FromProto(WellFormedModels());
  ASSERT_THAT(models, IsOk());
  ASSERT_EQ(models->size(), 2u);
  EXPECT_EQ((*models)[1].name, "tiny-qa-llama");
  EXPECT_EQ((*models)[1].vocab_size, 256);
  EXPECT_EQ((*models)[1].max_steps, 512);
}

TEST(ProtoMapping, RefusesAModelWithoutAName) {
  v1::ListModelsResponse r = WellFormedModels();
  r.mutable_models(1)->clear_name();
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss, "ListModelsResponse.models[1].name: empty"));
}

TEST(ProtoMapping, RefusesTwoModelsOfOneName) {
  v1::ListModelsResponse r = WellFormedModels();
  r.mutable_models(1)->set_name("demo");
  EXPECT_THAT(FromProto(r), StatusIs(kDataLoss,
                                     "ListModelsResponse.models[1].name: \"demo\" names an earlier model "
                                     "too"));
}

TEST(ProtoMapping, MapsAGenerateResponse) {
  v1::GenerateResponse r;
  AddToken(1, "<s>", 0, true, r.mutable_prompt_tokens());
  AddToken(50, " No", 0, false, r.mutable_tokens());
  r.mutable_tokens(0)->set_log_prob(-0.5f);
  r.set_text(" No");
  r.set_text_bytes(" No");
  r.set_stopped(true);
  absl::StatusOr<Generation> g = FromProto(r);
  ASSERT_THAT(g, IsOk());
  ASSERT_EQ(g->tokens.size(), 1u);
  EXPECT_EQ(g->tokens[0].log_prob, -0.5f);
  EXPECT_EQ(g->text, " No");
  EXPECT_TRUE(g->stopped);
}

}  // namespace
}  // namespace attribution::client
