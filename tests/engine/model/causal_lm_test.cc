// SPDX-License-Identifier: Apache-2.0
// Parity of our forward pass with transformers on random models of every architecture, plus the
// properties attribution relies on: batch invariance, KV-cache equivalence, hooks, input gradients.
#include "engine/model/causal_lm.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <iostream>
#include <set>

#include "absl/strings/match.h"
#include "engine/model/generation.h"
#include "engine/model/safetensors.h"
#include "engine/model/torch_errors.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::LoadReference;
using ::attribution::test_support::Reference;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;
using ::testing::HasSubstr;

// One row of token ids: [1, n] int64.
at::Tensor Ids(std::vector<int64_t> ids) { return at::tensor(ids, at::kLong).unsqueeze(0); }

struct Case {
  std::string arch;
  std::string dtype;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << "/" << c.dtype; }

class CausalLMParity : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    LoadOptions options;
    options.dtype = *ParseDtype(GetParam().dtype);
    auto model = CausalLM::Load(TestModelsDir() + "/" + GetParam().arch, options);
    ASSERT_THAT(model, IsOk());
    model_ = std::move(*model);
    reference_ = LoadReference(GetParam().arch, GetParam().dtype);
    rows_ = reference_.spec["rows"].get<std::vector<std::vector<int64_t>>>();
  }
  bool fp32() const { return GetParam().dtype == "float32"; }
  // fp32 must agree to 1e-4 of the logit scale; bf16 and fp16 to 3e-2, what rounding allows after two
  // layers of these deliberately large random weights (both observed at 0.7-1.8%).
  double tolerance() const { return fp32() ? 1e-4 : 3e-2; }

  // All rows right-padded into one [3, 12] batch.
  ForwardBatch PaddedBatch() const {
    int64_t longest = 0;
    std::vector<int64_t> lengths;
    for (const auto& row : rows_) {
      lengths.push_back(static_cast<int64_t>(row.size()));
      longest = std::max(longest, lengths.back());
    }
    at::Tensor ids = at::zeros({static_cast<int64_t>(rows_.size()), longest}, at::kLong);
    for (size_t r = 0; r < rows_.size(); ++r) {
      ids[r].narrow(0, 0, lengths[r]).copy_(at::tensor(rows_[r], at::kLong));
    }
    return ForwardBatch{.input_ids = ids, .lengths = lengths};
  }

  // The first row as input embeddings, and the objective the reference scored on it.
  ForwardBatch FirstRowEmbedded() const {
    return ForwardBatch{.inputs_embeds = *model_->Embed(at::tensor(rows_[0], at::kLong).unsqueeze(0))};
  }
  RowObjective ReferenceObjective() const {
    return RowObjective{.positions = reference_.spec["objective_positions"].get<std::vector<int64_t>>(),
                        .tokens = reference_.spec["objective_tokens"].get<std::vector<int64_t>>()};
  }

  at::Tensor LogitsOfRow(const ForwardBatch& batch, const at::Tensor& hidden, int64_t r) const {
    const int64_t len = batch.lengths.empty() ? hidden.size(1) : batch.lengths[r];
    std::vector<int64_t> rows(len, r), positions(len);
    for (int64_t p = 0; p < len; ++p) positions[p] = p;
    return model_->LogitsAt(hidden, rows, positions);
  }

  std::unique_ptr<CausalLM> model_;
  Reference reference_;
  std::vector<std::vector<int64_t>> rows_;
};

// Torch's own errors reach callers as a status message without the C++ backtrace c10::Error::what() holds.
TEST(TorchErrors, StatusKeepsTheMessageAndDropsTheBacktrace) {
  absl::Status status;
  try {
    at::ones({2}).view({3});
  } catch (const std::exception& e) {
    ASSERT_THAT(e.what(), HasSubstr("frame #"));  // what this test is about: torch adds the backtrace
    status = StatusFromException(e, "forward");
  }
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInternal, HasSubstr("forward: shape '[3]' is invalid")));
  EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr("frame #")));
}

// The CPU allocator's failure is a plain c10::Error (not OutOfMemoryError): on the CPU the device's memory ran
// out, which the engine answers by shrinking its batches, as it does for CUDA's.
TEST(TorchErrors, TheCpuAllocatorRunningOutIsResourceExhausted) {
  absl::Status status;
  try {
    at::empty({int64_t{1} << 60}, at::kFloat);  // 4 EiB
  } catch (const std::exception& e) {
    status = StatusFromException(e, "batch");
  }
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("batch: out of host memory")));
}

TEST_P(CausalLMParity, PaddedBatchLogitsMatchTransformers) {
  c10::InferenceMode inference;
  ForwardBatch batch = PaddedBatch();
  auto hidden = model_->Hidden(batch);
  ASSERT_THAT(hidden, IsOk());
  for (size_t r = 0; r < rows_.size(); ++r) {
    at::Tensor expected = reference_.Tensor("logits_" + std::to_string(r));
    const double error = ScaledError(LogitsOfRow(batch, *hidden, r), expected);
    EXPECT_LT(error, tolerance()) << "row " << r;
    std::cout << "[ parity   ] " << GetParam().arch << " " << GetParam().dtype << " row " << r
              << " logits max error / scale = " << error << "\n";
  }
}

// Properties checked at fp32 precision only.
class CausalLMFp32 : public CausalLMParity {};

TEST_P(CausalLMFp32, RowInBatchEqualsRowAlone) {
  c10::InferenceMode inference;
  ForwardBatch batch = PaddedBatch();
  at::Tensor batched = *model_->Hidden(batch);
  for (size_t r = 0; r < rows_.size(); ++r) {
    ForwardBatch alone{.input_ids = at::tensor(rows_[r], at::kLong).unsqueeze(0)};
    at::Tensor single = *model_->Hidden(alone);
    EXPECT_LT(ScaledError(LogitsOfRow(batch, batched, r), LogitsOfRow(alone, single, 0)), 1e-5);
  }
}

