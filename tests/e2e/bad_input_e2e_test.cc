// SPDX-License-Identifier: Apache-2.0
// Every bad input gets the right status code and a message naming the field, and harms nothing: after
// the whole table (sent concurrently with good calls) the server still gives the same correct answers.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <functional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "client/attribution_client.h"
#include "tests/testing/demo_requests.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::DemoLogprobsRequest;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using grpc::StatusCode;
using test_support::ServerProcess;
using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pointwise;

v1::AttributeRequest GoodAttribute() {
  v1::AttributeRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Is it true that vaccines cause autism?");
  r.mutable_target()->set_text(" No");
  r.set_n_steps(8);
  return r;
}

v1::GenerateRequest GoodGenerate() {
  v1::GenerateRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Once upon a time");
  r.mutable_generation()->set_max_new_tokens(4);
  return r;
}

struct BadCase {
  std::string name;
  std::function<grpc::Status(v1::AttributionService::Stub&)> call;
  StatusCode code;
  std::string message;  // a substring naming the field or the problem
  std::string absent;   // a substring it must not hold (e.g. a field of another RPC)
};

template <typename Mutate>
BadCase Attribute(std::string name, Mutate mutate, StatusCode code, std::string message) {
  return {std::move(name),
          [mutate](v1::AttributionService::Stub& stub) {
            v1::AttributeRequest request = GoodAttribute();
            mutate(request);
            grpc::ClientContext context;
            v1::AttributeResponse response;
            return stub.Attribute(&context, request, &response);
          },
          code, std::move(message)};
}

template <typename Mutate>
BadCase Generate(std::string name, Mutate mutate, StatusCode code, std::string message) {
  return {std::move(name),
          [mutate](v1::AttributionService::Stub& stub) {
            v1::GenerateRequest request = GoodGenerate();
            mutate(request);
            grpc::ClientContext context;
            v1::GenerateResponse response;
            return stub.Generate(&context, request, &response);
          },
          code, std::move(message)};
}

template <typename Mutate>
BadCase Logprobs(std::string name, Mutate mutate, StatusCode code, std::string message) {
  return {std::move(name),
          [mutate](v1::AttributionService::Stub& stub) {
            v1::LogprobsRequest request = DemoLogprobsRequest();
            mutate(request);
            grpc::ClientContext context;
            v1::LogprobsResponse response;
            return stub.Logprobs(&context, request, &response);
          },
          code, std::move(message)};
}

