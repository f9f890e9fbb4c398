// SPDX-License-Identifier: Apache-2.0
// ScoreTarget through the batching engine against transformers: for a reference row split into
// prompt and target, each target token's log-prob, logit and top-k alternatives equal those of
// transformers' logits at the position before it (tools/make_test_models.py, row 0).
#include "engine/attribution/target_scores.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/notification.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::LoadReference;
using ::attribution::test_support::Notification;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;
using ::testing::HasSubstr;

class ScoreTargetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
    ASSERT_THAT(model, IsOk());
    auto engine = BatchingEngine::Create(MakeModelExecutor(std::move(*model)), {});
    ASSERT_THAT(engine, IsOk());
    engine_ = std::move(*engine);
  }
  absl::StatusOr<TargetScores> Score(const std::vector<int64_t>& prompt, const std::vector<int64_t>& target,
                                     int64_t top_k) {
    Notification done;
    absl::StatusOr<TargetScores> out;
    ScoreTarget(*engine_, engine_->NewRequest(), prompt, target, top_k, [&](absl::StatusOr<TargetScores> scores) {
      out = std::move(scores);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  }
  std::unique_ptr<BatchingEngine> engine_;
};

TEST_F(ScoreTargetTest, EachTargetTokenMatchesTransformersAtThePositionBeforeIt) {
  const test_support::Reference reference = LoadReference("llama", "float32");
  const auto row = reference.spec["rows"][0].get<std::vector<int64_t>>();
  constexpr int64_t kPrompt = 3, kTopK = 4;
  ASSERT_GT(row.size(), static_cast<size_t>(kPrompt + 1));
  const std::vector<int64_t> prompt(row.begin(), row.begin() + kPrompt), target(row.begin() + kPrompt, row.end());
  absl::StatusOr<TargetScores> scores = Score(prompt, target, kTopK);
  ASSERT_THAT(scores, IsOk());
  ASSERT_EQ(scores->log_probs.size(), target.size());
  ASSERT_EQ(scores->logits.size(), target.size());
  ASSERT_EQ(scores->top_ids.size(), target.size());
  ASSERT_EQ(scores->top_log_probs.size(), target.size());
  const at::Tensor logits = reference.Tensor("logits_0");  // [S, vocab]
  const at::Tensor log_probs = at::log_softmax(logits, -1);
  for (size_t t = 0; t < target.size(); ++t) {
    SCOPED_TRACE(t);
    const int64_t position = kPrompt - 1 + static_cast<int64_t>(t);
    EXPECT_NEAR(scores->log_probs[t], log_probs[position][target[t]].item<double>(), 1e-4);
    EXPECT_NEAR(scores->logits[t], logits[position][target[t]].item<double>(), 1e-4);
    const auto [top_values, top_ids] = log_probs[position].topk(kTopK);
    ASSERT_EQ(scores->top_ids[t].size(), static_cast<size_t>(kTopK));
    for (int64_t k = 0; k < kTopK; ++k) {
      EXPECT_EQ(scores->top_ids[t][k], top_ids[k].item<int64_t>());
      EXPECT_NEAR(scores->top_log_probs[t][k], top_values[k].item<double>(), 1e-4);
    }
  }
}

TEST_F(ScoreTargetTest, WithoutTopKThereAreNoAlternatives) {
  absl::StatusOr<TargetScores> scores = Score({5, 17, 99}, {42, 7}, 0);
  ASSERT_THAT(scores, IsOk());
  EXPECT_EQ(scores->log_probs.size(), 2u);
  EXPECT_TRUE(scores->top_ids.empty());
  EXPECT_TRUE(scores->top_log_probs.empty());
}

TEST_F(ScoreTargetTest, InvalidArgumentsAreRefusedAtOnce) {
  EXPECT_THAT(Score({}, {1}, 0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_ids")));
  EXPECT_THAT(Score({1}, {}, 0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("target_ids")));
  EXPECT_THAT(Score({1}, {2}, -1), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
}

}  // namespace
}  // namespace attribution::engine
