// SPDX-License-Identifier: Apache-2.0
// The batching decision as the pure function it is: the device-time budget of contended batches
// (latency isolation) with a given cost model and a fixed clock.
#include "engine/scheduler/batch_policy.h"

#include <gtest/gtest.h>

namespace attribution::engine {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1000);

// A request with `rows` queued rows of `kind`, each `length` tokens long.
QueuedRequestView Request(uint64_t id, RowKind kind, int rows, int64_t length) {
  QueuedRequestView view{.request_id = id, .arrival = id, .interactive = rows <= kInteractiveRows};
  view.kinds[static_cast<int>(kind)].lengths.assign(rows, length);
  view.kinds[static_cast<int>(kind)].oldest_enqueued = kNow - absl::Seconds(1);
  return view;
}

// 1 ms per 1000 padded tokens plus 1 ms per 100,000 token pairs, nothing fixed.
BatchLimits TimedLimits(RowKind kind) {
  BatchLimits limits{
      .token_budget = 1 << 20, .max_rows = 1024, .next_kind = kind, .max_batch_time = absl::Milliseconds(25)};
  limits.costs[static_cast<int>(kind)] = {.per_token = 1e-6, .per_token_pair = 1e-8, .known = true};
  return limits;
}

TEST(BatchPolicy, AloneAGradientRequestFillsTheTokenBudget) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 512, 100)}, kNow, TimedLimits(RowKind::kGrad));
  ASSERT_TRUE(d.run);
  EXPECT_EQ(d.rows, 512);  // 512 x 100 tokens: 102 ms by the cost model, but nobody waits
  EXPECT_FALSE(d.contended);
  EXPECT_FALSE(d.time_limited);
}

TEST(BatchPolicy, AWaitingScoreRowBoundsTheGradientBatchByTime) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kScore, 1, 10)}, kNow,
                                      TimedLimits(RowKind::kGrad));
  ASSERT_TRUE(d.run);
  EXPECT_EQ(d.kind, RowKind::kGrad);
  EXPECT_TRUE(d.contended);
  EXPECT_TRUE(d.time_limited);
  // Rows of 100 tokens cost 0.1 ms + 0.1 ms each: 125 of them fill 25 ms, 126 would not.
  EXPECT_EQ(d.rows, 125);
}

TEST(BatchPolicy, AGradientBatchThatPausesForScoreRowsKeepsEachStretchWithinTheBound) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.paused_stretches[static_cast<int>(RowKind::kGrad)] = 4;
  limits.max_uncontended_batch_time = absl::Milliseconds(250);
  const BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  ASSERT_TRUE(d.run);
  EXPECT_TRUE(d.contended);
  EXPECT_TRUE(d.time_limited);
  EXPECT_FALSE(d.unpausable);
  // Four stretches of at most 25 ms: 100 ms, 500 rows of 0.2 ms.
  EXPECT_EQ(d.rows, 500);
}

TEST(BatchPolicy, ThePausesNeverLiftTheUncontendedBound) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.paused_stretches[static_cast<int>(RowKind::kGrad)] = 8;
  limits.max_uncontended_batch_time = absl::Milliseconds(50);
  const BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  EXPECT_EQ(d.rows, 250);  // 50 ms, not 8 x 25 ms
}

TEST(BatchPolicy, InteractiveGradientRowsCannotRunInAPauseSoTheWholeBatchIsBounded) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.paused_stretches[static_cast<int>(RowKind::kGrad)] = 4;
  // An interactive request's gradient row waits: it joins this batch (interactive rows always join),
  // and the batch it joins stays within 25 ms.
  BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kGrad, 1, 100)}, kNow, limits);
  EXPECT_TRUE(d.unpausable);
  EXPECT_EQ(d.rows, 125);
  // Seen within the engine's memory: the next interactive gradient row may come any moment.
  limits.contended_recently = true;
  limits.recent_unpausable = true;
  d = DecideBatch({Request(1, RowKind::kGrad, 512, 100)}, kNow, limits);
  EXPECT_FALSE(d.unpausable);
  EXPECT_EQ(d.rows, 125);
  limits.recent_unpausable = false;
  d = DecideBatch({Request(1, RowKind::kGrad, 512, 100)}, kNow, limits);
  EXPECT_EQ(d.rows, 500);
}