std::vector<BadCase> BadCases() {
  constexpr auto kInvalid = StatusCode::INVALID_ARGUMENT;
  using A = v1::AttributeRequest;
  using G = v1::GenerateRequest;
  using L = v1::LogprobsRequest;
  return {
      Attribute(
          "unknown model", [](A& r) { r.set_model("gpt-9"); }, StatusCode::NOT_FOUND, "no model named \"gpt-9\""),
      Attribute(
          "no model", [](A& r) { r.clear_model(); }, kInvalid, "model"),
      Attribute(
          "unknown method", [](A& r) { r.set_method(static_cast<v1::Method>(99)); }, kInvalid,
          "method: unknown value 99 (one of: METHOD_UNSPECIFIED, INTEGRATED_GRADIENTS,"),
      Attribute(
          "unknown rule", [](A& r) { r.set_rule(static_cast<v1::IntegrationRule>(42)); }, kInvalid,
          "rule: unknown value 42"),
      Attribute(
          "unknown quantity", [](A& r) { r.set_quantity(static_cast<v1::Quantity>(9)); }, kInvalid, "quantity"),
      Attribute(
          "empty choice", [](A& r) { r.add_choices(); }, kInvalid, "choices[0]: is empty"),
      Attribute(
          // Each is tokenized with the prompt: 256 of them after 4,000 tokens held a core for 12 s.
          "text choices times a long prompt",
          [](A& r) {
            std::string prompt;
            for (int i = 0; i < 350; ++i) prompt += "The cup is red. ";  // 3,501 tokens
            prompt.pop_back();
            r.mutable_prompt()->set_text(prompt);
            for (int i = 0; i < 40; ++i) r.add_choices()->set_text(" Yes");
          },
          kInvalid, "choices: 40 text choices after a"),
      Attribute(
          "two-token choice",
          [](A& r) {
            r.add_choices()->add_token_ids(5);
            v1::Input* choice = r.add_choices();
            choice->add_token_ids(6);
            choice->add_token_ids(7);
          },
          kInvalid, "choices[1]: has 2 tokens; a choice is one token"),
      Attribute(
          "target not a choice",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(9);
            r.add_choices()->add_token_ids(5);
            r.add_choices()->add_token_ids(6);
          },
          kInvalid, "choices: the target must be given and be one of the choices"),
      Attribute(
          "one choice",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
          },
          kInvalid, "choices: give at least two"),
      Attribute(
          "choices and a logit",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
            r.add_choices()->add_token_ids(6);
            r.set_quantity(v1::LOGIT);
          },
          kInvalid, "choices: a logit is not renormalised"),
      Attribute(
          "a choice twice",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
          },
          kInvalid, "choices: token 5 is given twice"),
      Attribute(
          "a choice outside the vocabulary",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
            r.add_choices()->add_token_ids(1 << 30);
          },
          kInvalid, "choices[1]"),
      Attribute(
          "choices and a foil",
          [](A& r) {
            r.mutable_target()->Clear();
            r.mutable_target()->add_token_ids(5);
            r.add_choices()->add_token_ids(5);
            r.add_choices()->add_token_ids(6);
            r.set_contrastive(true);
            r.mutable_foil()->add_token_ids(6);
          },
          kInvalid, "choices and foil: one or the other"),
      Attribute(
          "unknown priority", [](A& r) { r.set_priority(static_cast<v1::Priority>(7)); }, kInvalid, "priority"),
      Attribute(
          "unknown baseline", [](A& r) { r.set_baseline(static_cast<v1::BaselineKind>(77)); }, kInvalid, "baseline"),
      Attribute(
          "empty prompt", [](A& r) { r.clear_prompt(); }, kInvalid, "prompt"),
      Attribute(
          "text and ids", [](A& r) { r.mutable_prompt()->add_token_ids(5); }, kInvalid,
          "prompt: set text or token_ids, not both"),
      Attribute(
          "over-long prompt", [](A& r) { r.mutable_prompt()->set_text(std::string(20000, 'x')); }, kInvalid,
          "within 4096 (this model's limits.max_tokens)"),
      Attribute(
          "prompt id out of range",
          [](A& r) {
            r.mutable_prompt()->clear_text();
            r.mutable_prompt()->add_token_ids(1400);
          },
          kInvalid, "prompt: token_ids[0] = 1400 is outside the vocabulary"),
      Attribute(
          "negative prompt id",
          [](A& r) {
            r.mutable_prompt()->clear_text();
            r.mutable_prompt()->add_token_ids(-3);
          },
          kInvalid, "token_ids[0] = -3"),
      Attribute(
          "target id out of range",
          [](A& r) {
            r.mutable_target()->clear_text();
            r.mutable_target()->add_token_ids(99999);
          },
          kInvalid, "target: token_ids[0] = 99999"),
      Attribute(
          "malformed UTF-8 prompt", [](A& r) { r.mutable_prompt()->set_text("bad \xC3\x28 byte"); }, kInvalid,
          "prompt.text"),
      Attribute(
          "malformed UTF-8 target", [](A& r) { r.mutable_target()->set_text("\xFF"); }, kInvalid, "target.text"),
      Attribute(
          "n_steps too large", [](A& r) { r.set_n_steps(5000); }, kInvalid, "n_steps"),
      Attribute(
          "n_steps too small", [](A& r) { r.set_n_steps(-3); }, kInvalid, "n_steps"),
      Attribute(
          "one trapezoid step",
          [](A& r) {
            r.set_n_steps(1);
            r.set_rule(v1::RIEMANN_TRAPEZOID);
          },
          kInvalid, "n_steps = 1 is outside [2, "),
      Attribute(
          "target set but empty", [](A& r) { r.mutable_target()->clear_text(); }, kInvalid, "target: is set but empty"),
      Attribute(
          "unknown target tokenization",
          [](A& r) { r.set_target_tokenization(static_cast<v1::TargetTokenization>(7)); }, kInvalid,
          "target_tokenization: unknown value 7 (one of: TARGET_TOKENIZATION_UNSPECIFIED, CONTINUATION, SEPARATE)"),
      // Checked whatever the target is: ids (where it is not read), or none (generated).
      Attribute(
          "unknown target tokenization beside target ids",
          [](A& r) {
            r.mutable_target()->clear_text();
            r.mutable_target()->add_token_ids(5);
            r.set_target_tokenization(static_cast<v1::TargetTokenization>(99));
          },
          kInvalid, "target_tokenization: unknown value 99"),
      Attribute(
          "unknown target tokenization without a target",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_max_new_tokens(2);
            r.set_target_tokenization(static_cast<v1::TargetTokenization>(99));
          },
          kInvalid, "target_tokenization: unknown value 99"),
      Attribute(
          "target splitting the prompt's last token",
          [](A& r) {
            r.mutable_prompt()->set_text("Once upon a time");
            r.mutable_target()->set_text(" there");
          },
          kInvalid, "target: the text does not start on a token boundary"),
      // The other ways to give such a text are the RPC's own: AttributeComponents has no target_tokenization.
      {"component answer splitting the clean prompt's last token",
       [](v1::AttributionService::Stub& stub) {
         v1::AttributeComponentsRequest r;
         r.set_model("demo");
         r.add_pairs()->mutable_clean()->set_text("Once upon a time");
         r.mutable_pairs(0)->mutable_corrupted()->set_text("Once upon a time");
         r.mutable_answer()->set_text(" there");
         r.mutable_wrong_answer()->add_token_ids(6);
         grpc::ClientContext context;
         v1::AttributeComponentsResponse response;
         return stub.AttributeComponents(&context, r, &response);
       },
       kInvalid, "answer: the text does not start on a token boundary after the prompt: the prompt alone ends in ",
       "target_tokenization"},
      Attribute(
          "prompt of special tokens only",
          [](A& r) {
            r.mutable_prompt()->clear_text();
            r.mutable_prompt()->add_token_ids(1);
          },
          kInvalid, "prompt: holds only special tokens"),
      Attribute(
          "negative n_steps", [](A& r) { r.set_n_steps(-4); }, kInvalid, "n_steps"),
      Attribute(
          "n_samples too large",
          [](A& r) {
            r.set_method(v1::SHAPLEY_VALUE_SAMPLING);
            r.set_n_samples(100000);
          },
          kInvalid, "n_samples"),
      Attribute(
          // 1000 permutations of 200 features: refused before its 200,001 coalitions are built.
          "shapley_value_sampling over the row limit",
          [](A& r) {
            r.mutable_prompt()->clear_text();
            for (int i = 0; i < 200; ++i) r.mutable_prompt()->add_token_ids(300 + i);  // no byte pieces (special)
            r.set_target_tokenization(v1::SEPARATE);
            r.set_method(v1::SHAPLEY_VALUE_SAMPLING);
            r.set_n_samples(1000);
          },
          StatusCode::INVALID_ARGUMENT, "n_samples x features = 1000 x 200"),
      Attribute(
          "a group's baseline beside the zero-embedding baseline",
          [](A& r) {
            v1::FeatureGroup* group = r.add_feature_groups();
            group->set_token_begin(1);
            group->set_token_end(2);
            group->mutable_baseline()->add_token_ids(5);
            r.set_baseline(v1::ZERO_EMBEDDING);
          },
          kInvalid, "feature_groups[0].baseline: not used with the zero-embedding baseline"),
      Attribute(
          // 1024 points x (1 + 100 target tokens): refused before the plan builds its 103,426 rows.
          "integrated_gradients with a token matrix over the row limit",
          [](A& r) {
            r.mutable_target()->clear_text();
            for (int i = 0; i < 100; ++i) r.mutable_target()->add_token_ids(300 + i);
            r.set_target_tokenization(v1::SEPARATE);
            r.set_n_steps(1024);
            r.set_want_token_matrix(true);
          },
          kInvalid, "n_steps x (1 + target tokens with want_token_matrix) = 1024 x 101"),
      Attribute(
          // A generated target is counted at max_new_tokens.
          "gradient_shap with a generated target's token matrix over the row limit",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_max_new_tokens(512);
            r.set_method(v1::GRADIENT_SHAP);
            r.set_n_samples(200);
            r.set_want_token_matrix(true);
          },
          kInvalid, "n_samples x (1 + target tokens with want_token_matrix) = 200 x 513"),
      Attribute(
          "negative n_samples",
          [](A& r) {
            r.set_method(v1::GRADIENT_SHAP);
            r.set_n_samples(-1);
          },
          kInvalid, "n_samples"),
      Attribute(
          "kernel_shap with one sample",
          [](A& r) {
            r.set_method(v1::KERNEL_SHAP);
            r.set_n_samples(1);
          },
          kInvalid, "n_samples = 1"),
      Attribute(
          "kernel_shap with one feature",
          [](A& r) {
            r.set_method(v1::KERNEL_SHAP);
            r.mutable_feature_range()->set_token_begin(1);
            r.mutable_feature_range()->set_token_end(2);
          },
          kInvalid, "number of features for kernel_shap"),
      Attribute(
          "negative stdev",
          [](A& r) {
            r.set_method(v1::GRADIENT_SHAP);
            r.set_stdev(-1);
          },
          kInvalid, "stdev"),
      Attribute(
          "NaN stdev",
          [](A& r) {
            r.set_method(v1::GRADIENT_SHAP);
            r.set_stdev(std::nan(""));
          },
          kInvalid, "stdev"),
      Attribute(
          "exact shapley over the cap", [](A& r) { r.set_method(v1::SHAPLEY_VALUES); }, kInvalid,
          "shapley_values = 24 is outside [1, 12] (it scores every subset of the features: narrow feature_range, "
          "join tokens with feature_groups, or use shapley_value_sampling)"),
      Attribute(
          "contrastive without foil", [](A& r) { r.set_contrastive(true); }, kInvalid,
          "foil: contrastive needs a foil"),
      Attribute(
          "foil without contrastive", [](A& r) { r.mutable_foil()->set_text(" Yes"); }, kInvalid, "contrastive"),
      Attribute(
          "foil of another length",
          [](A& r) {
            r.set_contrastive(true);
            r.mutable_foil()->set_text(" Yes it is so");
          },
          kInvalid, "foil: has"),
      Attribute(
          "contrastive generated target",
          [](A& r) {
            r.clear_target();
            r.set_contrastive(true);
            r.mutable_foil()->set_text(" Yes");
          },
          kInvalid, "needs a given target"),
      Attribute(
          "range past the prompt",
          [](A& r) {
            r.mutable_feature_range()->set_token_begin(2);
            r.mutable_feature_range()->set_token_end(500);
          },
          kInvalid, "feature_range: [2, 500)"),
      Attribute(
          "empty range",
          [](A& r) {
            r.mutable_feature_range()->set_token_begin(3);
            r.mutable_feature_range()->set_token_end(3);
          },
          kInvalid, "feature_range"),
      Attribute(
          "range and groups",
          [](A& r) {
            r.mutable_feature_range()->set_token_end(2);
            r.add_feature_groups()->set_token_end(1);
          },
          kInvalid, "not both"),
      Attribute(
          "group holding bos",
          [](A& r) {
            r.mutable_prompt()->clear_text();
            for (int64_t id : {1, 100, 101}) r.mutable_prompt()->add_token_ids(id);
            r.add_feature_groups()->set_token_end(2);
          },
          kInvalid, "feature_groups[0]: holds the special token at position 0"),
      Attribute(
          "negative group",
          [](A& r) {
            auto* g = r.add_feature_groups();
            g->set_token_begin(-1);
            g->set_token_end(2);
          },
          kInvalid, "feature_groups[0]"),
      Attribute(
          "overlapping groups",
          [](A& r) {
            auto* a = r.add_feature_groups();
            a->set_token_begin(1);
            a->set_token_end(3);
            auto* b = r.add_feature_groups();
            b->set_token_begin(2);
            b->set_token_end(4);
          },
          kInvalid, "feature_groups[1]: starts at token 2"),
      Attribute(
          "group baseline id out of range",
          [](A& r) {
            auto* g = r.add_feature_groups();
            g->set_token_begin(1);
            g->set_token_end(2);
            g->mutable_baseline()->add_token_ids(1 << 20);
          },
          kInvalid, "feature_groups[0].baseline"),
      Attribute(
          "group baselines make rows over max_tokens",
          [](A& r) {
            r.set_method(v1::FEATURE_ABLATION);
            auto* g = r.add_feature_groups();
            g->set_token_begin(1);
            g->set_token_end(3);
            for (int i = 0; i < 30000; ++i) g->mutable_baseline()->add_token_ids(5);
          },
          kInvalid, "feature_groups[0].baseline: with every group up to this one at its baseline a row holds 300"),
      Attribute(
          "target text of megabytes, read as the prompt's continuation",
          [](A& r) {
            r.set_target_tokenization(v1::CONTINUATION);
            r.mutable_target()->set_text(std::string(4'000'000, 'a'));
          },
          kInvalid, "target.text: is 4000000 bytes, over the "),
      Logprobs(
          "prompt text of megabytes", [](L& r) { r.mutable_prompt()->set_text(std::string(4'000'000, 'a')); }, kInvalid,
          "prompt.text: is 4000000 bytes, over the "),
      // U+FDFA is 18 characters in NFKC (a SentencePiece model's default normalizer): 420 KB of it under the
      // byte bound took 3-5 s and 600 MB to encode before its refusal, and two such calls held up the rest.
      Logprobs(
          "prompt text that Unicode normalization expands past the bound",
          [](L& r) {
            std::string text;
            for (int i = 0; i < 40'000; ++i) text += "\uFDFA";
            r.mutable_prompt()->set_text(text);
          },
          kInvalid, "prompt.text: is 120000 bytes (1320000 once Unicode-normalized), over the "),
      Attribute(
          "gradient group baseline length",
          [](A& r) {
            auto* g = r.add_feature_groups();
            g->set_token_begin(1);
            g->set_token_end(3);
            g->mutable_baseline()->add_token_ids(5);
          },
          kInvalid, "one baseline token per position"),
      Attribute(
          "gradient group baseline set but empty (a deletion)",
          [](A& r) {
            auto* g = r.add_feature_groups();
            g->set_token_begin(1);
            g->set_token_end(3);
            g->mutable_baseline();
          },
          kInvalid, "feature_groups[0].baseline: gradient methods need one baseline token per position (2, not 0)"),
      Attribute(
          "group baselines that delete the whole prompt",
          [](A& r) {
            r.set_method(v1::SHAPLEY_VALUE_SAMPLING);
            r.mutable_prompt()->clear_text();
            for (int64_t id : {5, 6, 7}) r.mutable_prompt()->add_token_ids(id);
            r.set_include_special_tokens(true);  // every token a feature: none kept back
            auto* g = r.add_feature_groups();
            g->set_token_begin(0);
            g->set_token_end(3);
            g->mutable_baseline()->set_text("");
          },
          kInvalid, "feature_groups[].baseline: the groups' shorter or empty baselines can leave the prompt empty"),
      Attribute(
          "baseline token out of range",
          [](A& r) {
            r.set_baseline(v1::TOKEN_ID);
            r.set_baseline_token_id(1400);
          },
          kInvalid, "baseline_token_id = 1400 is outside [0, 1399]"),
      Attribute(
          "baseline token without baseline = TOKEN_ID", [](A& r) { r.set_baseline_token_id(5); }, kInvalid,
          "baseline_token_id: is read only with baseline = TOKEN_ID"),
      // Settings the method does not read are checked all the same.
      Attribute(
          "negative n_steps for saliency",
          [](A& r) {
            r.set_method(v1::SALIENCY);
            r.set_n_steps(-1);
          },
          kInvalid, "n_steps = -1 is outside [0, 1024]"),
      // Over a bound that is the model's own limit, the message names it (several models: each its own).
      Attribute(
          "n_steps over the model's limit", [](A& r) { r.set_n_steps(2000); }, kInvalid,
          "n_steps = 2000 is outside [0, 1024] (1024: this model's limits.max_steps)"),
      Attribute(
          "stdev over 10 for saliency",
          [](A& r) {
            r.set_method(v1::SALIENCY);
            r.set_stdev(11);
          },
          kInvalid, "stdev: 11 is outside [0, 10]"),
      // A value just past a bound is shown as given (six digits read "10 is outside [0, 10]").
      Attribute(
          "stdev just over 10",
          [](A& r) {
            r.set_method(v1::SALIENCY);
            r.set_stdev(10.000001);
          },
          kInvalid, "stdev: 10.000001 is outside [0, 10]"),
      Attribute(
          "completeness tolerance just over 1",
          [](A& r) {
            r.set_method(v1::INTEGRATED_GRADIENTS);
            r.set_completeness_tolerance(1.0000001);
          },
          kInvalid, "completeness_tolerance = 1.0000001 is outside [0, 1]"),
      Attribute(
          "empty foil", [](A& r) { r.mutable_foil(); }, kInvalid, "foil: is set but empty"),
      Attribute(
          "zero baseline for ablation",
          [](A& r) {
            r.set_method(v1::FEATURE_ABLATION);
            r.set_baseline(v1::ZERO_EMBEDDING);
          },
          kInvalid, "baseline: ZERO_EMBEDDING"),
      Attribute(
          "no pad token", [](A& r) { r.set_baseline(v1::PAD_TOKEN); }, kInvalid, "has no pad token"),
      Attribute(
          "too many new tokens",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_max_new_tokens(100000);
          },
          kInvalid, "generation.max_new_tokens = 100000 is outside [1, 512] (512: this model's limits.max_new_tokens)"),
      Attribute(
          "negative temperature",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_temperature(-1);
          },
          kInvalid, "generation: temperature"),
      Attribute(
          "top_p above one",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_top_p(1.5);
          },
          kInvalid, "generation.top_p: 1.5 is outside [0, 1] (0: 1, no truncation)"),
      Attribute(
          "negative top_p",
          [](A& r) {
            r.clear_target();
            r.mutable_generation()->set_top_p(-0.5);
          },
          kInvalid, "generation.top_p: -0.5 is outside [0, 1]"),
      Attribute(
          "oversized message", [](A& r) { r.mutable_prompt()->set_text(std::string(5 << 20, 'a')); },
          StatusCode::RESOURCE_EXHAUSTED, "larger than max"),
      Generate(
          "generate: unknown model", [](G& r) { r.set_model("nope"); }, StatusCode::NOT_FOUND, "nope"),
      Generate(
          "generate: empty prompt", [](G& r) { r.clear_prompt(); }, kInvalid, "prompt"),
      Generate(
          "generate: stop id out of range", [](G& r) { r.mutable_generation()->add_stop_token_ids(-2); }, kInvalid,
          "generation.stop_token_ids"),
      Generate(
          // Every generated token is looked up among them on the executor thread.
          "generate: too many stop ids",
          [](G& r) {
            for (int i = 0; i < 300; ++i) r.mutable_generation()->add_stop_token_ids(5);
          },
          kInvalid, "generation: stop_token_ids: 300 ids, more than the limit of 256"),
      Generate(
          "generate: stop ids that ignore_stop_tokens would ignore",
          [](G& r) {
            r.mutable_generation()->add_stop_token_ids(5);
            r.mutable_generation()->set_ignore_stop_tokens(true);
          },
          kInvalid, "generation: stop_token_ids: given with ignore_stop_tokens"),
      Generate(
          "generate: NaN temperature", [](G& r) { r.mutable_generation()->set_temperature(std::nan("")); }, kInvalid,
          "temperature"),
      Generate(
          "generate: prompt + new tokens over the limit",
          [](G& r) {
            r.mutable_prompt()->clear_text();
            for (int i = 0; i < 4090; ++i) r.mutable_prompt()->add_token_ids(5);
            r.mutable_generation()->set_max_new_tokens(10);
          },
          kInvalid,
          "generation.max_new_tokens: 10 tokens after the prompt's 4090 exceed 4096 (this model's limits.max_tokens)"),
      Logprobs(
          "logprobs: no target", [](L& r) { r.clear_target(); }, kInvalid, "target: must hold at least one token"),
      Logprobs(
          "logprobs: top_k over the cap", [](L& r) { r.set_top_k(21); }, kInvalid, "top_k: 21 is outside [0, 20]"),
      Logprobs(
          "logprobs: negative top_k", [](L& r) { r.set_top_k(-1); }, kInvalid, "top_k"),
      Logprobs(
          "logprobs: unknown target tokenization beside text",
          [](L& r) { r.set_target_tokenization(static_cast<v1::TargetTokenization>(99)); }, kInvalid,
          "target_tokenization: unknown value 99"),
      Logprobs(
          "logprobs: unknown target tokenization beside target ids",
          [](L& r) {
            r.mutable_target()->clear_text();
            r.mutable_target()->add_token_ids(5);
            r.set_target_tokenization(static_cast<v1::TargetTokenization>(99));
          },
          kInvalid, "target_tokenization: unknown value 99"),
      Logprobs(
          "logprobs: malformed UTF-8", [](L& r) { r.mutable_target()->set_text("\xE2\x82"); }, kInvalid, "target.text"),
      // A huge name is quoted by a short prefix: echoed whole, the message overflowed gRPC's 8 KB
      // metadata limit and the client saw RESOURCE_EXHAUSTED.
      Attribute(
          "huge model name", [](A& r) { r.set_model(std::string(10000, 'm')); }, StatusCode::NOT_FOUND,
          "(10000 bytes)"),
      Logprobs(
          "logprobs: huge model name", [](L& r) { r.set_model(std::string(10000, 'm')); }, StatusCode::NOT_FOUND,
          "(10000 bytes)"),
  };
}