TEST_P(CausalLMParity, ScoresOfGivenTokensMatchTransformersLogSoftmax) {
  const auto positions = reference_.spec["objective_positions"].get<std::vector<int64_t>>();
  const auto tokens = reference_.spec["objective_tokens"].get<std::vector<int64_t>>();
  TokenQueries queries{.rows = std::vector<int64_t>(positions.size(), 0), .positions = positions, .tokens = tokens};
  ForwardBatch batch = PaddedBatch();
  auto scores = model_->ScoreTokens(batch, queries, /*top_k=*/5);
  ASSERT_THAT(scores, IsOk());
  at::Tensor log_probs = at::log_softmax(reference_.Tensor("logits_0"), -1);
  for (size_t i = 0; i < positions.size(); ++i) {
    EXPECT_NEAR(scores->log_probs[i].item<double>(), log_probs[positions[i]][tokens[i]].item<double>(),
                fp32() ? 1e-4 : 0.1);
  }
  at::Tensor expected_top = std::get<1>(log_probs[positions[0]].topk(5));
  if (fp32()) {
    EXPECT_TRUE(at::equal(scores->top_ids[0], expected_top));
  }
}

// Scores computed a few positions at a time (scored_chunk_floats) are transformers' too, top-k and answer
// choices included: one Logprobs call of 4,000 target tokens held its [4000, vocab] logits, log-softmax and
// top-k temporaries at once (3.4 GB on a 32,000-token vocabulary).
TEST_P(CausalLMFp32, ScoresComputedAFewPositionsAtATimeMatchTransformers) {
  LoadOptions options;
  options.scored_chunk_floats = 2 * model_->config().vocab_size;  // two positions at a time
  auto chunked = CausalLM::Load(TestModelsDir() + "/" + GetParam().arch, options);
  ASSERT_THAT(chunked, IsOk());
  const auto positions = reference_.spec["objective_positions"].get<std::vector<int64_t>>();
  const auto tokens = reference_.spec["objective_tokens"].get<std::vector<int64_t>>();
  ASSERT_GE(positions.size(), 3u);
  TokenQueries queries{.rows = std::vector<int64_t>(positions.size(), 0), .positions = positions, .tokens = tokens};
  auto scores = (*chunked)->ScoreTokens(PaddedBatch(), queries, /*top_k=*/5);
  ASSERT_THAT(scores, IsOk());
  const at::Tensor log_probs = at::log_softmax(reference_.Tensor("logits_0"), -1);
  for (size_t i = 0; i < positions.size(); ++i) {
    EXPECT_NEAR(scores->log_probs[i].item<double>(), log_probs[positions[i]][tokens[i]].item<double>(), 1e-4);
    EXPECT_TRUE(at::equal(scores->top_ids[i], std::get<1>(log_probs[positions[i]].topk(5)))) << "position " << i;
  }
  // Three rows of the same tokens, whose entries the chunks cut across: the first position plain, none,
  // then every position renormalised over answer choices (the token's logit minus the choices' log-sum-exp).
  const std::vector<int64_t> choices = {tokens[0], tokens[1], 7};
  c10::InferenceMode inference;
  const ForwardBatch batch{.input_ids = at::tensor(rows_[0], at::kLong).unsqueeze(0).repeat({3, 1})};
  const std::vector<int64_t> first_positions = {positions[0]}, first_tokens = {tokens[0]};
  const std::vector<RowObjective> objectives = {{.positions = first_positions, .tokens = first_tokens},
                                                {},
                                                {.positions = positions, .tokens = tokens, .choice_tokens = choices}};
  ObjectiveDetails details;
  ASSERT_THAT((*chunked)->ObjectiveValues(batch, objectives, &details), IsOk());
  ASSERT_EQ(details.log_probs.size(0), static_cast<int64_t>(1 + positions.size()));
  const at::Tensor logits = reference_.Tensor("logits_0");
  EXPECT_NEAR(details.log_probs[0].item<double>(), log_probs[positions[0]][tokens[0]].item<double>(), 1e-4);
  for (size_t i = 0; i < positions.size(); ++i) {
    const at::Tensor row = logits[positions[i]];
    const double expected =
        (row[tokens[i]] - row.index_select(0, at::tensor(choices, at::kLong)).logsumexp(0)).item<double>();
    EXPECT_NEAR(details.log_probs[1 + i].item<double>(), expected, 1e-4) << "position " << i;
  }
}