TEST(BatchPolicy, AShortCallBelowTheBatchsPriorityCannotRunInItsPausesSoTheWholeBatchIsBounded) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.paused_stretches[static_cast<int>(RowKind::kGrad)] = 4;
  QueuedRequestView long_work = Request(1, RowKind::kGrad, 512, 100);
  long_work.priority = Priority::kHigh;
  const BatchDecision d = DecideBatch({long_work, Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  EXPECT_TRUE(d.unpausable);
  EXPECT_EQ(d.rows, 125);
}

TEST(BatchPolicy, LongRowsPayForAttentionSoFewerFit) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 64, 1000), Request(2, RowKind::kScore, 1, 10)}, kNow,
                                      TimedLimits(RowKind::kGrad));
  // 1 ms + 10 ms of attention per row of 1000 tokens: two rows fit 25 ms, three would not.
  EXPECT_EQ(d.rows, 2);
}

TEST(BatchPolicy, AloneLongRowsStayWithinTheUncontendedBound) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.max_uncontended_batch_time = absl::Milliseconds(50);
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 64, 1000)}, kNow, limits);
  ASSERT_TRUE(d.run);
  EXPECT_FALSE(d.contended);
  EXPECT_TRUE(d.time_limited);
  EXPECT_EQ(d.rows, 4);  // 11 ms per row of 1000 tokens: four fit 50 ms, five would not
}

// A device whose every batch first spends 41 ms on fixed work (a CPU repacking large weights): alone,
// the 50 ms bound would leave one 20 ms row beside it; the batch grows until the fixed cost is a
// quarter of it (164 ms: 6 rows), and no further.
TEST(BatchPolicy, AloneTheBoundKeepsTheFixedCostAQuarterOfTheBatch) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.max_uncontended_batch_time = absl::Milliseconds(50);
  limits.costs[static_cast<int>(RowKind::kGrad)] = {.fixed = 0.041, .per_token = 1e-3, .known = true};
  const BatchDecision alone = DecideBatch({Request(1, RowKind::kGrad, 64, 20)}, kNow, limits);
  ASSERT_TRUE(alone.run);
  EXPECT_TRUE(alone.time_limited);
  EXPECT_EQ(alone.rows, 6);  // 41 + 6 x 20 = 161 ms; 7 rows: 181 ms
  // Contended, the short call's bound holds: twice its own 42 ms batch.
  const BatchDecision contended =
      DecideBatch({Request(1, RowKind::kGrad, 64, 20), Request(2, RowKind::kGrad, 1, 1)}, kNow, limits);
  EXPECT_TRUE(contended.contended);
  EXPECT_EQ(contended.rows, 2);  // a long row and the short call's, padded: 81 ms; another long row: 101 > 84 ms
}

TEST(BatchPolicy, ContendedTheTighterOfTheTwoBoundsHolds) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.max_uncontended_batch_time = absl::Milliseconds(12);
  const BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 64, 1000), Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  EXPECT_TRUE(d.contended);
  EXPECT_EQ(d.rows, 1);  // 12 ms, not max_batch_time's 25 ms, bounds it
}

TEST(BatchPolicy, ARowOverTheBudgetStillRunsAlone) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 40, 4000), Request(2, RowKind::kScore, 1, 10)}, kNow,
                                      TimedLimits(RowKind::kGrad));
  ASSERT_TRUE(d.run);
  EXPECT_EQ(d.rows, 1);  // 164 ms alone: never starved
}

TEST(BatchPolicy, TheBoundGrowsToTwiceAShortCallsOwnBatchTime) {
  // The waiting call's score row costs 30 ms (longer than the 25 ms bound), so the gradient batch may
  // take 60 ms: 300 rows of 0.2 ms; a 25 ms batch would halve the long work's batching and spare the
  // short call nothing.
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.costs[static_cast<int>(RowKind::kScore)] = {.fixed = 0.03, .known = true};
  const BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  EXPECT_NEAR(d.interactive_seconds, 0.03, 1e-12);
  EXPECT_EQ(d.rows, 300);
}

