// SPDX-License-Identifier: Apache-2.0
// The objective of a teacher-forced target: which positions score which tokens, with which weights
// and quantity, for the whole target and for one token, with and without a foil.
#include "engine/attribution/target_objective.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace attribution::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

const std::vector<int64_t> kTarget = {11, 12, 13};
const std::vector<int64_t> kFoil = {21, 22, 23};

TEST(TargetObjective, WholeTargetScoresTokenTAfterPositionPromptLengthMinusOnePlusT) {
  const RowObjective o = TargetObjective(/*prompt_length=*/5, kTarget, {}, TokenQuantity::kLogProb);
  EXPECT_THAT(o.positions, ElementsAre(4, 5, 6));
  EXPECT_THAT(o.tokens, ElementsAre(11, 12, 13));
  EXPECT_THAT(o.weights, ElementsAre(1.0, 1.0, 1.0));
  EXPECT_EQ(o.quantity, TokenQuantity::kLogProb);
  EXPECT_FALSE(o.exp_of_sum);
}

TEST(TargetObjective, ProbabilityOfAWholeTargetIsTheExponentialOfItsSummedLogProbs) {
  const RowObjective o = TargetObjective(5, kTarget, {}, TokenQuantity::kProb);
  EXPECT_EQ(o.quantity, TokenQuantity::kLogProb);
  EXPECT_TRUE(o.exp_of_sum);
  EXPECT_THAT(o.tokens, ElementsAre(11, 12, 13));
}

TEST(TargetObjective, ContrastiveScoresTheFoilAtTheSamePositionsAndSubtractsIt) {
  for (TokenQuantity quantity : {TokenQuantity::kLogProb, TokenQuantity::kProb, TokenQuantity::kLogit}) {
    const RowObjective o = TargetObjective(2, kTarget, kFoil, quantity);
    EXPECT_THAT(o.positions, ElementsAre(1, 2, 3, 1, 2, 3));
    EXPECT_THAT(o.tokens, ElementsAre(11, 12, 13, 21, 22, 23));
    EXPECT_THAT(o.weights, ElementsAre(1.0, 1.0, 1.0, -1.0, -1.0, -1.0));
    EXPECT_EQ(o.quantity, quantity);  // a contrastive probability compares probabilities directly
    EXPECT_FALSE(o.exp_of_sum);
  }
}

TEST(TargetObjective, OneTokenScoresOnlyThatToken) {
  const RowObjective o = TargetObjective(5, kTarget, {}, TokenQuantity::kProb, /*only_token=*/1);
  EXPECT_THAT(o.positions, ElementsAre(5));
  EXPECT_THAT(o.tokens, ElementsAre(12));
  EXPECT_THAT(o.weights, ElementsAre(1.0));
  EXPECT_EQ(o.quantity, TokenQuantity::kProb);
  EXPECT_FALSE(o.exp_of_sum);

  const RowObjective contrastive = TargetObjective(5, kTarget, kFoil, TokenQuantity::kLogit, 2);
  EXPECT_THAT(contrastive.positions, ElementsAre(6, 6));
  EXPECT_THAT(contrastive.tokens, ElementsAre(13, 23));
  EXPECT_THAT(contrastive.weights, ElementsAre(1.0, -1.0));
  EXPECT_EQ(contrastive.quantity, TokenQuantity::kLogit);
}

TEST(TargetObjective, FirstTokenOfAOneTokenPromptIsScoredAtPositionZero) {
  const RowObjective o = TargetObjective(1, {7}, {}, TokenQuantity::kLogit);
  EXPECT_THAT(o.positions, ElementsAre(0));
  EXPECT_THAT(TargetObjective(1, {7}, {}, TokenQuantity::kLogit, 0).positions, ElementsAre(0));
  EXPECT_THAT(TargetObjective(3, {}, {}, TokenQuantity::kLogProb).positions, IsEmpty());
}

}  // namespace
}  // namespace attribution::engine