// Gradients whose backward recomputes the head's logits a few positions at a time are transformers' too, and,
// for rows over answer choices and logit / probability objectives the chunks cut across, those of plain
// autograd through the whole head's log-softmax: two saliency calls of 4,000 target tokens kept their
// [4000, vocab] log-softmax for the backward (8.2 GB on a 32,000-token vocabulary).
TEST_P(CausalLMFp32, GradientsThroughTheHeadAFewPositionsAtATimeMatchTransformers) {
  LoadOptions options;
  options.scored_chunk_floats = 2 * model_->config().vocab_size;  // two positions at a time
  auto chunked = CausalLM::Load(TestModelsDir() + "/" + GetParam().arch, options);
  ASSERT_THAT(chunked, IsOk());
  auto alone = (*chunked)->ObjectiveGradients(FirstRowEmbedded(), {ReferenceObjective()});
  ASSERT_THAT(alone, IsOk());
  EXPECT_NEAR(alone->values[0].item<double>(), reference_.Tensor("objective")[0].item<double>(), 1e-4);
  EXPECT_LT(ScaledError(alone->gradients[0], reference_.Tensor("gradient")), 1e-4);

  const RowObjective plain = ReferenceObjective();
  const auto& positions = plain.positions;
  const auto& tokens = plain.tokens;
  ASSERT_GE(positions.size(), 3u);
  const std::vector<int64_t> choices = {tokens[0], tokens[1], 7, 7};  // 7 twice: it counts twice
  std::vector<double> weights(positions.size());
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = 0.5 + static_cast<double>(i);
  const std::vector<RowObjective> objectives = {
      {.positions = {positions[0]}, .tokens = {tokens[0]}, .quantity = TokenQuantity::kProb},
      {.positions = positions, .tokens = tokens, .weights = weights, .choice_tokens = choices},
      {.positions = positions, .tokens = tokens, .quantity = TokenQuantity::kLogProb, .exp_of_sum = true},
      {.positions = positions,
       .tokens = tokens,
       .weights = weights,
       .quantity = TokenQuantity::kLogit,
       .choice_tokens = choices}};
  const at::Tensor embeds = FirstRowEmbedded().inputs_embeds.repeat({4, 1, 1});
  auto chunked_gradients = (*chunked)->ObjectiveGradients(ForwardBatch{.inputs_embeds = embeds}, objectives);
  ASSERT_THAT(chunked_gradients, IsOk());

  // The reference: LibTorch's autograd through the whole head, each objective written out.
  const at::Tensor leaf = embeds.detach().requires_grad_(true);
  const at::Tensor hidden = *model_->Hidden(ForwardBatch{.inputs_embeds = leaf});
  auto logits_of_row = [&](int64_t r) {
    return model_->LogitsAt(hidden, std::vector<int64_t>(positions.size(), r), positions);
  };
  const at::Tensor token_index = at::tensor(tokens, at::kLong).unsqueeze(1);
  const at::Tensor weight_tensor = at::tensor(weights, at::kDouble).to(at::kFloat);
  const at::Tensor choice_index = at::tensor(choices, at::kLong);
  auto over_choices = [&](const at::Tensor& logits) {
    return logits.gather(1, token_index).squeeze(1) - logits.index_select(1, choice_index).logsumexp(-1);
  };
  const at::Tensor expected = at::stack({at::log_softmax(logits_of_row(0), -1)[0][tokens[0]].exp(),
                                         (over_choices(logits_of_row(1)) * weight_tensor).sum(),
                                         at::log_softmax(logits_of_row(2), -1).gather(1, token_index).sum().exp(),
                                         (logits_of_row(3).gather(1, token_index).squeeze(1) * weight_tensor).sum()});
  const at::Tensor expected_gradients = torch::autograd::grad({expected.sum()}, {leaf})[0];
  EXPECT_TRUE(at::allclose(chunked_gradients->values, expected.detach(), 1e-5, 1e-6))
      << chunked_gradients->values << expected;
  for (int64_t r = 0; r < 4; ++r) {
    EXPECT_LT(ScaledError(chunked_gradients->gradients[r], expected_gradients[r]), 1e-5) << "row " << r;
  }
}

// A logit objective (a logit difference) reads only its tokens' rows of the LM head.
TEST_P(CausalLMParity, LogitObjectivesMatchTransformersLogits) {
  const auto positions = reference_.spec["objective_positions"].get<std::vector<int64_t>>();
  const auto tokens = reference_.spec["objective_tokens"].get<std::vector<int64_t>>();
  const at::Tensor logits = reference_.Tensor("logits_0");
  std::vector<double> weights;
  double expected = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    weights.push_back(i % 2 == 0 ? 1.0 : -1.0);
    expected += weights.back() * logits[positions[i]][tokens[i]].item<double>();
  }
  const RowObjective difference{
      .positions = positions, .tokens = tokens, .weights = weights, .quantity = TokenQuantity::kLogit};
  ForwardBatch batch = PaddedBatch();
  std::vector<RowObjective> objectives(rows_.size(), RowObjective{.quantity = TokenQuantity::kLogit});
  objectives[0] = difference;
  c10::InferenceMode inference;
  auto values = model_->ObjectiveValues(batch, objectives);
  ASSERT_THAT(values, IsOk());
  const double scale = logits.abs().max().item<double>();
  EXPECT_NEAR((*values)[0].item<double>(), expected, tolerance() * scale * static_cast<double>(positions.size()));
  EXPECT_EQ((*values)[1].item<double>(), 0.0);  // no tokens: nothing scored
  // Rounded to the compute dtype as the whole head's logits are (an effect differences a patched row's
  // logits with its run's, scored with details through the whole head), within one unit of it.
  const at::Tensor hidden = *model_->Hidden(batch);
  const std::vector<int64_t> first_row(positions.size(), 0);
  const at::Tensor own = model_->TokenLogitsAt(hidden, first_row, positions, tokens);
  const at::Tensor whole =
      model_->LogitsAt(hidden, first_row, positions).gather(1, at::tensor(tokens, at::kLong).unsqueeze(1)).squeeze(1);
  EXPECT_TRUE(at::equal(own, own.to(model_->dtype()).to(at::kFloat)));
  EXPECT_TRUE(at::allclose(own, whole, /*rtol=*/fp32() ? 1e-6 : 1.0 / 128, /*atol=*/1e-6));
}

TEST_P(CausalLMParity, InputGradientMatchesTransformers) {
  ForwardBatch batch = FirstRowEmbedded();
  const RowObjective objective = ReferenceObjective();
  auto result = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(result, IsOk());
  EXPECT_NEAR(result->values[0].item<double>(), reference_.Tensor("objective")[0].item<double>(), fp32() ? 1e-4 : 0.15);
  EXPECT_LT(ScaledError(result->gradients[0], reference_.Tensor("gradient")), fp32() ? 1e-4 : 6e-2);
}