TEST(BatchPolicy, InteractiveRowsAlwaysJoinTheirBatch) {
  BatchLimits limits = TimedLimits(RowKind::kScore);
  std::vector<QueuedRequestView> queue = {Request(1, RowKind::kScore, 2000, 100)};
  for (uint64_t id = 2; id < 12; ++id) queue.push_back(Request(id, RowKind::kScore, 1, 2000));
  // Ten one-row calls of 2000 tokens cost 60 ms together, over the bound; all ten run in this batch.
  const BatchDecision d = DecideBatch(queue, kNow, limits);
  int64_t interactive = 0;
  for (const auto& [index, rows] : d.take) interactive += index > 0 ? rows : 0;
  EXPECT_EQ(interactive, 10);
}

TEST(BatchPolicy, TheTailOfLongWorkIsNoInteractiveCall) {
  QueuedRequestView tail = Request(2, RowKind::kGrad, 3, 100);
  tail.interactive = false;  // an IG with 3 of its 514 rows left
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 512, 100), tail}, kNow, TimedLimits(RowKind::kGrad));
  EXPECT_FALSE(d.contended);
  EXPECT_EQ(d.rows, 515);
}

TEST(BatchPolicy, ARequestsOwnScoreRowsDoNotContendWithItsGradientRows) {
  QueuedRequestView ig = Request(1, RowKind::kGrad, 512, 100);
  ig.kinds[static_cast<int>(RowKind::kScore)].lengths = {100, 100};  // its input and baseline scores
  const BatchDecision d = DecideBatch({ig}, kNow, TimedLimits(RowKind::kGrad));
  EXPECT_FALSE(d.contended);
  EXPECT_EQ(d.rows, 512);
}

TEST(BatchPolicy, RecentContentionKeepsTheBudgetBetweenInteractiveCalls) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.contended_recently = true;
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 512, 100)}, kNow, limits);
  EXPECT_FALSE(d.contended);
  EXPECT_TRUE(d.time_limited);
  EXPECT_EQ(d.rows, 125);
}

TEST(BatchPolicy, AnInteractiveRequestBesideALargeOneOfTheSameKindContends) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kScore, 2000, 100), Request(2, RowKind::kScore, 1, 10)},
                                      kNow, TimedLimits(RowKind::kScore));
  EXPECT_TRUE(d.contended);
  EXPECT_LE(d.rows, 126);
  // Round-robin still puts the small request's row into this very batch.
  ASSERT_EQ(d.take.size(), 2u);
  EXPECT_EQ(d.take[1], std::make_pair(size_t{1}, int64_t{1}));
}

TEST(BatchPolicy, TwoLargeRequestsOfOneKindDoNotContend) {
  const BatchDecision d = DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kGrad, 512, 100)},
                                      kNow, TimedLimits(RowKind::kGrad));
  EXPECT_FALSE(d.contended);
  EXPECT_EQ(d.rows, 1024);
}

TEST(BatchPolicy, AnUnknownCostLeavesBatchesUnbounded) {
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.costs[static_cast<int>(RowKind::kGrad)].known = false;
  const BatchDecision d =
      DecideBatch({Request(1, RowKind::kGrad, 512, 100), Request(2, RowKind::kScore, 1, 10)}, kNow, limits);
  EXPECT_TRUE(d.contended);
  EXPECT_EQ(d.rows, 512);
}

// Found by the slow-reader e2e test: a 16-step integrated gradients call (18 rows of ~15 tokens) sent
// beside four per-token attributions of 300-token rows waited 7.3 s, until they had all finished. Its
// earlier deadline put it first in line; the first long row padded the batch too much and closed it,
// so each batch held one of its rows.
TEST(BatchPolicy, AShortRequestFirstInLineFillsTheBatchWithItsOwnRowsBesideLongOnes) {
  std::vector<QueuedRequestView> queue;
  for (uint64_t id = 1; id <= 4; ++id) {
    queue.push_back(Request(id, RowKind::kGrad, 64, 300));
    queue.back().deadline = kNow + absl::Seconds(120);
  }
  queue.push_back(Request(5, RowKind::kGrad, 18, 15));
  queue.back().deadline = kNow + absl::Seconds(119);
  const BatchLimits limits{
      .token_budget = 8192, .max_rows = 64, .next_kind = RowKind::kGrad, .max_padding_waste = 0.25};
  const BatchDecision d = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(d.run);
  ASSERT_EQ(d.take.size(), 1u);
  EXPECT_EQ(d.take[0], std::make_pair(size_t{4}, int64_t{18}));  // all its rows, no long one padded
  // The next batch (its rows gone) is the long requests' own, round-robin.
  queue.back().kinds[static_cast<int>(RowKind::kGrad)].lengths.clear();
  const BatchDecision next = DecideBatch(queue, kNow, limits);
  EXPECT_EQ(next.rows, 8192 / 300);
  EXPECT_EQ(next.take.size(), 4u);
}

