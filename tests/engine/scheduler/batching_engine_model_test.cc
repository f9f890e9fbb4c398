// SPDX-License-Identifier: Apache-2.0
// The batching engine over a real model: a row's result does not depend on its batch mates, and
// generation through decode rows equals the model's own batched generation.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "engine/scheduler/batching_engine.h"
#include "engine/scheduler/component_work.h"
#include "engine/scheduler/engine_generation.h"
#include "engine/scheduler/path_embeddings.h"
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
using ::testing::AllOf;
using ::testing::HasSubstr;

class EngineOverModel : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = CausalLM::Load(TestModelsDir() + "/llama", {});
    ASSERT_THAT(model, IsOk());
    model_ = std::move(*model);
    // A long queue delay gathers every row submitted below into shared batches.
    auto engine = BatchingEngine::Create(
        MakeModelExecutor(model_),
        {.max_batch_tokens = 4096, .max_batch_rows = 32, .max_queue_delay = absl::Milliseconds(200)});
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

// What a grad row on `path` at `alpha` must return, computed here from the model's own embeddings and
// gradients of the point, row by row.
struct ExpectedGrad {
  double value = 0;
  at::Tensor position_values;  // [S]
};

TEST_F(EngineOverModel, RowResultsEqualRowsComputedAlone) {
  const std::vector<int64_t> lengths = {5, 11, 3, 8, 11, 6};
  const PathReduction reductions[] = {PathReduction::kTimesDirection, PathReduction::kTimesInput,
                                      PathReduction::kAbsolute, PathReduction::kSigned};
  // Rows under different propagation rules share batches too (the executor runs a forward per rule).
  const PropagationRules rules[] = {PropagationRules::kGradient, PropagationRules::kAttnLrp, PropagationRules::kCpLrp};
  std::vector<std::unique_ptr<RowCollector>> score_results, grad_results;
  std::vector<Row> score_rows, grad_rows;
  std::vector<ExpectedGrad> expected;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const std::vector<int64_t> ids = Ids(lengths[i], static_cast<int64_t>(i));
    RowObjective objective{.positions = {lengths[i] - 2, lengths[i] - 1},
                           .tokens = {7, 9},
                           .quantity = i % 2 ? TokenQuantity::kProb : TokenQuantity::kLogProb};
    score_rows.push_back(Row{.kind = RowKind::kScore, .input_ids = ids, .objective = objective, .top_k = 3});
    // A path from another token (or, for odd rows, the zero embedding) at the first two positions.
    EmbeddingPath path{.input_ids = ids, .baseline_ids = ids, .reduction = reductions[i % 4], .rules = rules[i % 3]};
    path.baseline_ids[0] = path.baseline_ids[1] = 4;
    if (i % 2) path.zero_baseline = {1, 1};
    path.zero_baseline.resize(i % 2 ? ids.size() : 0, 0);
    const double alpha = 0.2 + 0.1 * static_cast<double>(i);
    at::Tensor input = Embeds(ids), baseline = Embeds(path.baseline_ids);
    if (i % 2) baseline.narrow(0, 0, 2).zero_();
    const at::Tensor point = baseline + alpha * (input - baseline);
    auto alone = model_->ObjectiveGradients({.inputs_embeds = point.unsqueeze(0), .rules = rules[i % 3]}, {objective});
    ASSERT_THAT(alone, IsOk());
    const at::Tensor g = alone->gradients[0];
    const at::Tensor by_reduction[] = {(g * (input - baseline)).sum(-1), (g * input).sum(-1), g.abs().sum(-1),
                                       g.sum(-1)};
    expected.push_back({alone->values[0].item<double>(), by_reduction[i % 4]});
    Row grad{.kind = RowKind::kGrad, .objective = objective};
    grad.point = PathPoint{.path = std::make_shared<const EmbeddingPath>(std::move(path)), .alpha = alpha};
    grad_rows.push_back(std::move(grad));
  }
  // One request per row, so every batch mixes requests and lengths.
  for (size_t i = 0; i < lengths.size(); ++i) {
    score_results.push_back(std::make_unique<RowCollector>(1));
    grad_results.push_back(std::make_unique<RowCollector>(1));
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {score_rows[i]}, score_results.back()->Callback()), IsOk());
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {grad_rows[i]}, grad_results.back()->Callback()), IsOk());
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    score_results[i]->Wait();
    grad_results[i]->Wait();
    const RowResult& grad = grad_results[i]->result(0);
    const RowResult& score = score_results[i]->result(0);
    ASSERT_THAT(grad.status, IsOk());
    ASSERT_THAT(score.status, IsOk());
    auto scored_alone = model_->ObjectiveValues(
        {.input_ids = at::tensor(score_rows[i].input_ids, at::kLong).unsqueeze(0)}, {score_rows[i].objective});
    ASSERT_THAT(scored_alone, IsOk());
    EXPECT_NEAR(score.value, (*scored_alone)[0].item<double>(), 1e-5);
    EXPECT_NEAR(grad.value, expected[i].value, 1e-5);
    ASSERT_EQ(grad.position_values.size(0), lengths[i]);
    EXPECT_LT(ScaledError(grad.position_values, expected[i].position_values), 1e-5) << "row " << i;
    EXPECT_EQ(score.top_ids.size(0), 2);
  }
  std::lock_guard<std::mutex> lock(mu_);
  int64_t largest = 0;
  for (const BatchRecord& r : records_) largest = std::max(largest, r.rows);
  EXPECT_GT(largest, 1) << "rows were never batched together";
}