// A logit objective past exp's float range (a long target's summed logits over 88.7) has the gradient of the
// same objective scaled down, times the scale. Before, the branch that scores a sequence's probability
// (exp of the sum) was evaluated for every row: inf there, and 0 · inf = NaN in the backward.
TEST_P(CausalLMParity, LogitObjectivesPastExpsRangeHaveTheirGradients) {
  ForwardBatch batch = FirstRowEmbedded();
  RowObjective objective = ReferenceObjective();
  objective.quantity = TokenQuantity::kLogit;
  auto unit = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(unit, IsOk());
  const double value = unit->values[0].item<double>();
  ASSERT_NE(value, 0.0);
  const double scale = 200.0 / value;  // the scaled objective is 200
  objective.weights.assign(objective.tokens.size(), scale);
  auto scaled = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(scaled, IsOk());
  EXPECT_NEAR(scaled->values[0].item<double>(), 200.0, fp32() ? 1e-3 : 2.0);
  ASSERT_TRUE(at::isfinite(scaled->gradients[0]).all().item<bool>());
  EXPECT_LT(ScaledError(scaled->gradients[0].to(at::kFloat) / scale, unit->gradients[0].to(at::kFloat)),
            fp32() ? 1e-5 : 6e-2);
}

// Pause points in one pass: as each layer begins, between its attention and MLP where the MLP reads the
// attention's output (not Falcon's parallel block), and before the final norm.
size_t PausesPerPass(const ModelConfig& config) {
  const size_t layers = static_cast<size_t>(config.num_layers);
  return (config.parallel_attention ? layers : 2 * layers) + 1;
}

// The engine runs short calls at a gradient batch's pause points, in the forward and again in the
// backward, and a forward run there changes none of its values or gradients.
TEST_P(CausalLMParity, GradientsPauseInEveryLayerBothWaysAndAForwardRunThereChangesNothing) {
  ForwardBatch batch = FirstRowEmbedded();
  const RowObjective objective = ReferenceObjective();
  auto plain = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(plain, IsOk());
  const ForwardBatch other = PaddedBatch();
  const std::vector<RowObjective> other_objectives(rows_.size(), RowObjective{.positions = {0}, .tokens = {1}});
  std::vector<at::Tensor> run_while_paused;
  batch.pause_point = [&] {
    c10::InferenceMode inference;
    run_while_paused.push_back(*model_->ObjectiveValues(other, other_objectives));
  };
  auto paused = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(paused, IsOk());
  const size_t pauses_per_pass = PausesPerPass(model_->config());
  EXPECT_EQ(run_while_paused.size(), 2 * pauses_per_pass);
  EXPECT_TRUE(at::equal(paused->values, plain->values));
  EXPECT_TRUE(at::equal(paused->gradients, plain->gradients));
  c10::InferenceMode inference;
  const at::Tensor alone = *model_->ObjectiveValues(other, other_objectives);
  for (const at::Tensor& values : run_while_paused) EXPECT_TRUE(at::equal(values, alone));
  // A forward without gradients pauses only on the way in.
  run_while_paused.clear();
  ForwardBatch scored = other;
  scored.pause_point = batch.pause_point;
  ASSERT_THAT(model_->ObjectiveValues(scored, other_objectives), IsOk());
  EXPECT_EQ(run_while_paused.size(), pauses_per_pass);
}

// The engine abandons a batch whose requests are all gone by throwing from its pause point: thrown in
// the forward or from a gradient hook in the backward (through autograd's engine), it becomes an error
// status, and the next batch's gradients are exact.
TEST_P(CausalLMParity, APausePointThatThrowsStopsTheGradientsWithAnError) {
  ForwardBatch batch = FirstRowEmbedded();
  const RowObjective objective = ReferenceObjective();
  auto plain = model_->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(plain, IsOk());
  const int pauses_per_pass = static_cast<int>(PausesPerPass(model_->config()));
  for (const int throw_at : {1, 2, pauses_per_pass + 1, 2 * pauses_per_pass}) {  // forward; backward, its last
    int pauses = 0;
    ForwardBatch abandoned = batch;
    abandoned.pause_point = [&] {
      if (++pauses == throw_at) throw std::runtime_error("batch abandoned");
    };
    EXPECT_THAT(model_->ObjectiveGradients(abandoned, {objective}), StatusIs(absl::StatusCode::kInternal))
        << "thrown at pause " << throw_at;
    EXPECT_EQ(pauses, throw_at);
    auto after = model_->ObjectiveGradients(batch, {objective});
    ASSERT_THAT(after, IsOk());
    EXPECT_TRUE(at::equal(after->gradients, plain->gradients));
  }
}

TEST_P(CausalLMParity, GreedyGenerationMatchesTransformers) {
  GenerationOptions options{.max_new_tokens = 8, .ignore_stop_tokens = true};
  auto generations = Generate(*model_, rows_, options);
  ASSERT_THAT(generations, IsOk());
  const auto expected = reference_.spec["greedy_generations"].get<std::vector<std::vector<int64_t>>>();
  for (size_t r = 0; r < rows_.size(); ++r) {
    // bf16 near-ties may flip late tokens; the first ones must agree in every dtype.
    const size_t compared = fp32() ? expected[r].size() : 2;
    EXPECT_THAT(std::vector<int64_t>((*generations)[r].tokens.begin(), (*generations)[r].tokens.begin() + compared),
                ::testing::ElementsAreArray(expected[r].begin(), expected[r].begin() + compared))
        << "row " << r;
  }
}