TEST(BadInputs, EachGetsItsCodeAndFieldAndTheServerStaysCorrect) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client = *client::AttributionClient::Connect({.target = (*server)->address()});
  const client::AttributeOptions good{
      .model = "demo", .prompt = "Is it true that vaccines cause autism?", .target = " No", .n_steps = 8};
  absl::StatusOr<client::Attribution> before = client->Attribute(good);
  ASSERT_THAT(before, IsOk());

  // Good calls run alongside the bad ones; none may be disturbed.
  std::vector<absl::StatusOr<client::Attribution>> during(4, absl::UnknownError("not run"));
  std::vector<std::thread> good_calls;
  for (auto& result : during) good_calls.emplace_back([&] { result = client->Attribute(good); });

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  auto stub = v1::AttributionService::NewStub(
      grpc::CreateCustomChannel((*server)->address(), grpc::InsecureChannelCredentials(), args));
  const std::vector<BadCase> cases = BadCases();
  EXPECT_GE(cases.size(), 40u);
  for (const BadCase& c : cases) {
    grpc::Status status = c.call(*stub);
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << c.name << ": \"" << status.error_message() << "\" lacks \"" << c.message << "\"";
    if (!c.absent.empty()) {
      EXPECT_EQ(status.error_message().find(c.absent), std::string::npos)
          << c.name << ": \"" << status.error_message() << "\" holds \"" << c.absent << "\"";
    }
  }
  for (std::thread& t : good_calls) t.join();
  // Equal up to float32 rounding: concurrent calls may share batches of other shapes, which changes
  // the summation order, while work another request corrupted would be off by far more.
  for (const auto& result : during) {
    ASSERT_THAT(result, IsOk());
    EXPECT_THAT(result->sequence, Pointwise(DoubleNear(1e-5), before->sequence));
  }
  absl::StatusOr<client::Attribution> after = client->Attribute(good);
  ASSERT_THAT(after, IsOk());
  EXPECT_THAT(after->sequence, Pointwise(DoubleNear(1e-5), before->sequence));
  // One point is a defined Gauss-Legendre / Riemann rule (the trapezoid needs two, see the table).
  client::AttributeOptions one_step = good;
  one_step.n_steps = 1;
  absl::StatusOr<client::Attribution> single = client->Attribute(one_step);
  ASSERT_THAT(single, IsOk());
  EXPECT_EQ(single->stats.backward_passes, 1);
  // The case above ("group baselines make rows over max_tokens") with a method that reads no baseline: unread,
  // so accepted whatever its length (the server refused it, against its README), and the answer is the same.
  client::AttributeOptions saliency = good;
  saliency.method = "saliency";
  saliency.feature_groups = {{.token_begin = 1, .token_end = 3}};
  absl::StatusOr<client::Attribution> plain = client->Attribute(saliency);
  saliency.feature_groups[0].baseline_ids = std::vector<int64_t>(30000, 5);
  absl::StatusOr<client::Attribution> unread = client->Attribute(saliency);
  ASSERT_THAT(plain, IsOk());
  ASSERT_THAT(unread, IsOk());
  EXPECT_THAT(unread->unread_settings, ::testing::ElementsAre("n_steps", "feature_groups.baseline"));
  EXPECT_THAT(unread->sequence, Pointwise(DoubleNear(1e-6), plain->sequence));
}