TEST_F(EngineOverModel, PathEmbeddingsLiveWhileRowsHoldTheirPath) {
  PathEmbeddings paths(model_);
  const std::vector<int64_t> ids = Ids(6, 1);
  auto path = std::make_shared<const EmbeddingPath>(
      EmbeddingPath{.input_ids = ids, .baseline_ids = std::vector<int64_t>(6, 4)});
  std::vector<Row> rows = {Row{.kind = RowKind::kScore, .point = {.path = path, .alpha = 0.0}},
                           Row{.kind = RowKind::kScore, .point = {.path = path, .alpha = 1.0}}};
  at::Tensor embeds = at::zeros({2, 6, model_->config().hidden_size});
  ASSERT_THAT(paths.Fill({&rows[0], &rows[1]}, embeds), IsOk());
  // The path's ends exactly: the baseline tokens' and the input's own embeddings.
  EXPECT_TRUE(at::equal(embeds[0], Embeds(path->baseline_ids)));
  EXPECT_TRUE(at::equal(embeds[1], Embeds(ids)));
  path.reset();
  paths.ReleaseUnused();
  EXPECT_EQ(paths.size(), 1u);  // the rows still hold it
  rows.clear();
  paths.ReleaseUnused();
  EXPECT_EQ(paths.size(), 0u);
}

