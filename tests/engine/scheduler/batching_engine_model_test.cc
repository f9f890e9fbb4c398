// SPDX-License-Identifier: Apache-2.0
// The batching engine over a real model: a row's result does not depend on its batch mates, and
// generation through decode rows equals the model's own batched generation.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "engine/scheduler/batching_engine.h"
#include "engine/scheduler/engine_generation.h"
#include "tests/testing/notification.h"
#include "tests/testing/reference.h"
#include "tests/testing/row_collector.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::RowCollector;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;

class EngineOverModel : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
    ASSERT_THAT(model, IsOk());
    model_ = std::move(*model);
    // A long queue delay gathers every row submitted below into shared batches.
    auto engine = BatchingEngine::Create(MakeModelExecutor(model_), {.max_batch_tokens = 4096, .max_batch_rows = 32,
                                                                      .max_queue_delay = absl::Milliseconds(200)});
    ASSERT_THAT(engine, IsOk());
    engine_ = std::move(*engine);
    engine_->SetBatchObserver([this](const BatchRecord& record) {
      std::lock_guard<std::mutex> lock(mu_);
      records_.push_back(record);
    });
  }
  std::vector<int64_t> Ids(int64_t length, int64_t seed) const {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < length; ++i) ids.push_back(3 + (seed * 31 + i * 17) % 300);
    return ids;
  }
  at::Tensor Embeds(const std::vector<int64_t>& ids) const {
    return (*model_->Embed(at::tensor(ids, at::kLong).unsqueeze(0)))[0];
  }

  std::shared_ptr<CausalLM> model_;
  std::unique_ptr<BatchingEngine> engine_;
  std::mutex mu_;
  std::vector<BatchRecord> records_;
};

TEST_F(EngineOverModel, RowResultsEqualRowsComputedAlone) {
  const std::vector<int64_t> lengths = {5, 11, 3, 8, 11, 6};
  std::vector<std::unique_ptr<RowCollector>> score_results, grad_results;
  std::vector<Row> score_rows, grad_rows;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const std::vector<int64_t> ids = Ids(lengths[i], static_cast<int64_t>(i));
    RowObjective objective{.positions = {lengths[i] - 2, lengths[i] - 1}, .tokens = {7, 9},
                           .quantity = i % 2 ? TokenQuantity::kProb : TokenQuantity::kLogProb};
    score_rows.push_back(Row{.kind = RowKind::kScore, .input_ids = ids, .objective = objective, .top_k = 3});
    grad_rows.push_back(Row{.kind = RowKind::kGrad, .inputs_embeds = Embeds(ids), .objective = objective});
  }
  // One request per row, so every batch mixes requests and lengths.
  for (size_t i = 0; i < lengths.size(); ++i) {
    score_results.push_back(std::make_unique<RowCollector>(1));
    grad_results.push_back(std::make_unique<RowCollector>(1));
    ASSERT_THAT(
        engine_->Submit(engine_->NewRequest(), {score_rows[i]}, score_results.back()->Callback()),
        IsOk());
    ASSERT_THAT(
        engine_->Submit(engine_->NewRequest(), {grad_rows[i]}, grad_results.back()->Callback()),
        IsOk());
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    score_results[i]->Wait();
    grad_results[i]->Wait();
    const Row& row = grad_rows[i];
    auto alone = model_->ObjectiveGradients({.inputs_embeds = row.inputs_embeds.unsqueeze(0)}, {row.objective});
    ASSERT_THAT(alone, IsOk());
    const RowResult& grad = grad_results[i]->result(0);
    const RowResult& score = score_results[i]->result(0);
    ASSERT_THAT(grad.status, IsOk());
    ASSERT_THAT(score.status, IsOk());
    EXPECT_NEAR(grad.value, alone->values[0].item<double>(), 1e-5);
    EXPECT_NEAR(score.value, alone->values[0].item<double>(), 1e-5);
    EXPECT_LT(ScaledError(grad.gradient, alone->gradients[0]), 1e-5);
    EXPECT_EQ(score.top_ids.size(0), 2);
  }
  std::lock_guard<std::mutex> lock(mu_);
  int64_t largest = 0;
  for (const BatchRecord& r : records_) largest = std::max(largest, r.rows);
  EXPECT_GT(largest, 1) << "rows were never batched together";
}

TEST_F(EngineOverModel, GenerationThroughDecodeRowsEqualsModelGeneration) {
  const std::vector<std::vector<int64_t>> prompts = {Ids(4, 1), Ids(9, 2), Ids(6, 3)};
  GenerationOptions options{.max_new_tokens = 6, .ignore_stop_tokens = true};
  auto expected = Generate(*model_, prompts, options);
  ASSERT_THAT(expected, IsOk());
  std::vector<absl::StatusOr<Generation>> outputs(prompts.size(), absl::UnknownError("not run"));
  std::vector<::attribution::test_support::Notification> done(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateAsync(*engine_, engine_->NewRequest(), model_->config(), prompts[i], options,
                  [&, i](absl::StatusOr<Generation> g) {
                    outputs[i] = std::move(g);
                    done[i].Notify();
                  });
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    done[i].WaitForNotification();
    ASSERT_THAT(outputs[i], IsOk());
    EXPECT_EQ(outputs[i]->tokens, (*expected)[i].tokens) << "prompt " << i;
  }
}

TEST_F(EngineOverModel, CancelledGenerationEndsWithCancelled) {
  auto request = engine_->NewRequest();
  ::attribution::test_support::Notification done;
  absl::Status status;
  GenerateAsync(*engine_, request, model_->config(), Ids(5, 1), {.max_new_tokens = 1000, .ignore_stop_tokens = true},
                [&](absl::StatusOr<Generation> g) {
                  status = g.status();
                  done.Notify();
                });
  engine_->Cancel(*request);
  done.WaitForNotification();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
}

}  // namespace
}  // namespace attribution::engine