// Found by a hostile-input audit: a Logprobs call beside a feature ablation of a 300-token prompt (300
// score rows of ~300 tokens, first in line) waited 4.4 s, until the ablation's rows ran out: its short
// row padded every batch of long rows too much to join.
TEST(BatchPolicy, AShortInteractiveRowJoinsABatchOfLongRowsOfItsKind) {
  const std::vector<QueuedRequestView> queue = {Request(1, RowKind::kScore, 300, 300),
                                                Request(2, RowKind::kScore, 1, 12)};
  const BatchLimits limits{
      .token_budget = 8192, .max_rows = 64, .next_kind = RowKind::kScore, .max_padding_waste = 0.25};
  const BatchDecision d = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(d.run);
  ASSERT_EQ(d.take.size(), 2u);
  EXPECT_EQ(d.take[1], std::make_pair(size_t{1}, int64_t{1}));
  EXPECT_LE(d.rows * d.longest, 8192);
}

// Found by a performance review: a 10-token integrated-gradients call sent 0.5 s after a 300-token, 256-step one (same
// priority, no deadlines) got no row until the long one's had all run: 0.5 s alone, 14-17 s beside it. Its row was
// tried once, second, where it padded the batch by half, and kept out of the whole batch. Tried again as the batch
// holds more long rows, it joins once padding stays within the limit.
TEST(BatchPolicy, AShortRequestBehindALongOneJoinsOnceTheBatchHoldsEnoughLongRows) {
  const std::vector<QueuedRequestView> queue = {Request(1, RowKind::kGrad, 258, 300),
                                                Request(2, RowKind::kGrad, 34, 10)};
  const BatchLimits limits{
      .token_budget = 8192, .max_rows = 64, .next_kind = RowKind::kGrad, .max_padding_waste = 0.25};
  const BatchDecision d = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(d.run);
  ASSERT_EQ(d.take.size(), 2u);
  EXPECT_EQ(d.take[1].first, 1u);
  EXPECT_GE(d.take[1].second, 1);
  EXPECT_LE(PaddingWaste(d.tokens, d.rows * d.longest), 0.25);
  EXPECT_LE(d.rows * d.longest, 8192);
  // A quarter of each long batch would leave its 34 rows trickling along for 5 batches or more (for 256 steps, as
  // long as the long request): rows kept out, it leads the next batch with rows of its own length.
  EXPECT_EQ(d.passed_over, std::vector<uint64_t>{2});
}

// The same two requests where batches hold few rows (the time bound of a slower device): the short request's row,
// tried beside one or two long ones only, pads too much to join any of them. Passed over, it leads the next batch,
// and the two take turns by batch.
TEST(BatchPolicy, ARequestPassedOverForPaddingLeadsTheNextBatch) {
  const std::vector<QueuedRequestView> queue = {Request(1, RowKind::kGrad, 258, 300),
                                                Request(2, RowKind::kGrad, 34, 10)};
  BatchLimits limits{.token_budget = 600, .max_rows = 64, .next_kind = RowKind::kGrad, .max_padding_waste = 0.25};
  const BatchDecision first = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(first.run);
  EXPECT_EQ(first.take, (std::vector<std::pair<size_t, int64_t>>{{0, 2}}));
  EXPECT_EQ(first.passed_over, std::vector<uint64_t>{2});
  limits.lead_requests[static_cast<int>(RowKind::kGrad)] = 2;
  const BatchDecision second = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(second.run);
  EXPECT_EQ(second.take, (std::vector<std::pair<size_t, int64_t>>{{1, 34}}));
  EXPECT_EQ(second.passed_over, std::vector<uint64_t>{1});
  // A lead of another kind changes nothing.
  limits.lead_requests[static_cast<int>(RowKind::kGrad)] = 0;
  limits.lead_requests[static_cast<int>(RowKind::kScore)] = 2;
  EXPECT_EQ(DecideBatch(queue, kNow, limits).take, first.take);
}