TEST_F(EngineOverModel, NoisySampleDoesNotDependOnItsBatchMates) {
  const std::vector<int64_t> ids = Ids(9, 3);
  EmbeddingPath path{.input_ids = ids,
                     .baseline_ids = std::vector<int64_t>(ids.size(), 4),
                     .noise_stdev = 0.5,
                     .noise_seed = 11,
                     .noised = std::vector<uint8_t>(ids.size(), 1)};
  auto shared = std::make_shared<const EmbeddingPath>(path);
  const RowObjective objective{.positions = {8}, .tokens = {7}};
  auto row = [&](int64_t sample) {
    return Row{.kind = RowKind::kGrad,
               .point = {.path = shared, .alpha = 0.5, .noise_sample = sample},
               .objective = objective};
  };
  // Sample 2 alone, then in one batch with samples 0..3 (in another order), then without noise.
  RowCollector alone(1), together(4), noiseless(1);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {row(2)}, alone.Callback()), IsOk());
  alone.Wait();
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {row(3), row(2), row(0), row(1)}, together.Callback()), IsOk());
  together.Wait();
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {row(-1)}, noiseless.Callback()), IsOk());
  noiseless.Wait();
  EXPECT_TRUE(at::allclose(alone.result(0).position_values, together.result(1).position_values, 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(together.result(0).position_values, together.result(1).position_values, 1e-3, 1e-4));
  EXPECT_FALSE(at::allclose(alone.result(0).position_values, noiseless.result(0).position_values, 1e-3, 1e-4));
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

// A decode row (a prompt's prefill, one row of seconds for a long prompt) and a score row pass the abandon
// point as each of Llama's decoder layers begins, between its attention and MLP, and before the final norm: the
// engine throws there once nobody wants the batch (the model answers an error). Stopped so, a decode row's cache
// is as it was, and the step then runs as if it never started.
TEST_F(EngineOverModel, ScoreAndDecodeRowsStopAtTheAbandonPointOfALayer) {
  std::unique_ptr<BatchExecutor> executor = MakeModelExecutor(model_);
  const int layers = static_cast<int>(model_->config().num_layers);
  ASSERT_GE(layers, 2);
  int passed = 0, stop_at = 2;
  executor->SetAbandonPoint([&] {
    if (++passed == stop_at) throw std::runtime_error("batch abandoned");
  });
  auto state = std::make_shared<DecodeState>(layers);
  Row prefill{.kind = RowKind::kDecode, .input_ids = Ids(12, 4), .decode_state = state};
  std::vector<RowResult> results(1);
  EXPECT_FALSE(executor->Run(RowKind::kDecode, {&prefill}, results).ok());
  EXPECT_EQ(passed, 2);
  EXPECT_EQ(state->cache.lengths(), std::vector<int64_t>{0});
  EXPECT_FALSE(results[0].next_logits.defined());

  passed = 0;
  stop_at = -1;
  ASSERT_THAT(executor->Run(RowKind::kDecode, {&prefill}, results), IsOk());
  EXPECT_EQ(passed, 2 * layers + 1);
  EXPECT_EQ(state->cache.lengths(), std::vector<int64_t>{12});
  auto fresh_state = std::make_shared<DecodeState>(layers);
  Row fresh{.kind = RowKind::kDecode, .input_ids = Ids(12, 4), .decode_state = fresh_state};
  std::vector<RowResult> fresh_results(1);
  ASSERT_THAT(executor->Run(RowKind::kDecode, {&fresh}, fresh_results), IsOk());
  EXPECT_TRUE(at::equal(results[0].next_logits, fresh_results[0].next_logits));

  passed = 0;
  Row score{.kind = RowKind::kScore, .input_ids = Ids(6, 2), .objective = {.positions = {4}, .tokens = {9}}};
  ASSERT_THAT(executor->Run(RowKind::kScore, {&score}, results), IsOk());
  EXPECT_EQ(passed, 2 * layers + 1);
}

// A patched component batch (a pair's score rows) stops at the abandon point as a layer begins too. The
// pair's capture, which the pair's later rows reuse, runs whole first: rerun, the row equals a fresh
// executor's, and a stop that tore the capture would show there.
TEST_F(EngineOverModel, PatchedComponentRowsStopAtTheAbandonPointAndKeepTheirPairsCapture) {
  const int layers = static_cast<int>(model_->config().num_layers);
  std::vector<int64_t> corrupted_ids = Ids(9, 1);
  corrupted_ids[4] += 1;
  auto pair = std::make_shared<const PromptPair>(PromptPair{.clean_ids = Ids(9, 1), .corrupted_ids = corrupted_ids});
  Row patched{.kind = RowKind::kScore,
              .input_ids = pair->corrupted_ids,
              .objective = {.positions = {8}, .tokens = {9}},
              .component = {.pair = pair,
                            .run = PairRun::kCorrupted,
                            .patch = ComponentSelection{.site = ComponentSite::kHeads, .layer = 0, .head = 0}}};
  std::unique_ptr<BatchExecutor> executor = MakeModelExecutor(model_);
  int passed = 0, stop_at = 2;
  executor->SetAbandonPoint([&] {
    if (++passed == stop_at) throw std::runtime_error("batch abandoned");
  });
  std::vector<RowResult> results(1);
  EXPECT_FALSE(executor->Run(RowKind::kScore, {&patched}, results).ok());
  EXPECT_EQ(passed, 2);

  passed = 0;
  stop_at = -1;
  ASSERT_THAT(executor->Run(RowKind::kScore, {&patched}, results), IsOk());
  EXPECT_EQ(passed, 2 * layers + 1);
  std::vector<RowResult> fresh_results(1);
  ASSERT_THAT(MakeModelExecutor(model_)->Run(RowKind::kScore, {&patched}, fresh_results), IsOk());
  EXPECT_EQ(results[0].value, fresh_results[0].value);

  // Attribution patching's grad rows (every site's estimate) stop so as well.
  Row estimates = patched;
  estimates.kind = RowKind::kGrad;
  estimates.component.patch.reset();
  estimates.component.site_estimates = true;
  passed = 0;
  stop_at = 2;
  EXPECT_FALSE(executor->Run(RowKind::kGrad, {&estimates}, results).ok());
  EXPECT_EQ(passed, 2);
}

// Generations' keys and values stay in their step's batch cache: a next step of the same sequences in the
// same order appends there (the cache object stays: nothing copied), sequences in another batch or order move
// into a new one. Each step's logits equal the sequence decoded alone, and a step abandoned part-way inside a
// kept cache leaves it as it was.
TEST_F(EngineOverModel, DecodeStepsKeepTheirBatchCacheAndEqualEachSequenceDecodedAlone) {
  const int layers = static_cast<int>(model_->config().num_layers);
  std::unique_ptr<BatchExecutor> together = MakeModelExecutor(model_), alone = MakeModelExecutor(model_);
  int passed = 0, stop_at = -1;
  together->SetAbandonPoint([&] {
    if (++passed == stop_at) throw std::runtime_error("batch abandoned");
  });
  struct Sequence {
    std::shared_ptr<DecodeState> batched, solo;
    int fed = 0;         // steps taken
    int64_t tokens = 0;  // tokens appended
  };
  std::vector<Sequence> sequences(3);
  for (Sequence& s : sequences) {
    s.batched = std::make_shared<DecodeState>(layers, /*keeps_decoding=*/true);
    s.solo = std::make_shared<DecodeState>(layers, /*keeps_decoding=*/true);
  }
  struct Step {
    std::vector<int> order;  // the sequences in the batch, in its order
    bool abandoned_first = false;
  };
  const std::vector<Step> steps = {{{0, 1, 2}}, {{0, 1, 2}}, {{0, 1, 2}, true}, {{0, 1, 2}}, {{0, 1}}, {{2, 0}},
                                   {{2, 0}},    {{1}},       {{1, 0, 2}},       {{1, 0, 2}}};
  std::vector<int> last_order;
  for (size_t step = 0; step < steps.size(); ++step) {
    const std::vector<int>& order = steps[step].order;
    std::vector<Row> rows, solo_rows;
    for (int i : order) {
      Sequence& s = sequences[i];
      // A prompt's prefill first (lengths 5, 8, 11), then one token a step.
      std::vector<int64_t> tokens = s.fed == 0 ? Ids(5 + 3 * i, i) : std::vector<int64_t>{3 + (17 * s.fed + i) % 300};
      rows.push_back({.kind = RowKind::kDecode, .input_ids = tokens, .decode_state = s.batched});
      solo_rows.push_back({.kind = RowKind::kDecode, .input_ids = tokens, .decode_state = s.solo});
      ++s.fed;
      s.tokens += static_cast<int64_t>(tokens.size());
    }
    std::vector<const Row*> batch;
    for (const Row& row : rows) batch.push_back(&row);
    const KvCache* cache_before = sequences[order[0]].batched->batch_cache.get();
    std::vector<RowResult> results(rows.size());
    if (steps[step].abandoned_first) {
      passed = 0;
      stop_at = 3;
      EXPECT_FALSE(together->Run(RowKind::kDecode, batch, results).ok()) << "step " << step;
      stop_at = -1;
    }
    ASSERT_THAT(together->Run(RowKind::kDecode, batch, results), IsOk()) << "step " << step;
    if (order == last_order) {
      EXPECT_EQ(sequences[order[0]].batched->batch_cache.get(), cache_before) << "step " << step << " copied its cache";
    } else {
      EXPECT_NE(sequences[order[0]].batched->batch_cache.get(), cache_before) << "step " << step;
    }
    last_order = order;
    // What the batch policy reads of each sequence, those of this step and those left in another batch cache alike.
    for (const Sequence& s : sequences) EXPECT_EQ(s.batched->cached_tokens(), s.tokens) << "step " << step;
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<RowResult> solo(1);
      ASSERT_THAT(alone->Run(RowKind::kDecode, {&solo_rows[r]}, solo), IsOk());
      EXPECT_LT(ScaledError(results[r].next_logits, solo[0].next_logits), 1e-5)
          << "step " << step << " sequence " << order[r];
    }
  }
}