TEST(BadInputs, HugeModelNameIsQuotedShortlyInTheStatusAndTheLog) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto stub =
      v1::AttributionService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  v1::LogprobsRequest request = DemoLogprobsRequest();
  request.set_model(std::string(10000, 'm'));
  grpc::ClientContext context;
  v1::LogprobsResponse response;
  const grpc::Status status = stub->Logprobs(&context, request, &response);
  EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND) << status.error_message().substr(0, 200);
  EXPECT_LT(status.error_message().size(), 300u) << status.error_message().substr(0, 200);
  // The call's log line (and every other) stays short too; after a drained exit every line is written.
  (*server)->Signal(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0);
  const std::string log = (*server)->Log();
  EXPECT_NE(log.find("(10000 bytes)"), std::string::npos) << log.substr(0, 2000);
  size_t longest = 0;
  for (size_t begin = 0, end; begin < log.size(); begin = end + 1) {
    end = log.find('\n', begin);
    if (end == std::string::npos) end = log.size();
    longest = std::max(longest, end - begin);
  }
  EXPECT_LT(longest, 1000u);
}

// gRPC inflates a compressed message whole before it checks the size limit (4 MB of gzip became 4 GB of
// memory, before authentication): compressed requests are refused, and plain ones still answered.
TEST(BadInputs, CompressedRequestsAreRefusedBeforeTheyAreInflated) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto stub =
      v1::AttributionService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  for (grpc_compression_algorithm algorithm : {GRPC_COMPRESS_GZIP, GRPC_COMPRESS_DEFLATE}) {
    grpc::ClientContext context;
    context.set_compression_algorithm(algorithm);
    v1::LogprobsResponse response;
    const grpc::Status status = stub->Logprobs(&context, DemoLogprobsRequest(), &response);
    EXPECT_EQ(status.error_code(), StatusCode::UNIMPLEMENTED) << algorithm << ": " << status.error_message();
  }
  grpc::ClientContext context;
  v1::LogprobsResponse response;
  EXPECT_TRUE(stub->Logprobs(&context, DemoLogprobsRequest(), &response).ok());
}