// Found by the verifier: where the time bound lets a batch hold one long row (a slower or busier device), the short
// request's row was refused for time, not padding, and never led: it waited for all the long one's rows again.
TEST(BatchPolicy, ARequestKeptOutByTheTimeOfLongerRowsLeadsTheNextBatch) {
  const std::vector<QueuedRequestView> queue = {Request(1, RowKind::kGrad, 258, 300),
                                                Request(2, RowKind::kGrad, 258, 10)};
  BatchLimits limits = TimedLimits(RowKind::kGrad);
  limits.max_uncontended_batch_time = absl::Microseconds(400);  // one 300-token row: 0.3 ms + 0.9 ms of pairs
  limits.costs[static_cast<int>(RowKind::kGrad)] = {.per_token = 1e-6, .known = true};
  limits.max_padding_waste = 0.25;
  const BatchDecision first = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(first.run);
  EXPECT_EQ(first.take, (std::vector<std::pair<size_t, int64_t>>{{0, 1}}));
  EXPECT_EQ(first.passed_over, std::vector<uint64_t>{2});
  limits.lead_requests[static_cast<int>(RowKind::kGrad)] = 2;
  const BatchDecision second = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(second.run);
  ASSERT_FALSE(second.take.empty());
  EXPECT_EQ(second.take[0].first, 1u);
  // Rows as long as the batch's wait their turn in deadline and arrival order: nobody is passed over.
  const BatchDecision alike =
      DecideBatch({Request(1, RowKind::kGrad, 258, 300), Request(2, RowKind::kGrad, 258, 300)}, kNow, limits);
  EXPECT_TRUE(alike.passed_over.empty());
}

// Found by the diff review: with one lead, two requests that cannot share a batch passed each other over in turn, and
// a third length (an interactive call among them) waited for one of them to end: 33 batches. The requests passed
// over lead in the order they were first passed over, so each length gets a batch within as many batches.
TEST(BatchPolicy, EveryLengthPassedOverLeadsInTurn) {
  std::vector<QueuedRequestView> queue = {Request(1, RowKind::kGrad, 200, 1000), Request(2, RowKind::kGrad, 1000, 10),
                                          Request(3, RowKind::kGrad, 200, 300), Request(4, RowKind::kGrad, 8, 100)};
  BatchLimits limits{.token_budget = 8192, .max_rows = 64, .next_kind = RowKind::kGrad, .max_padding_waste = 0.25};
  PassedOver passed_over;
  std::vector<int> first_batch(queue.size(), -1);  // the first batch each request got rows in
  for (int batch = 0; batch < 3; ++batch) {
    limits.lead_requests[static_cast<int>(RowKind::kGrad)] = passed_over.lead();
    const BatchDecision d = DecideBatch(queue, kNow, limits);
    ASSERT_TRUE(d.run);
    for (const auto& [index, rows] : d.take) {
      if (first_batch[index] < 0) first_batch[index] = batch;
      auto& lengths = queue[index].kinds[static_cast<int>(RowKind::kGrad)].lengths;
      lengths.erase(lengths.begin(), lengths.begin() + rows);
    }
    passed_over.After(d.passed_over);
  }
  // The 1000-token request leads and the 300-token one joins it; the 10-token one, passed over, leads the second
  // batch, and the interactive 100-token one, passed over twice, the third.
  EXPECT_EQ(first_batch, (std::vector<int>{0, 1, 0, 2}));
}

TEST(PassedOver, KeepsTheWaitingInTheirOrderAndDropsTheServed) {
  PassedOver passed_over;
  EXPECT_EQ(passed_over.lead(), 0u);
  passed_over.After({2, 3, 4});
  EXPECT_EQ(passed_over.lead(), 2u);
  passed_over.After({1, 3, 4});  // 2 got rows: 3 and 4 wait on, 1 behind them
  EXPECT_EQ(passed_over.lead(), 3u);
  passed_over.After({1});  // 3 got rows, 4 ended
  EXPECT_EQ(passed_over.lead(), 1u);
  passed_over.After({});
  EXPECT_EQ(passed_over.lead(), 0u);
}