TEST_P(CausalLMParity, ResidualHookReadsTransformersHiddenState) {
  at::Tensor captured;
  ActivationHooks hooks{.after_layer = [&](int64_t layer, const at::Tensor& residual) {
    if (layer == 0) captured = residual.detach().clone();
    return at::Tensor();
  }};
  c10::InferenceMode inference;
  ForwardBatch batch{.input_ids = at::tensor(rows_[0], at::kLong).unsqueeze(0), .hooks = &hooks};
  ASSERT_THAT(model_->Hidden(batch), IsOk());
  ASSERT_TRUE(captured.defined());
  EXPECT_LT(ScaledError(captured[0], reference_.Tensor("residual_after_layer0")), tolerance());
}

TEST_P(CausalLMFp32, PrefillThenDecodeEqualsFullForward) {
  c10::InferenceMode inference;
  const std::vector<int64_t>& row = rows_[1];
  KvCache cache(model_->config().num_layers, 1);
  const int64_t prefix = 5;
  at::Tensor ids = at::tensor(row, at::kLong).unsqueeze(0);
  ASSERT_THAT(model_->Hidden({.input_ids = ids.narrow(1, 0, prefix), .cache = &cache}), IsOk());
  at::Tensor full = reference_.Tensor("logits_1");
  for (int64_t p = prefix; p < static_cast<int64_t>(row.size()); ++p) {
    at::Tensor hidden = *model_->Hidden({.input_ids = ids.narrow(1, p, 1), .cache = &cache});
    EXPECT_LT(ScaledError(model_->LogitsAt(hidden, {0}, {0})[0], full[p]), 1e-4) << "position " << p;
  }
  EXPECT_EQ(cache.lengths()[0], static_cast<int64_t>(row.size()));
}

// Rows continuing cached prefixes of different lengths in one batch (a perturbation's coalitions) score as the
// row's own forward without a cache does, in every dtype: attention spans no more key slots than some row fills.
// Padded to max(prefix) + suffix (here 20 slots for 12 tokens), bfloat16 scores moved by a step of their own
// (PyTorch's CPU flash attention computes otherwise from 16 keys on), so feature ablation in bfloat16 credited
// tokens that change nothing.
TEST_P(CausalLMParity, RowsOnCachedPrefixesOfDifferentLengthsScoreAsTheirOwnForward) {
  c10::InferenceMode inference;
  const std::vector<int64_t>& row =
      *std::max_element(rows_.begin(), rows_.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });
  const int64_t length = static_cast<int64_t>(row.size());
  ASSERT_GE(length, 10);
  const at::Tensor ids = at::tensor(row, at::kLong).unsqueeze(0);
  const at::Tensor expected = model_->LogitsAt(*model_->Hidden({.input_ids = ids}), {0}, {length - 1})[0];
  const std::vector<int64_t> prefixes = {2, length / 2, length - 2};
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<KvRow> parts;
  for (int64_t prefix : prefixes) {
    caches.push_back(std::make_unique<KvCache>(model_->config().num_layers, 1));
    ASSERT_THAT(model_->Hidden({.input_ids = ids.narrow(1, 0, prefix), .cache = caches.back().get()}), IsOk());
    parts.push_back({caches.back().get()});
  }
  KvCache batch_cache = KvCache::Stack(parts);
  std::vector<int64_t> lengths;
  at::Tensor suffixes = at::zeros({static_cast<int64_t>(prefixes.size()), length - prefixes.front()}, at::kLong);
  for (size_t r = 0; r < prefixes.size(); ++r) {
    lengths.push_back(length - prefixes[r]);
    suffixes[static_cast<int64_t>(r)].narrow(0, 0, lengths[r]).copy_(ids[0].narrow(0, prefixes[r], lengths[r]));
  }
  absl::StatusOr<at::Tensor> hidden =
      model_->Hidden({.input_ids = suffixes, .lengths = lengths, .cache = &batch_cache});
  ASSERT_THAT(hidden, IsOk());
  for (size_t r = 0; r < prefixes.size(); ++r) {
    const at::Tensor ours = model_->LogitsAt(*hidden, {static_cast<int64_t>(r)}, {lengths[r] - 1})[0];
    const double error = ScaledError(ours, expected);
    std::cout << "[ cached   ] " << GetParam().arch << " " << GetParam().dtype << " prefix " << prefixes[r] << " error "
              << error << "\n";
    EXPECT_LT(error, fp32() ? 1e-5 : 1e-3) << "prefix " << prefixes[r];
  }
}

// Rows joining one forward at different layers (row r from the residual stream entering layer r,
// the last row after every layer) give transformers' logits, as the runtime's component rows use them.
TEST_P(CausalLMFp32, RowsJoiningAtTheirLayersGiveTransformersLogits) {
  c10::InferenceMode inference;
  const int64_t layers = model_->config().num_layers;
  ForwardBatch padded = PaddedBatch();
  const int64_t rows = padded.input_ids.size(0);
  ASSERT_EQ(layers, rows - 1) << "the test joins one row per layer and one after the last";
  std::vector<at::Tensor> entering(layers + 1);  // [B, S, hidden] per layer, and after the last
  ActivationHooks capture{
      .after_layer =
          [&](int64_t layer, const at::Tensor& residual) {
            entering[layer + 1] = residual.clone();
            return at::Tensor();
          },
      .at_site =
          [&](ComponentSite site, int64_t layer, const at::Tensor& activation) {
            if (site == ComponentSite::kResidPre) entering[layer] = activation.clone();
            return at::Tensor();
          },
  };
  padded.hooks = &capture;
  ASSERT_THAT(model_->Hidden(padded), IsOk());
  std::vector<at::Tensor> inputs;
  std::vector<int64_t> first_layers;
  for (int64_t r = 0; r < rows; ++r) {
    inputs.push_back(entering[r][r]);
    first_layers.push_back(r);
  }
  ForwardBatch joining{.inputs_embeds = at::stack(inputs), .lengths = padded.lengths, .first_layers = first_layers};
  auto hidden = model_->Hidden(joining);
  ASSERT_THAT(hidden, IsOk());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_LT(ScaledError(LogitsOfRow(joining, *hidden, r), reference_.Tensor("logits_" + std::to_string(r))),
              tolerance())
        << "row " << r << " joining at layer " << r;
  }
}