TEST(BadInputs, CallsOverTheConcurrencyLimitAreResourceExhausted) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_concurrent_requests=1"});
  ASSERT_THAT(server, IsOk());
  auto client = *client::AttributionClient::Connect({.target = (*server)->address()});
  absl::StatusOr<client::Attribution> slow = absl::UnknownError("not run");
  std::thread holder([&] {
    slow = client->Attribute({.model = "demo", .prompt = std::string(400, 'c'), .target = " No", .n_steps = 300});
  });
  // Once the slow call's rows are queued it holds the only slot (polled over the metrics endpoint: a
  // polling RPC would take the slot itself), and a second call must be refused.
  ASSERT_TRUE(test_support::WaitForQueuedRows((*server)->metrics_port(), "demo"));
  EXPECT_THAT(client->ListModels(), StatusIs(absl::StatusCode::kResourceExhausted,
                                             HasSubstr("too many concurrent requests (the limit is 1)")));
  // A flood of refusals (each answered in microseconds, and resent) wrote a WARNING line each: rationed now, the
  // metrics counting every one.
  constexpr int kFlood = 200;
  for (int i = 0; i < kFlood; ++i) EXPECT_FALSE(client->ListModels().ok());
  holder.join();
  EXPECT_THAT(slow, IsOk());
  EXPECT_THAT(client->ListModels(), IsOk());
  EXPECT_EQ(
      test_support::MetricValue((*server)->metrics_port(),
                                "attribution_rpcs_total{code=\"RESOURCE_EXHAUSTED\",method=\"ListModels\",model=\"\"}"),
      kFlood + 1);
  int lines = 0;
  for (absl::string_view line : absl::StrSplit((*server)->Log(), '\n')) {
    if (absl::StrContains(line, "\"code\":\"RESOURCE_EXHAUSTED\"")) ++lines;
  }
  EXPECT_GE(lines, 1);
  EXPECT_LE(lines, kFlood / 4) << "refusal lines for " << kFlood + 1 << " refused calls";
}

