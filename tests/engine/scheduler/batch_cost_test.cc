// SPDX-License-Identifier: Apache-2.0
// The learned batch cost recovers a known cost law from the batches it observes (closed form: the
// device times are generated from the law itself).
#include "engine/scheduler/batch_cost.h"

#include <gtest/gtest.h>

#include <cmath>

namespace attribution::engine {
namespace {

absl::Duration Law(double fixed, double per_token, double per_pair, int64_t rows, int64_t longest) {
  const double tokens = static_cast<double>(rows * longest);
  return absl::Seconds(fixed + per_token * tokens + per_pair * tokens * static_cast<double>(longest));
}

TEST(BatchCostModel, RecoversFixedTokenAndAttentionTerms) {
  BatchCostModel model;
  const int64_t shapes[][2] = {{1, 16}, {8, 64}, {32, 40}, {4, 512}, {64, 100}, {2, 2000}, {16, 300}};
  for (int round = 0; round < 3; ++round) {
    for (const auto& [rows, longest] : shapes) {
      model.Observe(RowKind::kGrad, rows, longest, Law(2e-4, 3e-6, 2e-9, rows, longest));
    }
  }
  const BatchCost cost = model.cost(RowKind::kGrad);
  ASSERT_TRUE(cost.known);
  EXPECT_NEAR(cost.fixed, 2e-4, 2e-6);
  EXPECT_NEAR(cost.per_token, 3e-6, 3e-8);
  EXPECT_NEAR(cost.per_token_pair, 2e-9, 2e-11);
  EXPECT_FALSE(model.cost(RowKind::kScore).known);  // kinds are learned apart
}

TEST(BatchCostModel, OneShapeOnlyFitsTheTokenTermAndPredictsThatShape) {
  BatchCostModel model;
  for (int i = 0; i < BatchCostModel::kMinBatches; ++i) {
    EXPECT_FALSE(model.cost(RowKind::kScore).known);
    model.Observe(RowKind::kScore, 8, 50, absl::Milliseconds(4));
  }
  const BatchCost cost = model.cost(RowKind::kScore);
  ASSERT_TRUE(cost.known);
  EXPECT_NEAR(cost.Seconds(8, 50), 4e-3, 1e-9);
  EXPECT_GE(cost.fixed, 0);
  EXPECT_GE(cost.per_token_pair, 0);
}

TEST(BatchCostModel, FollowsADeviceThatSlowsDown) {
  BatchCostModel model;
  const int64_t shapes[][2] = {{4, 32}, {16, 64}, {64, 128}};
  for (int round = 0; round < 10; ++round) {
    for (const auto& [rows, longest] : shapes)
      model.Observe(RowKind::kScore, rows, longest, Law(0, 1e-6, 0, rows, longest));
  }
  for (int round = 0; round < 100; ++round) {
    for (const auto& [rows, longest] : shapes)
      model.Observe(RowKind::kScore, rows, longest, Law(0, 2e-6, 0, rows, longest));
  }
  EXPECT_NEAR(model.cost(RowKind::kScore).Seconds(16, 64), 2e-6 * 16 * 64, 0.02 * 2e-6 * 16 * 64);
}

}  // namespace
}  // namespace attribution::engine