// Every tensor of the float32 checkpoint is used once, in float32 (tied heads are not stored), so without
// packed copies the resident bytes are the checkpoint's data bytes. GPT-2 has no gate projection: it must
// count 0. With them (the default on the CPU), every linear's weight counts twice: each 2-D tensor but
// the embeddings, and the head, which for a tied model is the token embedding.
TEST_P(CausalLMFp32, ResidentWeightBytesAreTheCheckpointsTensorBytesAndThePackedCopies) {
  const std::string dir = TestModelsDir() + "/" + GetParam().arch;
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_THAT(file, IsOk());
  int64_t checkpoint = 0, linear_weights = 0, token_embedding = 0;
  for (const auto& [name, record] : (*file)->tensors()) {
    const int64_t bytes = static_cast<int64_t>(record.end - record.begin);
    checkpoint += bytes;
    const bool embedding = absl::StrContains(name, "embed") || absl::StrContains(name, "wte") ||
                           absl::StrContains(name, "wpe") || absl::StrContains(name, "word_embeddings");
    if (record.shape.size() == 2 && !embedding) linear_weights += bytes;
    if (record.shape.size() == 2 && embedding && !absl::StrContains(name, "wpe")) token_embedding = bytes;
  }
  const bool tied = !(*file)->tensors().contains("lm_head.weight");
  EXPECT_EQ(model_->ResidentWeightBytes(), checkpoint + linear_weights + (tied ? token_embedding : 0));

  auto unpacked = CausalLM::Load(dir, {.pack_weights_for_few_rows = false});
  ASSERT_THAT(unpacked, IsOk());
  EXPECT_EQ((*unpacked)->ResidentWeightBytes(), checkpoint);
}

// transformers' own checkpoints hold exactly the tensors we load (a tied head is not stored).
TEST_P(CausalLMFp32, CheckpointHasNoUnusedTensors) { EXPECT_THAT(model_->unused_weights(), ::testing::IsEmpty()); }

// Every dtype for every architecture: Falcon in its three query_key_value layouts, Mixtral's experts.
std::vector<Case> EveryArchitectureAndDtype() {
  std::vector<Case> cases;
  for (const char* arch :
       {"llama", "mistral", "qwen2", "gpt2", "falcon", "falcon-grouped", "falcon-sequential", "mixtral"}) {
    for (const char* dtype : {"float32", "bfloat16", "float16"}) cases.push_back({arch, dtype});
  }
  cases.push_back({"gpt2-odd-heads", "float32"});  // heads of 3 dimensions (no rotation asks for pairs)
  return cases;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.arch + "_" + info.param.dtype;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, CausalLMParity, ::testing::ValuesIn(EveryArchitectureAndDtype()), CaseName);
INSTANTIATE_TEST_SUITE_P(AllArchitectures, CausalLMFp32,
                         ::testing::Values(Case{"llama", "float32"}, Case{"mistral", "float32"},
                                           Case{"qwen2", "float32"}, Case{"gpt2", "float32"}, Case{"falcon", "float32"},
                                           Case{"falcon-grouped", "float32"}, Case{"falcon-sequential", "float32"},
                                           Case{"mixtral", "float32"}, Case{"gpt2-odd-heads", "float32"}),
                         CaseName);

// Mixtral's router, read through the router_logits hook while all rows run in one padded batch: every
// token of every row picks the experts transformers picks (row alone), from logits within 1e-4. The
// rows' tokens spread over the experts, so RowInBatchEqualsRowAlone above covers rows routed apart.
class MixtralRouting : public CausalLMParity {};

TEST_P(MixtralRouting, EveryTokenPicksTheExpertsTransformersPicks) {
  const int64_t layers = model_->config().num_layers, top_k = model_->config().mixture_of_experts->experts_per_token;
  std::vector<at::Tensor> captured(layers);
  ActivationHooks hooks{
      .router_logits = [&](int64_t layer, const at::Tensor& logits) { captured[layer] = logits.detach().clone(); }};
  c10::InferenceMode inference;
  ForwardBatch batch = PaddedBatch();
  batch.hooks = &hooks;
  ASSERT_THAT(model_->Hidden(batch), IsOk());
  std::set<int64_t> used;
  for (size_t r = 0; r < rows_.size(); ++r) {
    const at::Tensor expected = reference_.Tensor("router_logits_" + std::to_string(r));  // [layers, len, experts]
    for (int64_t layer = 0; layer < layers; ++layer) {
      ASSERT_TRUE(captured[layer].defined());
      const at::Tensor ours = captured[layer][r].narrow(0, 0, batch.lengths[r]);
      EXPECT_LT(ScaledError(ours, expected[layer]), 1e-4) << "row " << r << " layer " << layer;
      const at::Tensor chosen = std::get<0>(std::get<1>(ours.topk(top_k, -1)).sort(-1));
      EXPECT_TRUE(at::equal(chosen, std::get<0>(std::get<1>(expected[layer].topk(top_k, -1)).sort(-1))))
          << "row " << r << " layer " << layer;
      for (int64_t e : std::vector<int64_t>(chosen.data_ptr<int64_t>(), chosen.data_ptr<int64_t>() + chosen.numel())) {
        used.insert(e);
      }
    }
  }
  EXPECT_EQ(used.size(), static_cast<size_t>(model_->config().mixture_of_experts->num_experts));
}