// Sequences of different lengths stay in their batch cache: taken out after each step where it was mostly padding,
// they were stacked into one again at the next (15 short generations beside a 3000-token context: 28x their time
// alone).
TEST_F(EngineOverModel, SequencesOfDifferentLengthsStayInTheirBatchCache) {
  const int layers = static_cast<int>(model_->config().num_layers);
  std::unique_ptr<BatchExecutor> executor = MakeModelExecutor(model_);
  std::vector<std::shared_ptr<DecodeState>> states;
  std::vector<Row> rows;
  for (int64_t length : {3, 3, 3, 40}) {
    states.push_back(std::make_shared<DecodeState>(layers, /*keeps_decoding=*/true));
    rows.push_back({.kind = RowKind::kDecode, .input_ids = Ids(length, length), .decode_state = states.back()});
  }
  std::vector<const Row*> batch;
  for (const Row& row : rows) batch.push_back(&row);
  std::vector<RowResult> results(rows.size());
  ASSERT_THAT(executor->Run(RowKind::kDecode, batch, results), IsOk());
  const KvCache* cache = states[0]->batch_cache.get();
  ASSERT_NE(cache, nullptr);
  for (Row& row : rows) row.input_ids = {7};
  ASSERT_THAT(executor->Run(RowKind::kDecode, batch, results), IsOk());
  for (size_t r = 0; r < rows.size(); ++r) {
    EXPECT_EQ(states[r]->batch_cache.get(), cache) << "row " << r;
    EXPECT_EQ(states[r]->cached_tokens(), static_cast<int64_t>(r < 3 ? 4 : 41)) << "row " << r;
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

// A generation's keys and values are held against max_kv_cache_bytes from its first step to its end: a second
// generation that would not fit beside the first is refused at once (RESOURCE_EXHAUSTED), one that fits no idle
// server is told so naming the field, and the memory is free again once the first ends. One that fits exactly
// runs, and attribution rows are never refused for the generations' memory (a pool of its own).
TEST_F(EngineOverModel, GenerationsHoldTheirKvCacheInAPoolOfTheirOwn) {
  const ModelConfig& c = model_->config();
  const int64_t per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4;  // float32 keys and values
  auto engine = BatchingEngine::Create(MakeModelExecutor(model_),
                                       {.max_queued_bytes = 64 << 10, .max_kv_cache_bytes = 1100 * per_token});
  ASSERT_THAT(engine, IsOk());
  const auto generate = [&](const std::shared_ptr<Request>& request, int64_t max_new,
                            ::attribution::test_support::Notification& done, absl::Status& status) {
    GenerateAsync(**engine, request, c, Ids(5, 1), {.max_new_tokens = max_new, .ignore_stop_tokens = true},
                  [&](absl::StatusOr<Generation> g) {
                    status = g.status();
                    done.Notify();
                  });
  };
  auto first = (*engine)->NewRequest();
  ::attribution::test_support::Notification first_done, second_done, third_done, again_done;
  absl::Status first_status, second_status, third_status, again_status;
  generate(first, 1000, first_done, first_status);
  EXPECT_EQ((*engine)->Stats().kv_cache_bytes, 1005 * per_token);
  generate((*engine)->NewRequest(), 200, second_done, second_status);
  ASSERT_TRUE(second_done.HasBeenNotified()) << "refused before any work";
  EXPECT_THAT(second_status, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("KV caches are full")));
  RowCollector scored(1);  // a score row while the generation holds its whole pool
  EXPECT_THAT(
      (*engine)->Submit(
          (*engine)->NewRequest(),
          {Row{.kind = RowKind::kScore, .input_ids = Ids(8, 2), .objective = {.positions = {6}, .tokens = {7}}}},
          scored.Callback()),
      IsOk());
  scored.Wait();
  EXPECT_THAT(scored.result(0).status, IsOk());
  generate((*engine)->NewRequest(), 2000, third_done, third_status);
  ASSERT_TRUE(third_done.HasBeenNotified());
  EXPECT_THAT(third_status, StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr("generation.max_new_tokens: the KV cache of 2005 tokens"),
                                           HasSubstr("engine.max_kv_cache_bytes"))));
  (*engine)->Cancel(*first);
  first_done.WaitForNotification();
  EXPECT_THAT(first_status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ((*engine)->Stats().kv_cache_bytes, 0);
  generate((*engine)->NewRequest(), 1095, again_done, again_status);  // 5 + 1095 tokens: the pool exactly
  again_done.WaitForNotification();
  EXPECT_THAT(again_status, IsOk());
  EXPECT_EQ((*engine)->Stats().kv_cache_bytes, 0);
}

}  // namespace
}  // namespace attribution::engine
