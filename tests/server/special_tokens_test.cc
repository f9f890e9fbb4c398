// SPDX-License-Identifier: Apache-2.0
// Special tokens stay what they are in every row the engine receives: requests converted by the
// server's conversion (API defaults) and run by the attributor for every method and the faithfulness
// curves, on a recording executor in front of the model. Which tokens are special comes from
// transformers (tools/token_semantics_reference.py): a SentencePiece bos, a byte-level template bos and
// chat-template control tokens.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "engine/scheduler/batch_executor.h"
#include "server/conversion.h"
#include "tests/testing/status_matchers.h"

namespace attribution::server {
namespace {

using ::attribution::test_support::IsOk;

struct RecordedRow {
  std::vector<int64_t> input_ids;
  engine::PathPoint point;  // rows on an embedding path
  int64_t prefix_length = 0;
};

// Records every score and grad row on its way to the model, then runs it.
class RecordingExecutor : public engine::BatchExecutor {
 public:
  explicit RecordingExecutor(std::shared_ptr<const engine::CausalLM> model)
      : model_(engine::MakeModelExecutor(std::move(model))) {}

  absl::Status Run(engine::RowKind kind, const std::vector<const engine::Row*>& rows,
                   std::vector<engine::RowResult>& results) override {
    if (kind != engine::RowKind::kDecode) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const engine::Row* row : rows) {
        rows_.push_back({row->input_ids, row->point, row->prefix_length});
      }
    }
    return model_->Run(kind, rows, results);
  }
  std::vector<RecordedRow> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(rows_);
  }

 private:
  std::unique_ptr<engine::BatchExecutor> model_;
  std::mutex mu_;
  std::vector<RecordedRow> rows_;
};

struct Counts {
  int rows = 0, changed_special = 0, changed_other = 0;
};

// Whether a path row's point keeps the prompt's token at position p: the row is the path's noiseless
// end, or the path's baseline there is the input's own token.
bool PathKeeps(const engine::PathPoint& point, int64_t p, const std::vector<int64_t>& prompt) {
  const engine::EmbeddingPath& path = *point.path;
  if (path.input_ids[p] != prompt[p]) return false;
  if (point.alpha == 1.0 && point.noise_sample < 0) return true;
  return path.baseline_ids[p] == prompt[p] && (path.zero_baseline.empty() || path.zero_baseline[p] == 0);
}

// Compares each row's prompt positions with the real prompt.
Counts CompareRows(const std::vector<RecordedRow>& rows, const std::vector<int64_t>& prompt,
                   const std::vector<bool>& special) {
  Counts counts;
  const int64_t length = static_cast<int64_t>(prompt.size());
  for (const RecordedRow& row : rows) {
    ++counts.rows;
    for (int64_t p = row.prefix_length; p < length; ++p) {
      const bool same = row.point.path ? PathKeeps(row.point, p, prompt)
                                       : p - row.prefix_length < static_cast<int64_t>(row.input_ids.size()) &&
                                             row.input_ids[p - row.prefix_length] == prompt[p];
      if (!same) ++(special[p] ? counts.changed_special : counts.changed_other);
    }
  }
  return counts;
}

class SpecialTokensInRows : public ::testing::TestWithParam<std::string> {};

TEST_P(SpecialTokensInRows, NeverChangeUnderAnyMethodUnlessIncluded) {
  std::ifstream in(ATTRIBUTION_TOKEN_SEMANTICS_DIR "/token_semantics.json");
  const nlohmann::json reference = nlohmann::json::parse(in)[GetParam()];
  ServedModel served;
  served.spec.name = GetParam();
  std::shared_ptr<const engine::CausalLM> model = std::move(*engine::CausalLM::Load(reference["dir"], {}));
  served.model = model;
  served.tokenizer = std::move(*engine::Tokenizer::Load(reference["dir"]));
  auto executor = std::make_unique<RecordingExecutor>(model);
  RecordingExecutor* recorder = executor.get();
  served.engine = std::move(*engine::BatchingEngine::Create(std::move(executor), {}));
  served.attributor = std::make_unique<engine::Attributor>(model, served.engine.get());

  for (const nlohmann::json& p : reference["prompts"]) {
    const auto prompt = p["ids"].get<std::vector<int64_t>>();
    const auto special = p["special"].get<std::vector<bool>>();
    for (v1::Method method : {v1::INTEGRATED_GRADIENTS, v1::GRADIENT_SHAP, v1::SALIENCY, v1::INPUT_X_GRADIENT,
                              v1::FEATURE_ABLATION, v1::SHAPLEY_VALUE_SAMPLING, v1::LIME, v1::KERNEL_SHAP}) {
      for (bool include : {false, true}) {
        SCOPED_TRACE(
            absl::StrCat(p["prompt"].get<std::string>(), " ", v1::Method_Name(method), include ? " included" : ""));
        v1::AttributeRequest proto;
        proto.mutable_prompt()->set_text(p["prompt"].get<std::string>());
        proto.mutable_target()->set_text(" yes");
        proto.set_method(method);
        proto.set_n_steps(4);
        proto.set_n_samples(4);
        proto.set_stdev(method == v1::GRADIENT_SHAP ? 0.1 : 0);
        proto.set_want_faithfulness(true);
        // A baseline token that is no special token of any of the models (id 0 is a bos or eos in two).
        proto.set_baseline(v1::TOKEN_ID);
        proto.set_baseline_token_id(5);
        proto.set_include_special_tokens(include);
        absl::StatusOr<AttributeCall> call = ToAttributeCall(proto, served, absl::InfiniteFuture());
        ASSERT_THAT(call, IsOk());
        ASSERT_EQ(call->request.prompt_ids, prompt);
        absl::StatusOr<engine::AttributionResult> result = served.attributor->AttributeAndWait(call->request);
        ASSERT_THAT(result, IsOk());
        const Counts counts = CompareRows(recorder->Take(), prompt, special);
        EXPECT_GT(counts.rows, 12);          // the method's rows and the faithfulness curves
        EXPECT_GT(counts.changed_other, 0);  // the rows do perturb or interpolate the features
        const bool any_special = std::find(special.begin(), special.end(), true) != special.end();
        if (include && any_special) {
          EXPECT_GT(counts.changed_special, 0);  // the check can see a change (at least the curves make one)
        } else {
          EXPECT_EQ(counts.changed_special, 0);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, SpecialTokensInRows, ::testing::Values("default", "bytelevel", "chat"));

}  // namespace
}  // namespace attribution::server