// Found by a performance review: an interactive row joined whatever it padded, so eight 10-token Logprobs calls
// beside one 2000-token one were padded to 2000 tokens each (p50 20 -> 800 ms, 30,366 padded tokens for 8,476). The
// long row runs alone, and the short ones together in the next batch.
TEST(BatchPolicy, ALongInteractiveRowDoesNotPadTheShortOnesOfItsBatch) {
  std::vector<QueuedRequestView> queue = {Request(1, RowKind::kScore, 1, 2000)};
  for (uint64_t id = 2; id <= 9; ++id) queue.push_back(Request(id, RowKind::kScore, 1, 10));
  const BatchLimits limits{
      .token_budget = 8192, .max_rows = 64, .next_kind = RowKind::kScore, .max_padding_waste = 0.25};
  const BatchDecision d = DecideBatch(queue, kNow, limits);
  ASSERT_TRUE(d.run);
  EXPECT_EQ(d.take, (std::vector<std::pair<size_t, int64_t>>{{0, 1}}));
  queue[0].kinds[static_cast<int>(RowKind::kScore)].lengths.clear();
  const BatchDecision next = DecideBatch(queue, kNow, limits);
  EXPECT_EQ(next.rows, 8);
  EXPECT_EQ(next.longest, 10);
}

// A generation's decode step: one token appended to a sequence of `cached` tokens; oldest_enqueued just now.
QueuedRequestView DecodeStep(uint64_t id, int64_t cached, int64_t width = 1) {
  QueuedRequestView view{.request_id = id, .arrival = id, .interactive = true};
  auto& queue = view.kinds[static_cast<int>(RowKind::kDecode)];
  queue.lengths = {width};
  queue.cached = {cached};
  queue.oldest_enqueued = kNow;
  return view;
}

// Decode steps of different contexts share a batch, whatever their lengths: kept apart by the padding of their
// stacked caches, the groups changed from step to step (the round robin's later passes, the requests passed over)
// and every sequence was copied into a new cache at every step (16 contexts of 10-2000 tokens: 3.8 -> 6.9 s). A new
// prompt's prefill still does not pad a step of one-token rows.
TEST(BatchPolicy, DecodeStepsShareABatchWhateverTheirContexts) {
  const BatchLimits limits{.token_budget = 8192,
                           .max_rows = 64,
                           .max_queue_delay = absl::Milliseconds(2),
                           .next_kind = RowKind::kDecode,
                           .max_padding_waste = 0.25};
  std::vector<QueuedRequestView> queue = {DecodeStep(1, 3000)};
  for (uint64_t id = 2; id <= 16; ++id) queue.push_back(DecodeStep(id, 40 + static_cast<int64_t>(id)));
  EXPECT_EQ(DecideBatch(queue, kNow, limits).rows, 16);
  const BatchDecision prefill =
      DecideBatch({DecodeStep(1, 0, 200), DecodeStep(2, 210), DecodeStep(3, 220)}, kNow, limits);
  EXPECT_EQ(prefill.take, (std::vector<std::pair<size_t, int64_t>>{{0, 1}}));
}

// Found by a performance review: a lone generation waited max_queue_delay at each token (256 tokens: 1036 vs 689 ms)
// for partners that could not come: the other sequences of its last batch are queued again before the next decision.
// A new prompt's prefill still waits, for other new prompts.
TEST(BatchPolicy, DecodeStepsThatContinueASequenceDoNotWaitForPartners) {
  const BatchLimits limits{.token_budget = 8192,
                           .max_rows = 64,
                           .max_queue_delay = absl::Milliseconds(2),
                           .next_kind = RowKind::kDecode,
                           .max_padding_waste = 0.25};
  EXPECT_TRUE(DecideBatch({DecodeStep(1, 10)}, kNow, limits).run);
  EXPECT_TRUE(DecideBatch({DecodeStep(1, 10), DecodeStep(2, 12)}, kNow, limits).run);
  const BatchDecision prefill = DecideBatch({DecodeStep(1, 0, 10)}, kNow, limits);
  EXPECT_FALSE(prefill.run);
  EXPECT_EQ(prefill.wait, absl::Milliseconds(2));
  EXPECT_FALSE(DecideBatch({DecodeStep(1, 0, 10), DecodeStep(2, 0, 12)}, kNow, limits).run);
}

}  // namespace
}  // namespace attribution::engine