INSTANTIATE_TEST_SUITE_P(Mixtral, MixtralRouting, ::testing::Values(Case{"mixtral", "float32"}), CaseName);

TEST(CausalLM, NoParameterRequiresGradAfterGradients) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  ForwardBatch batch{.inputs_embeds = *(*model)->Embed(Ids({5, 6, 7}))};
  auto result = (*model)->ObjectiveGradients(batch, {RowObjective{.positions = {2}, .tokens = {9}}});
  ASSERT_THAT(result, IsOk());
  EXPECT_FALSE(batch.inputs_embeds.requires_grad());
  EXPECT_GT(result->gradients.abs().sum().item<double>(), 0.0);
}

TEST(CausalLM, ReplacedResidualCarriesGradientsThatMatchFiniteDifferences) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  const CausalLM& m = **model;
  const RowObjective objective{.positions = {3}, .tokens = {17}};
  // Run with the residual after layer 0 replaced by `patch` (when defined) and return the objective.
  auto run = [&](const at::Tensor& patch, at::Tensor* captured) {
    ActivationHooks hooks{.after_layer = [&](int64_t layer, const at::Tensor& residual) {
      if (layer != 0) return at::Tensor();
      if (captured != nullptr) *captured = residual.detach().clone();
      return patch;
    }};
    return *m.ObjectiveValues({.input_ids = Ids({4, 8, 15, 16, 23}), .hooks = &hooks}, {objective});
  };
  at::Tensor clean;
  run(at::Tensor(), &clean);
  at::Tensor leaf = clean.clone().requires_grad_(true);
  at::Tensor value = run(leaf, nullptr);
  at::Tensor gradient = torch::autograd::grad({value.sum()}, {leaf})[0];
  // Directional derivative along a random direction, by central differences in double precision.
  at::Tensor direction = at::randn_like(clean);
  const double eps = 1e-3;
  c10::AutoGradMode no_grad(false);
  const double plus = run(clean + eps * direction, nullptr).item<double>();
  const double minus = run(clean - eps * direction, nullptr).item<double>();
  const double numeric = (plus - minus) / (2 * eps);
  const double analytic = (gradient * direction).sum().item<double>();
  EXPECT_NEAR(analytic, numeric, 2e-3 * std::max(1.0, std::abs(numeric)));
  // Patching with the clean value changes nothing.
  EXPECT_NEAR(run(clean, nullptr).item<double>(), value.item<double>(), 1e-6);
}