// A response over max_message_bytes (here a token matrix of 30 x 300 values under a 16 KiB limit) ends
// INVALID_ARGUMENT (no retry can fit it) saying what to ask for instead, on every call that answers, and is
// logged so; gRPC's own send would fail with a message naming nothing, after a log line saying OK.
// A component request on the demo model: `pairs` pairs of `length` token ids, clean and corrupted differing in the
// middle.
v1::AttributeComponentsRequest PairsOfIds(int pairs, int length) {
  v1::AttributeComponentsRequest components;
  components.set_model("demo");
  for (int pair = 0; pair < pairs; ++pair) {
    v1::PromptPair* p = components.add_pairs();
    for (int i = 0; i < length; ++i) {
      p->mutable_clean()->add_token_ids(100 + i);
      p->mutable_corrupted()->add_token_ids(i == length / 2 ? 300 : 100 + i);
    }
  }
  components.mutable_answer()->add_token_ids(5);
  components.mutable_wrong_answer()->add_token_ids(6);
  return components;
}

TEST(BadInputs, AResponseOverTheMessageLimitSaysWhatToAskForLess) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_message_bytes=16384"});
  ASSERT_THAT(server, IsOk());
  auto stub =
      v1::AttributionService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  v1::AttributeRequest request = GoodAttribute();
  request.mutable_prompt()->set_text(std::string(300, 'a'));
  request.mutable_target()->set_text(std::string(30, 'b'));
  request.set_target_tokenization(v1::SEPARATE);
  request.set_method(v1::SALIENCY);
  request.set_want_token_matrix(true);
  {
    grpc::ClientContext context;
    v1::AttributeResponse response;
    const grpc::Status status = stub->Attribute(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("max_message_bytes of 16384: ask for less (want_token_matrix"));
    // Known before the work: the matrix alone is too large.
    EXPECT_THAT(status.error_message(), HasSubstr("(the token matrix's 30 target tokens x"));
  }
  {
    // A generated target's matrix is counted at max_new_tokens: refused before the generation runs.
    v1::AttributeRequest generated = request;
    generated.clear_target();
    generated.mutable_generation()->set_max_new_tokens(30);
    grpc::ClientContext context;
    v1::AttributeResponse response;
    const grpc::Status status = stub->Attribute(&context, generated, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("(the token matrix's 30 target tokens x"));
  }
  {
    // No token matrix, and a response over the limit all the same: the prompt's tokens and the attribution
    // count too, before the work (the matrix alone let a request just under it run and fail after).
    v1::AttributeRequest small_matrix = request;
    small_matrix.mutable_prompt()->set_text(std::string(1500, 'a'));
    small_matrix.mutable_target()->set_text("b");
    small_matrix.set_want_token_matrix(false);
    grpc::ClientContext context;
    v1::AttributeResponse response;
    const grpc::Status status = stub->Attribute(&context, small_matrix, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("the response would be at least "));
    EXPECT_THAT(status.error_message(), HasSubstr("(the attribution, the features and the tokens)"));
  }
  {
    // The numbers and tokens fit (12,719 bytes), the features' spans and texts and the framing do not (17,289):
    // known before the work too, where the count of numbers and tokens alone let it run to fail at its end.
    v1::AttributeRequest framed = request;
    std::string words;
    for (int i = 0; i < 100; ++i) absl::StrAppend(&words, i > 0 ? " " : "", "word", i);
    framed.mutable_prompt()->set_text(words);
    framed.mutable_target()->set_text("b");
    framed.set_want_token_matrix(false);
    grpc::ClientContext context;
    v1::AttributeResponse response;
    const grpc::Status status = stub->Attribute(&context, framed, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("the response would be at least 17"));
  }
  {
    grpc::ClientContext context;
    auto reader = stub->AttributeStream(&context, request);
    v1::AttributeEvent event;
    while (reader->Read(&event)) EXPECT_FALSE(event.has_result());
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("max_message_bytes of 16384"));
  }
  {
    // Component grids of 8 pairs x 100 positions x every layer and head: refused before any row runs.
    v1::AttributeComponentsRequest components = PairsOfIds(8, 100);
    components.set_method(v1::ATTRIBUTION_PATCHING);
    components.set_granularity(v1::LAYER_POSITION_HEAD);
    grpc::ClientContext context;
    v1::AttributeComponentsResponse response;
    const grpc::Status status = stub->AttributeComponents(&context, components, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    // At its second pair: the first two make more than the limit.
    EXPECT_THAT(status.error_message(), HasSubstr("with pairs[0..1] alone (their tokens, their grids' values x 8"));
  }
  {
    // Per-head grids are small; the 8 x 2 x 300 tokens the response echoes are not: refused at the third pair,
    // before the rest are read (it was refused only after every row ran, by the size of the finished response).
    v1::AttributeComponentsRequest components = PairsOfIds(8, 300);
    grpc::ClientContext context;
    v1::AttributeComponentsResponse response;
    const grpc::Status status = stub->AttributeComponents(&context, components, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("with pairs[0..2] alone (their tokens, their grids' values x 8"));
    EXPECT_THAT(status.error_message(), HasSubstr("ask for less (fewer pairs or sites, shorter prompts"));
  }
  {
    // 64 pairs of 7 tokens: their grids' values and tokens fit (14,848 bytes), with the grids' shapes and the
    // framing they do not: refused before any row runs too, at a lower bound (the answer is 17,917 bytes without
    // its stats; the pairs' metrics, which may be 0, are left out; its empty settings_used counts 2).
    v1::AttributeComponentsRequest components = PairsOfIds(64, 7);
    components.set_method(v1::ATTRIBUTION_PATCHING);
    grpc::ClientContext context;
    v1::AttributeComponentsResponse response;
    const grpc::Status status = stub->AttributeComponents(&context, components, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("the response would be at least 16765 bytes"));
  }
  {
    // 20 alternatives at each of 150 positions (text and bytes each): checked like the other responses.
    v1::LogprobsRequest logprobs = DemoLogprobsRequest();
    logprobs.mutable_target()->clear_text();
    for (int i = 0; i < 150; ++i) logprobs.mutable_target()->add_token_ids(100 + i);
    logprobs.set_top_k(20);
    grpc::ClientContext context;
    v1::LogprobsResponse response;
    const grpc::Status status = stub->Logprobs(&context, logprobs, &response);
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(),
                HasSubstr("max_message_bytes of 16384: ask for less (a smaller top_k, a shorter target"));
  }
  (*server)->Signal(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0);
  const std::string log = (*server)->Log();
  size_t refused = 0;
  for (size_t at = 0; (at = log.find("\"code\":\"INVALID_ARGUMENT\"", at)) != std::string::npos; ++at) ++refused;
  EXPECT_EQ(refused, 9u) << log.substr(0, 2000);
}

}  // namespace
}  // namespace attribution