TEST(CausalLM, SamplingIsSeededAndTopPNarrowsToGreedy) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  const std::vector<std::vector<int64_t>> prompts = {{5, 17, 99}, {12, 8}};
  auto sample = [&](uint64_t seed, double top_p) {
    return *Generate(
        **model, prompts,
        {.max_new_tokens = 12, .temperature = 1.5, .top_p = top_p, .seed = seed, .ignore_stop_tokens = true});
  };
  auto a = sample(1, 1.0), b = sample(1, 1.0), c = sample(2, 1.0);
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  EXPECT_EQ(a[1].tokens, b[1].tokens);
  EXPECT_NE(a[0].tokens, c[0].tokens);  // 12 draws at temperature 1.5 from 320 tokens
  auto greedy = *Generate(**model, prompts, {.max_new_tokens = 12, .ignore_stop_tokens = true});
  auto narrow = sample(3, 1e-6);  // only the most likely token survives top-p
  EXPECT_EQ(narrow[0].tokens, greedy[0].tokens);
  EXPECT_EQ(narrow[1].tokens, greedy[1].tokens);
  EXPECT_THAT(Generate(**model, prompts, {.top_p = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p")));
  EXPECT_THAT(Generate(**model, prompts, {.temperature = -1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("temperature")));
  EXPECT_THAT(Generate(**model, {{}}, {}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt")));
}

// Closed form, transformers' order: probabilities 0.1, 0.2, 0.3, 0.4; top_k 3 leaves 0.2, 0.3, 0.4, renormalized
// to 2/9, 3/9, 4/9; top_p 0.75 then drops 2/9 (the mass before it, 7/9, reaches 0.75), so only tokens 2 and 3
// are drawn. top-p on the unrenormalized probabilities would keep token 1 (mass before it 0.7), and top_k
// alone keeps it too: 2000 draws at 2/9 each show it.
TEST(CausalLM, TopKCutsBeforeTopPAsTransformersWarpersDo) {
  at::Tensor logits = at::log(at::tensor({0.1, 0.2, 0.3, 0.4}, at::kFloat)).unsqueeze(0).repeat({2000, 1});
  auto drawn = [&](GenerationOptions options) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(7);
    at::Tensor tokens = PickNextTokens(logits, options, generator);
    std::set<int64_t> seen;
    for (int64_t i = 0; i < tokens.size(0); ++i) seen.insert(tokens[i].item<int64_t>());
    return seen;
  };
  EXPECT_EQ(drawn({.temperature = 1.0, .top_k = 3, .top_p = 0.75}), (std::set<int64_t>{2, 3}));
  EXPECT_EQ(drawn({.temperature = 1.0, .top_k = 3}), (std::set<int64_t>{1, 2, 3}));
  EXPECT_EQ(drawn({.temperature = 1.0, .top_k = 1}), (std::set<int64_t>{3}));
  EXPECT_EQ(drawn({.temperature = 1.0, .top_k = 4}), (std::set<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(drawn({.temperature = 1.0, .top_k = 100}), (std::set<int64_t>{0, 1, 2, 3}));
  EXPECT_THAT(CheckGenerationOptions({.top_k = -1}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
}

// Five tokens tie for the most likely among 4,000 (the default model's vocabulary), top_p keeps two of them:
// the two lowest ids, as a stable sort orders them (an unstable one kept an order of its own, by size).
TEST(CausalLM, TopPKeepsTheLowestIdsOfTiedTokens) {
  const std::vector<int64_t> tied = {3001, 225, 1085, 577, 328};
  at::Tensor logits = at::full({4000}, -20.0, at::kFloat);
  for (int64_t id : tied) logits[id] = 5.0;
  logits = logits.unsqueeze(0).repeat({2000, 1});
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor tokens = PickNextTokens(logits, {.temperature = 1.0, .top_p = 0.3}, generator);
  std::set<int64_t> seen;
  for (int64_t i = 0; i < tokens.size(0); ++i) seen.insert(tokens[i].item<int64_t>());
  EXPECT_EQ(seen, (std::set<int64_t>{225, 328}));
}

// Found by tests/fuzz/request_fuzzer: logits / 1e-78 overflowed to inf, softmax gave NaN and sampling
// failed with INTERNAL.
TEST(CausalLM, TinyTemperatureSamplesTheMostLikelyToken) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  const std::vector<std::vector<int64_t>> prompts = {{5, 17, 99}, {12, 8}};
  auto greedy = Generate(**model, prompts, {.max_new_tokens = 6, .ignore_stop_tokens = true});
  ASSERT_THAT(greedy, IsOk());
  for (double temperature : {1e-78, 1e-300, 5e-324}) {
    auto sampled = Generate(**model, prompts,
                            {.max_new_tokens = 6, .temperature = temperature, .seed = 1, .ignore_stop_tokens = true});
    ASSERT_THAT(sampled, IsOk()) << temperature;
    EXPECT_EQ((*sampled)[0].tokens, (*greedy)[0].tokens) << temperature;
    EXPECT_EQ((*sampled)[1].tokens, (*greedy)[1].tokens) << temperature;
  }
}

TEST(CausalLM, GenerationStopsAtEos) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  auto greedy = *Generate(**model, {{5, 17, 99}}, {.max_new_tokens = 8, .ignore_stop_tokens = true});
  // Declaring the third greedy token a stop token ends generation right there.
  auto stopped = *Generate(**model, {{5, 17, 99}}, {.max_new_tokens = 8, .stop_token_ids = {greedy[0].tokens[2]}});
  EXPECT_TRUE(stopped[0].stopped);
  EXPECT_EQ(stopped[0].tokens.size(),
            static_cast<size_t>(std::find(greedy[0].tokens.begin(), greedy[0].tokens.end(), greedy[0].tokens[2]) -
                                greedy[0].tokens.begin() + 1));
}

TEST(CausalLM, ShardedCheckpointLoadsTheSameWeights) {
  auto single = CausalLM::Load(TestModelsDir() + "/llama", {});
  auto sharded = CausalLM::Load(TestModelsDir() + "/llama-sharded", {});
  ASSERT_THAT(single, IsOk());
  ASSERT_THAT(sharded, IsOk());
  c10::InferenceMode inference;
  ForwardBatch batch{.input_ids = Ids({3, 1, 4, 1, 5})};
  EXPECT_TRUE(at::equal(*(*single)->Hidden(batch), *(*sharded)->Hidden(batch)));
}

// Every entry point answers a malformed batch with a status; none lets a LibTorch exception out.
TEST(CausalLM, MalformedBatchesAreStatusesOnEveryEntryPoint) {
  auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
  ASSERT_THAT(model, IsOk());
  const CausalLM& m = **model;
  const RowObjective objective{.positions = {0}, .tokens = {3}};
  for (const ForwardBatch& batch : {ForwardBatch{}, ForwardBatch{.inputs_embeds = at::zeros({2}, at::kLong)},
                                    ForwardBatch{.inputs_embeds = at::zeros({1, 2})}}) {
    EXPECT_THAT(m.ScoreTokens(batch, {.rows = {0}, .positions = {0}, .tokens = {3}}),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(m.ObjectiveValues(batch, {objective}), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(m.ObjectiveGradients(batch, {objective}), StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST(CausalLM, RejectsBadForwardInputs) {
  auto model = CausalLM::Load(TestModelsDir() + "/qwen2", {});
  ASSERT_THAT(model, IsOk());
  c10::InferenceMode inference;
  const CausalLM& m = **model;
  auto code = [&](ForwardBatch b) { return m.Hidden(b).status().code(); };
  EXPECT_EQ(code(ForwardBatch{}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(ForwardBatch{.input_ids = Ids({1, 400})}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(ForwardBatch{.input_ids = Ids({1, -1})}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(ForwardBatch{.input_ids = Ids({1, 2}), .lengths = {3}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(ForwardBatch{.input_ids = Ids({1, 2}), .lengths = {0}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(ForwardBatch{.inputs_embeds = at::zeros({1, 2, 7})}), absl::StatusCode::kInvalidArgument);
  const at::Tensor residual = at::zeros({2, 2, m.config().hidden_size});
  EXPECT_THAT(m.Hidden({.inputs_embeds = residual, .first_layers = {1, 0}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-decreasing")));
  EXPECT_THAT(m.Hidden({.inputs_embeds = residual, .first_layers = {0, m.config().num_layers + 1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("first_layers")));
  EXPECT_THAT(m.Hidden({.inputs_embeds = residual, .first_layers = {0}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("first_layers has 1 entries for 2 rows")));
  EXPECT_THAT(m.Hidden({.input_ids = Ids({1, 2}), .first_layers = {0}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("first_layers")));
  auto scores = m.ScoreTokens({.input_ids = Ids({1, 2})}, {.rows = {0}, .positions = {2}, .tokens = {1}});
  EXPECT_THAT(scores, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("position 2")));
  EXPECT_THAT(CausalLM::Load(TestModelsDir() + "/qwen2", {.device = "tpu"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tpu")));
}

}  // namespace
}  // namespace attribution::engine
