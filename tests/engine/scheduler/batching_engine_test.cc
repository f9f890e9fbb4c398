// SPDX-License-Identifier: Apache-2.0
// The scheduler with a fake executor: fairness, priorities, deadlines, cancellation, failures,
// admission and shutdown. (Model-backed behaviour is in batching_engine_model_test.cc.)
#include "engine/scheduler/batching_engine.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "tests/testing/fake_executor.h"
#include "tests/testing/row_collector.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::FakeExecutor;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::RowCollector;
using ::attribution::test_support::StatusIs;
using ::testing::Each;
using ::testing::HasSubstr;
using Notification = ::attribution::test_support::Notification;

Row ScoreRow(std::vector<int64_t> ids) { return Row{.kind = RowKind::kScore, .input_ids = std::move(ids)}; }

// `count` points on one path whose input ids are all `marker`.
std::vector<Row> GradRows(int count, int64_t marker) {
  auto path =
      std::make_shared<const EmbeddingPath>(EmbeddingPath{.input_ids = {marker, marker}, .baseline_ids = {0, 0}});
  std::vector<Row> rows;
  for (int i = 0; i < count; ++i) rows.push_back(Row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = 0.5}});
  return rows;
}

std::vector<Row> ScoreRows(int count, int64_t length, int64_t marker) {
  std::vector<Row> rows;
  for (int i = 0; i < count; ++i) rows.push_back(ScoreRow(std::vector<int64_t>(length, marker)));
  return rows;
}

class BatchingEngineTest : public ::testing::Test {
 protected:
  void Start(EngineOptions options = {}, const std::function<void(FakeExecutor&)>& configure = nullptr) {
    options.max_queue_delay = absl::ZeroDuration();
    options.clock = [this] { return absl::FromUnixSeconds(1000) + absl::Milliseconds(now_ms_.load()); };
    auto executor = std::make_unique<FakeExecutor>();
    if (configure) configure(*executor);
    executor_ = executor.get();
    engine_ = *BatchingEngine::Create(std::move(executor), options);
  }
  absl::Time Now() const { return absl::FromUnixSeconds(1000) + absl::Milliseconds(now_ms_.load()); }
  // Holds the executor on a one-row batch until `gate` is notified, so rows submitted meanwhile queue.
  void HoldExecutor(Notification& gate, RowCollector& blocking) {
    executor_->HoldFirstBatch(&gate);
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 7), blocking.Callback()), IsOk());
    executor_->started().WaitForNotification();
  }
  // A blocker, then 64 score rows (marker 5) and one short row (marker 9) queued beside them while it runs: the
  // short call waits beside long work (contended) until it is answered.
  void RunShortBesideLong() {
    Notification gate;
    RowCollector blocking(1), long_rows(64), short_rows(1);
    HoldExecutor(gate, blocking);
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(64, 2, 5), long_rows.Callback()), IsOk());
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), short_rows.Callback()), IsOk());
    gate.Notify();
    blocking.Wait();
    long_rows.Wait();
    short_rows.Wait();
  }
  // Index of the first batch holding a row whose ids start with `marker`.
  int FirstBatchWith(int64_t marker) const {
    auto batches = executor_->batches();
    for (size_t b = 0; b < batches.size(); ++b) {
      for (const auto& row : batches[b].rows) {
        if (row[0] == marker) return static_cast<int>(b);
      }
    }
    return -1;
  }
  int CountRowsWith(int64_t marker) const {
    int count = 0;
    for (const auto& batch : executor_->batches()) {
      for (const auto& row : batch.rows) count += row[0] == marker;
    }
    return count;
  }

  // Two requests whose rows share one input each (`rows_of(marker)`, 100 tokens, the executor counting
  // 1000 bytes per token of it once it runs) fit under `limit` only if each input is counted once; a
  // third is refused whole, and the queue memory returns to 0 once all ran.
  void ExpectSharedInputCountedOnce(std::unique_ptr<FakeExecutor> executor, int64_t limit,
                                    const std::function<std::vector<Row>(int64_t marker)>& rows_of) {
    executor_ = executor.get();
    engine_ = *BatchingEngine::Create(std::move(executor),
                                      {.max_queue_delay = absl::ZeroDuration(), .max_queued_bytes = limit});
    Notification gate;
    RowCollector blocking(1);
    HoldExecutor(gate, blocking);
    const size_t rows = rows_of(0).size();
    RowCollector first(rows), second(rows);
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), rows_of(1), first.Callback()), IsOk());
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), rows_of(2), second.Callback()), IsOk());
    const int64_t queued = engine_->Stats().queued_bytes;
    EXPECT_GT(queued, 2 * 100 * 1000);
    EXPECT_LT(queued, limit);
    bool called = false;
    const absl::Status refused =
        engine_->Submit(engine_->NewRequest(), rows_of(3), [&](size_t, RowResult) { called = true; });
    EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue memory")));
    EXPECT_EQ(engine_->Stats().queued_bytes, queued);  // nothing of the refused call was counted
    gate.Notify();
    blocking.Wait();
    first.Wait();
    second.Wait();
    EXPECT_FALSE(called);
    EXPECT_EQ(engine_->Stats().queued_bytes, 0);
  }

  std::vector<size_t> BatchSizesAfterAShortCallInAPause(bool spread_evenly);

  std::atomic<int64_t> now_ms_{0};
  FakeExecutor* executor_ = nullptr;
  std::unique_ptr<BatchingEngine> engine_;
};

TEST_F(BatchingEngineTest, EveryRowAnsweredOnceWithItsOwnResult) {
  Start({.max_batch_tokens = 64, .max_batch_rows = 8});
  auto request = engine_->NewRequest();
  std::vector<Row> rows;
  for (int64_t i = 1; i <= 50; ++i) rows.push_back(ScoreRow({i, i, 1}));
  RowCollector collector(rows.size());
  ASSERT_THAT(engine_->Submit(request, std::move(rows), collector.Callback()), IsOk());
  collector.Wait();
  EXPECT_THAT(collector.answers(), Each(1));
  for (int64_t i = 1; i <= 50; ++i) EXPECT_EQ(collector.result(i - 1).value, 2 * i + 1);
  for (const auto& batch : executor_->batches()) EXPECT_LE(batch.rows.size(), 8u);
  EXPECT_EQ(engine_->Stats().rows, 50);
  EXPECT_EQ(request->stats().rows_done, 50);
}

TEST_F(BatchingEngineTest, ShortRequestInterleavesWithLongOne) {
  Start({.max_batch_tokens = 1 << 20, .max_batch_rows = 8});
  Notification gate;
  RowCollector blocking(1);
  HoldExecutor(gate, blocking);
  auto long_request = engine_->NewRequest(), short_request = engine_->NewRequest();
  RowCollector long_rows(512), short_rows(4);
  ASSERT_THAT(engine_->Submit(long_request, ScoreRows(512, 16, 100), long_rows.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(short_request, ScoreRows(4, 16, 200), short_rows.Callback()), IsOk());
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  long_rows.Wait();
  short_rows.Wait();
  // Round-robin: the short request's 4 rows ride in the first batch after the blocker; the long one
  // needs 64 batches.
  EXPECT_EQ(FirstBatchWith(200), 1);
  EXPECT_EQ(CountRowsWith(200), 4);
  EXPECT_GE(executor_->batches().size(), 65u);
}

TEST_F(BatchingEngineTest, ScoringCallIsNotStuckBehindGradientBatches) {
  Start({.max_batch_rows = 4});
  Notification gate;
  RowCollector blocking(1), gradients(64), score(1);
  HoldExecutor(gate, blocking);
  std::vector<Row> grad_rows;
  auto path = std::make_shared<const EmbeddingPath>(EmbeddingPath{.input_ids = {1, 1}, .baseline_ids = {0, 0}});
  for (int i = 0; i < 64; ++i) grad_rows.push_back(Row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = 0.5}});
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), std::move(grad_rows), gradients.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), score.Callback()), IsOk());
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  gradients.Wait();
  score.Wait();
  EXPECT_LE(FirstBatchWith(9), 2);  // kinds take turns: at most one gradient batch runs first
  EXPECT_EQ(executor_->batches().size(), 1u + 16u + 1u);
}

// Submits `submit` once, from inside the first gradient batch, before that batch's first pause.
std::function<void(const std::vector<const Row*>&)> OnceInFirstGradBatch(std::function<void()> submit) {
  auto done = std::make_shared<bool>(false);  // the executor thread's only
  return [done, submit = std::move(submit)](const std::vector<const Row*>& rows) {
    if (rows[0]->kind != RowKind::kGrad || *done) return;
    *done = true;
    submit();
  };
}

TEST_F(BatchingEngineTest, AnInteractiveScoreRowRunsInsideAPausedGradientBatch) {
  RowCollector gradients(64), score(1);
  std::atomic<bool> gradients_done_when_scored{true};
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch([&] {
      auto done = score.Callback();
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9),
                                  [&, done](size_t i, RowResult r) {
                                    gradients_done_when_scored = gradients.done();
                                    done(i, std::move(r));
                                  }),
                  IsOk());
    }));
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(64, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  score.Wait();
  EXPECT_FALSE(gradients_done_when_scored);
  EXPECT_EQ(score.result(0).value, 18);
  const auto batches = executor_->batches();
  ASSERT_EQ(batches.size(), 2u);
  // The score batch finished inside the gradient batch, which is recorded as it ends.
  EXPECT_EQ(batches[0].kind, RowKind::kScore);
  EXPECT_EQ(batches[1].kind, RowKind::kGrad);
  EXPECT_EQ(batches[1].rows.size(), 64u);
}

// A short batch inside a pause is not the paused batch: when the paused batch's call ends meanwhile, the short
// batch's abandon point leaves it running (it answered a live call CANCELLED) and the paused batch stops after.
TEST_F(BatchingEngineTest, AShortBatchInsideAPauseOfAnAbandonedBatchRunsToItsEnd) {
  RowCollector gradients(8), score(1);
  std::shared_ptr<Request> gradient_request;
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    auto submit_once = OnceInFirstGradBatch(
        [&] { ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), score.Callback()), IsOk()); });
    executor.DuringBatch([&, submit_once](const std::vector<const Row*>& rows) {
      submit_once(rows);
      if (rows[0]->kind == RowKind::kScore) engine_->Cancel(*gradient_request);
    });
  });
  gradient_request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(gradient_request, GradRows(8, 1), gradients.Callback()), IsOk());
  score.Wait();
  gradients.Wait();
  EXPECT_THAT(score.result(0).status, IsOk());
  EXPECT_EQ(score.result(0).value, 18);
  EXPECT_THAT(gradients.result(0).status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(CountRowsWith(1), 0);  // the gradient batch stopped at its next pause
}

TEST_F(BatchingEngineTest, APausedBatchRunsOnlyInteractiveScoreAndDecodeRowsOfItsPriorityOrHigher) {
  RowCollector gradients(64), low(1), long_score(20), interactive_grad(1), high(1);
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch([&] {
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kLow), ScoreRows(1, 2, 3), low.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(20, 2, 4), long_score.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(1, 5), interactive_grad.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kHigh), ScoreRows(1, 2, 6), high.Callback()), IsOk());
    }));
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(64, 1), gradients.Callback()), IsOk());
  for (RowCollector* c : {&gradients, &low, &long_score, &interactive_grad, &high}) c->Wait();
  EXPECT_EQ(FirstBatchWith(6), 0);  // inside the gradient batch
  EXPECT_EQ(FirstBatchWith(1), 1);  // the gradient batch, recorded as it ends
  EXPECT_GT(FirstBatchWith(3), 1);
  EXPECT_GT(FirstBatchWith(4), 1);
  EXPECT_GT(FirstBatchWith(5), 1);
}

// So that a request alone always gets the same batches (and bit-identical results), whenever its own
// rows arrive.
TEST_F(BatchingEngineTest, ARequestsOwnRowsNeverRunInsideItsPausedBatch) {
  RowCollector gradients(4), own(1);
  std::shared_ptr<Request> request;
  Start({}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch(
        [&] { ASSERT_THAT(engine_->Submit(request, ScoreRows(1, 2, 9), own.Callback()), IsOk()); }));
  });
  request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(request, GradRows(4, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  own.Wait();
  EXPECT_EQ(FirstBatchWith(1), 0);
  EXPECT_EQ(FirstBatchWith(9), 1);
}

TEST_F(BatchingEngineTest, APausedBatchsDeviceTimeLeavesOutTheWorkRunInsideIt) {
  RowCollector gradients(64), score(1);
  std::mutex mu;
  std::vector<BatchRecord> records;
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    auto submit_once = OnceInFirstGradBatch(
        [&] { ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), score.Callback()), IsOk()); });
    executor.DuringBatch([&, submit_once](const std::vector<const Row*>& rows) {
      now_ms_ += rows[0]->kind == RowKind::kGrad ? 30 : 10;
      submit_once(rows);
    });
  });
  engine_->SetBatchObserver([&](const BatchRecord& record) {
    std::lock_guard<std::mutex> lock(mu);
    records.push_back(record);
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(64, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  score.Wait();
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].kind, RowKind::kScore);
  EXPECT_EQ(records[0].device_time, absl::Milliseconds(10));
  EXPECT_EQ(records[1].kind, RowKind::kGrad);
  EXPECT_EQ(records[1].device_time, absl::Milliseconds(30));
  EXPECT_TRUE(records[0].inside_pause);
  EXPECT_FALSE(records[1].inside_pause);
  EXPECT_EQ(engine_->Stats().device_time, absl::Milliseconds(40));
  EXPECT_EQ(engine_->Stats().batches_inside_pauses, 1);
}

// A long request's gradient batch sizes after a short call is served inside the 7th gradient batch.
// Grad batches pause into four stretches and cost 1 ms per row, spread over the stretches as
// `spread_evenly` says (else all before the first pause); the contended bound is 10.5 ms.
std::vector<size_t> BatchingEngineTest::BatchSizesAfterAShortCallInAPause(bool spread_evenly) {
  constexpr int kWarmUpBatches = 4, kShortCallInBatch = kWarmUpBatches + 3;
  std::atomic<int> grad_batches{0};
  RowCollector short_call(1);
  Start({.max_batch_rows = 64, .max_batch_time = absl::Microseconds(10500)}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch([&](const std::vector<const Row*>& rows) {
      if (rows[0]->kind != RowKind::kGrad) return;
      if (!spread_evenly) now_ms_ += static_cast<int64_t>(rows.size());
      if (++grad_batches == kShortCallInBatch) {
        ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), short_call.Callback()), IsOk());
      }
    });
    executor.DuringStretch([&](const std::vector<const Row*>& rows) {
      if (spread_evenly) now_ms_ += static_cast<int64_t>(rows.size()) / 4;
    });
  });
  for (int rows : {8, 16, 32, 64}) {  // batches of four sizes, so the cost model is determined
    RowCollector warm_up(rows);
    EXPECT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(rows, 2), warm_up.Callback()), IsOk());
    warm_up.Wait();
  }
  now_ms_ += 2000;  // past the memory of the warm-up's interactive gradient rows
  RowCollector long_rows(2000);
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(2000, 1), long_rows.Callback()), IsOk());
  long_rows.Wait();
  short_call.Wait();
  std::vector<size_t> sizes;
  for (const auto& batch : executor_->batches()) {
    if (batch.kind == RowKind::kGrad && batch.rows[0][0] == 1) sizes.push_back(batch.rows.size());
  }
  return sizes;
}

// A short call served inside a pause is contention like any other: the gradient batches after it keep
// each of their stretches within max_batch_time, until the engine's contention memory runs out.
TEST_F(BatchingEngineTest, AShortCallRunInsideAPauseBoundsTheNextBatchesStretches) {
  const std::vector<size_t> sizes = BatchSizesAfterAShortCallInAPause(/*spread_evenly=*/true);
  ASSERT_GT(sizes.size(), 10u);
  EXPECT_EQ(sizes[0], 64u);
  EXPECT_EQ(sizes[2], 64u);                 // the short call ran inside this one
  EXPECT_EQ(sizes[3], 42u);                 // four stretches of at most 10.5 ms, 1 ms per row
  EXPECT_EQ(sizes[sizes.size() - 2], 64u);  // a second later, uncontended again
}

// The engine bounds what it sees, not what the executor promises: pauses that cut a batch unevenly
// (here all its time before the first) leave one stretch as long as the batch.
TEST_F(BatchingEngineTest, PausesThatCutBatchesUnevenlyBoundTheWholeBatch) {
  const std::vector<size_t> sizes = BatchSizesAfterAShortCallInAPause(/*spread_evenly=*/false);
  ASSERT_GT(sizes.size(), 10u);
  EXPECT_EQ(sizes[3], 10u);  // one stretch of at most 10.5 ms
}

// Inside pauses too, score and decode rows take turns: a generation's next decode step, always queued,
// does not keep a Logprobs call out of every pause.
TEST_F(BatchingEngineTest, ScoreAndDecodeRowsTakeTurnsInsidePauses) {
  RowCollector gradients(64), decode(1), score(1);
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch([&] {
      ASSERT_THAT(
          engine_->Submit(
              engine_->NewRequest(),
              {Row{.kind = RowKind::kDecode, .input_ids = {8}, .decode_state = std::make_shared<DecodeState>(1)}},
              decode.Callback()),
          IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), score.Callback()), IsOk());
    }));
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(64, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  decode.Wait();
  score.Wait();
  EXPECT_EQ(FirstBatchWith(9), 0);  // the first pause: the score row's turn
  EXPECT_EQ(FirstBatchWith(8), 1);  // the next pause
  EXPECT_EQ(FirstBatchWith(1), 2);
}

// Priority levels stay strict inside pauses: while higher-priority work waits, nothing of a lower
// level runs in a pause of the running batch.
TEST_F(BatchingEngineTest, NothingRunsInAPauseAheadOfHigherPriorityWork) {
  RowCollector gradients(64), high(64), normal(1);
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch([&] {
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kHigh), GradRows(64, 3), high.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), normal.Callback()), IsOk());
    }));
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kLow), GradRows(64, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  high.Wait();
  normal.Wait();
  EXPECT_EQ(FirstBatchWith(1), 0);
  EXPECT_LT(FirstBatchWith(3), FirstBatchWith(9));
}

TEST_F(BatchingEngineTest, WithoutPausesAScoreRowWaitsForTheWholeGradientBatch) {
  RowCollector gradients(64), score(1);
  Start({.max_batch_rows = 64, .pause_long_batches = false}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringBatch(OnceInFirstGradBatch(
        [&] { ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 9), score.Callback()), IsOk()); }));
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(64, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  score.Wait();
  EXPECT_EQ(FirstBatchWith(1), 0);
  EXPECT_EQ(FirstBatchWith(9), 1);
}

// While an interactive request waits beside long work (and for the contention memory after), batches run
// on the contended thread count; before and after, on all the process has.
TEST_F(BatchingEngineTest, ContendedBatchesRunOnFewerIntraOpThreads) {
  const int all = at::get_num_threads();
  if (all < 2) GTEST_SKIP() << "one intra-op thread: nothing to leave to the serving threads";
  Start({.max_batch_rows = 4, .contended_intra_op_threads = EngineOptions::kOneThreadFewer});
  RunShortBesideLong();
  RowCollector later(64);
  now_ms_ += 2000;  // past the contention memory
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(64, 2, 6), later.Callback()), IsOk());
  later.Wait();
  const auto batches = executor_->batches();
  ASSERT_EQ(batches.size(), 1u + 17u + 16u);
  EXPECT_EQ(batches[0].intra_op_threads, all);  // the blocker ran before anything waited beside it
  for (size_t b = 1; b < 18; ++b) EXPECT_EQ(batches[b].intra_op_threads, all - 1) << b;
  for (size_t b = 18; b < batches.size(); ++b) EXPECT_EQ(batches[b].intra_op_threads, all) << b;
}

// Tasks run aside run in order on a thread of their own while the executor goes on answering rows (LIME's
// fits held every call to the model behind them), and on the caller's thread once the engine stopped.
TEST_F(BatchingEngineTest, TasksRunAsideInOrderWhileRowsRun) {
  Start();
  Notification release;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
  auto record = [&](int task) {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back(task);
    threads.push_back(std::this_thread::get_id());
  };
  engine_->RunAside([&] {
    release.WaitForNotification();
    record(1);
  });
  Notification second_done;
  engine_->RunAside([&] {
    record(2);
    second_done.Notify();
  });
  RowCollector rows(4);  // answered while the first task still waits
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(4, 3, 5), rows.Callback()), IsOk());
  rows.Wait();
  release.Notify();
  second_done.WaitForNotification();
  engine_->Shutdown();
  engine_->RunAside([&] { record(3); });
  ASSERT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_NE(threads[0], std::this_thread::get_id());
  EXPECT_EQ(threads[0], threads[1]);
  EXPECT_EQ(threads[2], std::this_thread::get_id());
  EXPECT_THAT(engine_->Abandoned(*engine_->NewRequest()), StatusIs(absl::StatusCode::kUnavailable));
}

// A request larger than the whole queue could never be queued: before, it was told RESOURCE_EXHAUSTED (retried
// by data-set jobs) on an idle server, forever. The queue's limits bound each request's, as INVALID_ARGUMENT.
TEST_F(BatchingEngineTest, ARequestLargerThanTheQueueIsInvalid) {
  Start({.max_queued_rows = 8, .max_queued_tokens = 100});
  EXPECT_EQ(engine_->max_rows_per_request(), 8);
  EXPECT_EQ(engine_->max_tokens_per_request(), 100);
  auto never = [](size_t, RowResult) { ADD_FAILURE() << "a refused row was answered"; };
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(9, 2, 2), never),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request would queue 9 rows, over this model's "
                                                                     "limits.max_rows (8)")));
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 101, 2), never),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request would queue 101 tokens")));
  RowCollector fits(8);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(8, 12, 2), fits.Callback()), IsOk());
  fits.Wait();
}

// A contended count above all the process has (a config from a larger machine) runs on all: 64 threads on 2
// cores ran a 300-token feature ablation 8x slower.
TEST_F(BatchingEngineTest, AContendedThreadCountAboveAllRunsOnAll) {
  const int all = at::get_num_threads();
  Start({.max_batch_rows = 4, .contended_intra_op_threads = all + 62});
  RunShortBesideLong();
  const auto batches = executor_->batches();
  ASSERT_EQ(batches.size(), 1u + 17u);
  for (const auto& batch : batches) EXPECT_EQ(batch.intra_op_threads, all);
}

// Gradient batches that pause run the short calls inside themselves and keep every thread; the short
// batches run inside a pause use the contended thread count (one fewer) once their kind's learned cost
// puts them under kFewThreadsBelow (8 ms), and every thread again once it puts them over kEveryThreadAbove
// (11 ms), every thread before the cost is known. Score batches take 0.5 ms per padded token here.
TEST_F(BatchingEngineTest, ShortBatchesInsideAPauseRunOnFewerIntraOpThreads) {
  const int all = at::get_num_threads();
  if (all < 2) GTEST_SKIP() << "one intra-op thread: nothing to leave to the serving threads";
  // The marker of the score row to submit inside the next gradient batch, and its length.
  std::optional<std::pair<int64_t, int64_t>> inside;
  std::mutex mu;
  Start({.max_batch_rows = 64, .contended_intra_op_threads = EngineOptions::kOneThreadFewer},
        [&](FakeExecutor& executor) {
          executor.PauseGradBatches(4);
          executor.DuringBatch([&](const std::vector<const Row*>& rows) {
            if (rows[0]->kind == RowKind::kScore) {
              int64_t longest = 0;
              for (const Row* row : rows) longest = std::max<int64_t>(longest, row->input_ids.size());
              now_ms_ += static_cast<int64_t>(rows.size()) * longest / 2;
              return;
            }
            std::lock_guard<std::mutex> lock(mu);
            if (!inside) return;
            ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, inside->second, inside->first),
                                        [](size_t, RowResult) {}),
                        IsOk());
            inside.reset();
          });
        });
  int64_t grad_marker = 100;
  // The intra-op threads of a score row of `length` tokens run inside a gradient batch.
  auto threads_inside = [&](int64_t marker, int64_t length) {
    {
      std::lock_guard<std::mutex> lock(mu);
      inside = {marker, length};
    }
    RowCollector gradients(16);
    EXPECT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(16, ++grad_marker), gradients.Callback()), IsOk());
    gradients.Wait();
    EXPECT_EQ(FirstBatchWith(marker) + 1, FirstBatchWith(grad_marker));  // inside it, recorded before it
    return executor_->batches()[FirstBatchWith(marker)].intra_op_threads;
  };
  EXPECT_EQ(threads_inside(17, 4), all);  // the score kind's cost is not known yet
  // Score batches of 2 to 12 ms teach the cost, alone (past the contention memory: on every thread).
  now_ms_ += 2000;
  for (int64_t length : {4, 8, 12, 16, 20, 24}) {
    RowCollector score(1);
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, length, 3), score.Callback()), IsOk());
    score.Wait();
  }
  EXPECT_EQ(threads_inside(9, 4), all - 1);    // 2 ms
  EXPECT_EQ(threads_inside(13, 18), all - 1);  // 9 ms: still under 11
  EXPECT_EQ(threads_inside(11, 40), all);      // 20 ms
  EXPECT_EQ(threads_inside(15, 18), all);      // 9 ms: not yet under 8
  EXPECT_EQ(threads_inside(19, 4), all - 1);   // 2 ms
  // Everything else, the gradient batches that paused among them, on every thread.
  for (const auto& batch : executor_->batches()) {
    const int64_t marker = batch.rows[0][0];
    if (marker == 9 || marker == 13 || marker == 19) continue;
    EXPECT_EQ(batch.intra_op_threads, all) << "marker " << marker;
  }
}

TEST_F(BatchingEngineTest, HigherPriorityRunsFirst) {
  Start({.max_batch_rows = 4});
  Notification gate;
  RowCollector blocking(1), low(4), high(4);
  HoldExecutor(gate, blocking);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kLow), ScoreRows(4, 2, 1), low.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kHigh), ScoreRows(4, 2, 3), high.Callback()), IsOk());
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  low.Wait();
  high.Wait();
  EXPECT_LT(FirstBatchWith(3), FirstBatchWith(1));
}

TEST_F(BatchingEngineTest, EarlierDeadlineRunsFirst) {
  Start({.max_batch_rows = 1});
  Notification gate;
  RowCollector blocking(1), late(4), soon(4);
  HoldExecutor(gate, blocking);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kNormal, Now() + absl::Hours(2)), ScoreRows(4, 2, 1),
                              late.Callback()),
              IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kNormal, Now() + absl::Hours(1)), ScoreRows(4, 2, 2),
                              soon.Callback()),
              IsOk());
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  late.Wait();
  soon.Wait();
  EXPECT_LT(FirstBatchWith(2), FirstBatchWith(1));
}

TEST_F(BatchingEngineTest, CancelledRowsNeverReachTheExecutor) {
  Start({.max_batch_rows = 4});
  Notification gate;
  RowCollector blocking(1), kept(8), cancelled(8);
  HoldExecutor(gate, blocking);
  auto victim = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(8, 2, 1), kept.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(victim, ScoreRows(8, 2, 2), cancelled.Callback()), IsOk());
  engine_->Cancel(*victim);
  ASSERT_TRUE(cancelled.done());  // answered at once, before the executor is released
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  kept.Wait();
  EXPECT_EQ(CountRowsWith(2), 0);
  EXPECT_EQ(CountRowsWith(1), 8);
  for (int i = 0; i < 8; ++i) EXPECT_THAT(cancelled.result(i).status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(engine_->Submit(victim, ScoreRows(1, 2, 2), [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kCancelled));
}

// Cancelling one request answers only its own rows on the cancelling thread. Another request's rows,
// expired meanwhile, are answered by the executor: in the server, a call's answer must not arrive
// inside the gRPC cancellation of a different call.
TEST_F(BatchingEngineTest, CancelAnswersOnlyItsOwnRowsAndLeavesOthersExpiredRowsToTheExecutor) {
  Start({.max_batch_rows = 4});
  Notification gate;
  RowCollector blocking(1), cancelled(3);
  HoldExecutor(gate, blocking);
  auto victim = engine_->NewRequest();
  auto expiring = engine_->NewRequest(Priority::kNormal, Now() + absl::Seconds(1));
  std::atomic<int> expired_answers{0};
  Notification expired_done;
  std::thread::id expired_thread;
  ASSERT_THAT(engine_->Submit(victim, ScoreRows(3, 2, 1), cancelled.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(expiring, ScoreRows(2, 2, 2),
                              [&](size_t, RowResult result) {
                                EXPECT_THAT(result.status, StatusIs(absl::StatusCode::kDeadlineExceeded));
                                expired_thread = std::this_thread::get_id();
                                if (++expired_answers == 2) expired_done.Notify();
                              }),
              IsOk());
  now_ms_ += 2000;
  engine_->Cancel(*victim);
  ASSERT_TRUE(cancelled.done());
  EXPECT_EQ(expired_answers.load(), 0);  // not answered inside the cancellation
  gate.Notify();
  blocking.Wait();
  expired_done.WaitForNotification();
  EXPECT_NE(expired_thread, std::this_thread::get_id());
  EXPECT_EQ(CountRowsWith(2), 0);
  EXPECT_EQ(engine_->Stats().queued_rows, 0);
}

TEST_F(BatchingEngineTest, InFlightResultsOfCancelledRequestAreDiscarded) {
  Start();
  Notification gate;
  executor_->HoldFirstBatch(&gate);
  auto request = engine_->NewRequest();
  RowCollector rows(1);
  ASSERT_THAT(engine_->Submit(request, ScoreRows(1, 2, 7), rows.Callback()), IsOk());
  executor_->started().WaitForNotification();
  engine_->Cancel(*request);
  gate.Notify();
  rows.Wait();
  EXPECT_THAT(rows.result(0).status, StatusIs(absl::StatusCode::kCancelled));
  // Its client's doing, not the device's (counted before the answers go out).
  EXPECT_EQ(engine_->Stats().abandoned_rows, 1);
  EXPECT_EQ(engine_->Stats().failed_rows, 0);
}

// A gradient batch whose requests are all cancelled stops at its next pause instead of its end, and
// the engine goes on.
TEST_F(BatchingEngineTest, AGradientBatchStopsAtItsNextPauseOnceNoRowOfItIsWanted) {
  RowCollector cancelled(8), later(2);
  std::atomic<int> stretches{0};
  std::shared_ptr<Request> request;
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringStretch([&](const std::vector<const Row*>& rows) {
      if (rows[0]->point.path->input_ids[0] == 1 && stretches++ == 0) engine_->Cancel(*request);
    });
  });
  request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(request, GradRows(8, 1), cancelled.Callback()), IsOk());
  cancelled.Wait();
  EXPECT_EQ(stretches, 1);
  EXPECT_EQ(CountRowsWith(1), 0);  // no batch of it ran to its end
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_THAT(cancelled.result(i).status, StatusIs(absl::StatusCode::kCancelled, HasSubstr("request was cancelled")));
  }
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(2, 2), later.Callback()), IsOk());
  later.Wait();
  EXPECT_THAT(later.result(1).status, IsOk());
  EXPECT_EQ(later.result(1).value, 4);
  EXPECT_EQ(CountRowsWith(2), 2);
}

// Score and decode batches do not pause, but one whose requests are all cancelled stops at its next layer
// too (a long prompt's prefill is one row of seconds: cancelled, it ran to its end), and the engine goes on.
TEST_F(BatchingEngineTest, AScoreBatchStopsAtItsNextLayerOnceNoRowOfItIsWanted) {
  RowCollector cancelled(3), later(1);
  std::shared_ptr<Request> request;
  Start({}, [&](FakeExecutor& executor) {
    executor.DuringBatch([&](const std::vector<const Row*>& rows) {
      if (rows[0]->input_ids[0] == 5) engine_->Cancel(*request);
    });
  });
  request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(request, ScoreRows(3, 2, 5), cancelled.Callback()), IsOk());
  cancelled.Wait();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_THAT(cancelled.result(i).status, StatusIs(absl::StatusCode::kCancelled, HasSubstr("request was cancelled")));
  }
  EXPECT_EQ(CountRowsWith(5), 0);  // the batch did not run to its end
  EXPECT_EQ(engine_->Stats().abandoned_rows, 3);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 6), later.Callback()), IsOk());
  later.Wait();
  EXPECT_THAT(later.result(0).status, IsOk());
  EXPECT_EQ(CountRowsWith(6), 1);
}

// An expired request's batch stops at the next pause as well; its rows say why.
TEST_F(BatchingEngineTest, AGradientBatchStopsAtItsNextPauseOnceItsRequestExpired) {
  RowCollector expiring(8);
  std::atomic<int> stretches{0};
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringStretch([&](const std::vector<const Row*>&) {
      if (stretches++ == 0) now_ms_ += 2000;
    });
  });
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(Priority::kNormal, Now() + absl::Seconds(1)), GradRows(8, 1),
                              expiring.Callback()),
              IsOk());
  expiring.Wait();
  EXPECT_EQ(stretches, 1);
  EXPECT_THAT(expiring.result(0).status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(engine_->Stats().abandoned_rows, 8);
  EXPECT_EQ(engine_->Stats().failed_rows, 0);
}

// A batch that fails whole is halved and retried; abandoned in its first half, the second half does not
// run either.
TEST_F(BatchingEngineTest, ABatchAbandonedInAHalvedRetryRunsNoOtherPart) {
  RowCollector cancelled(8);
  std::atomic<int> stretches{0};
  std::shared_ptr<Request> request;
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.FailWhen([](const std::vector<const Row*>& rows) {
      return rows.size() == 8 ? absl::ResourceExhaustedError("out of memory") : absl::OkStatus();
    });
    executor.DuringStretch([&](const std::vector<const Row*>& rows) {
      if (rows.size() == 4 && stretches++ == 0) engine_->Cancel(*request);
    });
  });
  request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(request, GradRows(8, 1), cancelled.Callback()), IsOk());
  cancelled.Wait();
  EXPECT_EQ(stretches, 1);  // the second half never started
  EXPECT_EQ(executor_->failed_attempts(), 1);
  EXPECT_EQ(CountRowsWith(1), 0);
  for (size_t i = 0; i < 8; ++i) EXPECT_THAT(cancelled.result(i).status, StatusIs(absl::StatusCode::kCancelled));
}

// A batch that still holds a live request's rows runs to its end; only the cancelled request's rows
// are answered CANCELLED.
TEST_F(BatchingEngineTest, AGradientBatchWithALiveRequestsRowsRunsToItsEnd) {
  Notification gate;
  RowCollector blocking(1), cancelled(4), live(4);
  std::atomic<int> stretches{0};
  std::shared_ptr<Request> request;
  Start({.max_batch_rows = 64}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringStretch([&](const std::vector<const Row*>&) {
      if (stretches++ == 0) engine_->Cancel(*request);
    });
  });
  HoldExecutor(gate, blocking);
  request = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(request, GradRows(4, 1), cancelled.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(4, 2), live.Callback()), IsOk());
  gate.Notify();
  blocking.Wait();
  cancelled.Wait();
  live.Wait();
  EXPECT_EQ(stretches, 4);
  ASSERT_EQ(executor_->batches().size(), 2u);
  EXPECT_EQ(executor_->batches()[1].rows.size(), 8u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_THAT(cancelled.result(i).status, StatusIs(absl::StatusCode::kCancelled));
    EXPECT_THAT(live.result(i).status, IsOk());
    EXPECT_EQ(live.result(i).value, 4);
  }
}

TEST_F(BatchingEngineTest, ExpiredRowsAreDroppedWithDeadlineExceeded) {
  Start({.max_batch_rows = 4});
  Notification gate;
  RowCollector blocking(1), expiring(6);
  HoldExecutor(gate, blocking);
  auto request = engine_->NewRequest(Priority::kNormal, Now() + absl::Seconds(1));
  ASSERT_THAT(engine_->Submit(request, ScoreRows(6, 2, 5), expiring.Callback()), IsOk());
  now_ms_ += 2000;
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  expiring.Wait();
  EXPECT_EQ(CountRowsWith(5), 0);
  EXPECT_THAT(expiring.result(0).status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(engine_->Submit(request, ScoreRows(1, 2, 5), [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
}

// 10 ms of fake device time per row. A first request teaches the engine that cost; a second one,
// alone on the engine, expires 100 ms after it starts: its batches stay within the uncontended bound
// (2 rows), so it stops within about one such batch of its deadline instead of running a batch of
// 64 rows (640 ms) past it.
TEST_F(BatchingEngineTest, ARequestAloneStopsWithinAboutOneBoundedBatchOfItsDeadline) {
  Start({.max_batch_tokens = 1 << 20, .max_batch_rows = 64, .max_uncontended_batch_time = absl::Milliseconds(25)});
  executor_->DuringBatch([this](const std::vector<const Row*>& rows) { now_ms_ += 10 * rows.size(); });
  RowCollector teaching(256);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(256, 4, 3), teaching.Callback()), IsOk());
  teaching.Wait();
  const absl::Time deadline = Now() + absl::Milliseconds(100);
  RowCollector expiring(200);
  ASSERT_THAT(
      engine_->Submit(engine_->NewRequest(Priority::kNormal, deadline), ScoreRows(200, 4, 5), expiring.Callback()),
      IsOk());
  expiring.Wait();
  EXPECT_LE(CountRowsWith(5), 12);  // 100 ms of 20 ms batches, and the one that crosses the deadline
  EXPECT_LE(Now(), deadline + absl::Milliseconds(20));
  EXPECT_THAT(expiring.result(199).status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  for (const auto& batch : executor_->batches()) {
    if (batch.rows[0][0] == 5) {
      EXPECT_LE(batch.rows.size(), 2u);
    }
  }
  EXPECT_GT(engine_->Stats().time_limited_batches, 0);
}

TEST_F(BatchingEngineTest, OutOfMemoryBatchesAreSplitAndBudgetShrinks) {
  Start({.max_batch_tokens = 4096, .max_batch_rows = 64});
  executor_->FailWhen([](const std::vector<const Row*>& rows) {
    return rows.size() > 4 ? absl::ResourceExhaustedError("out of device memory") : absl::OkStatus();
  });
  RowCollector rows(32);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(32, 8, 3), rows.Callback()), IsOk());
  rows.Wait();
  for (int i = 0; i < 32; ++i) EXPECT_THAT(rows.result(i).status, IsOk());
  EXPECT_GT(executor_->failed_attempts(), 0);
  EXPECT_LT(engine_->Stats().token_budget, 4096);
  for (const auto& batch : executor_->batches()) EXPECT_LE(batch.rows.size(), 4u);
}

// One request's out-of-memory must not bound every later batch until a restart.
TEST_F(BatchingEngineTest, AShrunkBudgetRegrowsAfterBatchesThatFit) {
  Start({.max_batch_tokens = 4096, .max_batch_rows = 64});
  std::atomic<bool> short_of_memory{true};
  executor_->FailWhen([&](const std::vector<const Row*>& rows) {
    return short_of_memory && rows.size() > 4 ? absl::ResourceExhaustedError("out of device memory") : absl::OkStatus();
  });
  RowCollector first(32);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(32, 8, 3), first.Callback()), IsOk());
  first.Wait();
  const int64_t shrunk = engine_->Stats().token_budget;
  ASSERT_LT(shrunk, 4096);
  short_of_memory = false;
  for (int round = 0; round < 400 && engine_->Stats().token_budget < 4096; ++round) {
    RowCollector more(64);
    ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(64, 8, 3), more.Callback()), IsOk());
    more.Wait();
  }
  EXPECT_EQ(engine_->Stats().token_budget, 4096);
}

// Rows that continue a cached prefix take its positions in the batch too: eight 10-token rows over a
// 1000-token prefix are 8080 positions, not 80, so a 2048 budget runs them two at a time.
TEST_F(BatchingEngineTest, TheTokenBudgetCountsTheCachedPrefixRowsContinue) {
  Start({.max_batch_tokens = 2048, .max_batch_rows = 64});
  auto prefix = std::make_shared<DecodeState>(/*num_layers=*/1);
  prefix->cache.Advance({1000});
  std::vector<Row> rows = ScoreRows(8, 10, 3);
  for (Row& row : rows) {
    row.prefix = prefix;
    row.prefix_length = 1000;
  }
  RowCollector collector(8);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), std::move(rows), collector.Callback()), IsOk());
  collector.Wait();
  for (int i = 0; i < 8; ++i) EXPECT_THAT(collector.result(i).status, IsOk());
  ASSERT_FALSE(executor_->batches().empty());
  for (const auto& batch : executor_->batches()) EXPECT_LE(batch.rows.size(), 2u);
}

TEST_F(BatchingEngineTest, RowThatAlwaysFailsFailsOnlyItsRequest) {
  Start({.max_batch_rows = 16});
  executor_->FailWhen([](const std::vector<const Row*>& rows) {
    for (const Row* row : rows) {
      if (row->input_ids[0] == 666) throw std::runtime_error("poisoned row");
    }
    return absl::OkStatus();
  });
  Notification gate;
  RowCollector blocking(1), good(8), bad(1);
  HoldExecutor(gate, blocking);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(8, 2, 1), good.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 666), bad.Callback()), IsOk());
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  good.Wait();
  bad.Wait();
  for (int i = 0; i < 8; ++i) EXPECT_THAT(good.result(i).status, IsOk());
  EXPECT_THAT(bad.result(0).status, StatusIs(absl::StatusCode::kInternal, HasSubstr("poisoned row")));
  EXPECT_EQ(engine_->Stats().failed_rows, 1);
  EXPECT_EQ(engine_->Stats().abandoned_rows, 0);
}

TEST_F(BatchingEngineTest, FullQueueRejectsBeforeAccepting) {
  Start({.max_queued_rows = 1000, .max_rows_per_request = 10});
  Notification gate;
  RowCollector blocking(1);
  HoldExecutor(gate, blocking);
  auto request = engine_->NewRequest();
  RowCollector accepted(6);
  ASSERT_THAT(engine_->Submit(request, ScoreRows(6, 2, 1), accepted.Callback()), IsOk());
  bool called = false;
  absl::Status status = engine_->Submit(request, ScoreRows(5, 2, 1), [&](size_t, RowResult) { called = true; });
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limits.max_rows (10)")));
  EXPECT_EQ(engine_->Stats().queued_rows, 6);  // nothing of the rejected call was queued
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  accepted.Wait();
  EXPECT_FALSE(called);
}

// A full queue refuses new requests but not the later stages of one it admitted: before, each decode step was
// checked as new work, and so was a method's next stage of many rows (a perturbation's coalitions after its
// prefix): the request failed part-way with RESOURCE_EXHAUSTED, the work it had done lost. Past twice the
// engine's limits, later stages are refused too.
TEST_F(BatchingEngineTest, AFullQueueRefusesNewRequestsButNotTheLaterStagesOfAnAdmittedOne) {
  Start({.max_queued_rows = 8});
  Notification gate;
  RowCollector blocking(1);
  HoldExecutor(gate, blocking);
  auto state = std::make_shared<DecodeState>(/*num_layers=*/1);
  auto decode = [&state](std::vector<int64_t> ids) {
    std::vector<Row> rows;
    rows.push_back(Row{.kind = RowKind::kDecode, .input_ids = std::move(ids), .decode_state = state});
    return rows;
  };
  auto generation = engine_->NewRequest(), other = engine_->NewRequest();
  RowCollector prompt(1), others(3), more(4), next_step(1), next_stage(4);
  ASSERT_THAT(engine_->Submit(generation, decode({5, 6, 7}), prompt.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(other, ScoreRows(3, 2, 2), others.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(4, 2, 2), more.Callback()), IsOk());
  bool called = false;
  auto never = [&](size_t, RowResult) { called = true; };
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 3), never),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("engine queue is full (8 rows")));
  EXPECT_THAT(engine_->Submit(generation, decode({8}), next_step.Callback()), IsOk());
  EXPECT_THAT(engine_->Submit(generation, ScoreRows(4, 2, 4), next_stage.Callback()), IsOk());
  EXPECT_EQ(engine_->Stats().queued_rows, 13);
  // 17 rows: past twice the limit (each request within its own limit of 8).
  EXPECT_THAT(engine_->Submit(other, ScoreRows(4, 2, 4), never),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("engine queue is full (13 rows")));
  gate.Notify();
  blocking.Wait();  // the collectors must outlive every callback
  prompt.Wait();
  others.Wait();
  more.Wait();
  next_step.Wait();
  next_stage.Wait();
  EXPECT_THAT(next_step.result(0).status, IsOk());
  for (size_t i = 0; i < 4; ++i) EXPECT_THAT(next_stage.result(i).status, IsOk());
  EXPECT_FALSE(called);
  EXPECT_EQ(engine_->Stats().queued_rows, 0);
}

// An operator's "unlimited" queue: twice INT64_MAX wrapped negative, and every later stage was refused on an
// idle server ("engine queue is full (0 rows, 0 tokens queued)").
TEST_F(BatchingEngineTest, LaterStagesAreQueuedUnderLimitsOfInt64Max) {
  constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();
  Start({.max_queued_rows = kUnlimited, .max_queued_tokens = kUnlimited, .max_queued_bytes = kUnlimited});
  auto request = engine_->NewRequest();
  RowCollector first(2), second(2);
  ASSERT_THAT(engine_->Submit(request, ScoreRows(2, 2, 2), first.Callback()), IsOk());
  const absl::Status later = engine_->Submit(request, ScoreRows(2, 2, 3), second.Callback());
  first.Wait();
  ASSERT_THAT(later, IsOk());  // refused, its rows are never answered
  second.Wait();
  for (size_t i = 0; i < 2; ++i) EXPECT_THAT(second.result(i).status, IsOk());
}

TEST_F(BatchingEngineTest, QueueMemoryCountsEachRequestsPathOnceAndRefusesAboveTheLimit) {
  auto executor = std::make_unique<FakeExecutor>();
  executor->SetEmbeddedBytesPerToken(1000);  // a 100-token path: ~100 KB once it runs
  // 64 points on one path each: counted per row the path would need 6.5 MB; counted once it fits.
  ExpectSharedInputCountedOnce(std::move(executor), 256 << 10, [](int64_t marker) {
    auto path = std::make_shared<const EmbeddingPath>(
        EmbeddingPath{.input_ids = std::vector<int64_t>(100, marker), .baseline_ids = std::vector<int64_t>(100, 0)});
    std::vector<Row> rows;
    for (int i = 0; i < 64; ++i)
      rows.push_back(Row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = i / 64.0}});
    return rows;
  });
}

// A request over the limit on its own is told it can never be queued, not that the queue is full now.
TEST_F(BatchingEngineTest, ARequestOverTheQueueMemoryLimitAloneIsToldItNeverFits) {
  auto executor = std::make_unique<FakeExecutor>();
  executor->SetEmbeddedBytesPerToken(1000);
  executor_ = executor.get();
  engine_ = *BatchingEngine::Create(std::move(executor), {.max_queued_bytes = 64 << 10});
  auto path = std::make_shared<const EmbeddingPath>(
      EmbeddingPath{.input_ids = std::vector<int64_t>(100, 7), .baseline_ids = std::vector<int64_t>(100, 0)});
  std::vector<Row> rows = {Row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = 0.5}}};
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), std::move(rows), [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("this request alone needs"), HasSubstr("even on an idle server"),
                             HasSubstr("limits.max_queued_bytes (64.0 KiB)"))));  // under 1 MiB it said "0 MiB"
  EXPECT_EQ(engine_->Stats().queued_bytes, 0);
}

TEST_F(BatchingEngineTest, QueueMemoryCountsEachRequestsPromptPairOnceAndRefusesAboveTheLimit) {
  auto executor = std::make_unique<FakeExecutor>();
  executor->SetCapturedBytesPerToken(1000);  // a 100-token pair: ~100 KB of activations once it runs
  // 16 patches of one pair each (rows hold their ids too): counted per row the pair would need 1.6 MB;
  // counted once, two requests fit.
  ExpectSharedInputCountedOnce(std::move(executor), 320 << 10, [](int64_t marker) {
    auto pair = std::make_shared<const PromptPair>(
        PromptPair{.clean_ids = std::vector<int64_t>(100, marker), .corrupted_ids = std::vector<int64_t>(100, 0)});
    std::vector<Row> rows;
    for (int i = 0; i < 16; ++i) {
      rows.push_back(Row{
          .kind = RowKind::kScore,
          .input_ids = pair->corrupted_ids,
          .component = {
              .pair = pair, .run = PairRun::kCorrupted, .patch = ComponentSelection{.layer = i % 4, .head = i / 4}}});
    }
    return rows;
  });
}

TEST_F(BatchingEngineTest, MalformedRowsAreRejected) {
  Start();
  auto request = engine_->NewRequest();
  EXPECT_THAT(engine_->Submit(request, {ScoreRow({})}, [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(engine_->Submit(request, {Row{.kind = RowKind::kGrad, .input_ids = {1}}}, [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(engine_->Submit(request, {Row{.kind = RowKind::kDecode, .input_ids = {1}}}, [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto uneven = std::make_shared<const EmbeddingPath>(EmbeddingPath{.input_ids = {1, 2}, .baseline_ids = {0}});
  EXPECT_THAT(
      engine_->Submit(request, {Row{.kind = RowKind::kGrad, .point = {.path = uneven}}}, [](size_t, RowResult) {}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("baseline_ids")));
}

TEST_F(BatchingEngineTest, ShutdownAnswersQueuedRowsAndRefusesNewOnes) {
  Start({.max_batch_rows = 1});
  Notification gate;
  executor_->HoldFirstBatch(&gate);
  RowCollector rows(5);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(5, 2, 1), rows.Callback()), IsOk());
  executor_->started().WaitForNotification();
  std::thread stopper([&] { engine_->Shutdown(); });
  while (!rows.WaitFor(absl::Milliseconds(1)) && engine_->Stats().queued_rows > 0) {
  }
  gate.Notify();
  stopper.join();
  rows.Wait();
  EXPECT_THAT(rows.result(0).status, IsOk());  // the running batch finished
  for (int i = 1; i < 5; ++i) EXPECT_THAT(rows.result(i).status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 1), [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kUnavailable));
  engine_->Shutdown();  // idempotent
}

TEST_F(BatchingEngineTest, ConcurrentSubmittersGetEveryRowExactlyOnce) {
  Start({.max_batch_tokens = 256, .max_batch_rows = 16});
  constexpr int kThreads = 32, kSubmitsPerThread = 8;
  std::vector<std::unique_ptr<RowCollector>> collectors(kThreads * kSubmitsPerThread);
  std::vector<std::vector<double>> expected(collectors.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto request = engine_->NewRequest(static_cast<Priority>(t % 3));
      for (int s = 0; s < kSubmitsPerThread; ++s) {
        const size_t slot = t * kSubmitsPerThread + s;
        std::vector<Row> rows;
        for (int r = 0; r < 1 + (t + s) % 7; ++r) {
          std::vector<int64_t> ids(1 + (t * 7 + r) % 13, static_cast<int64_t>(slot * 100 + r));
          expected[slot].push_back(static_cast<double>(ids.size()) * ids[0]);
          rows.push_back(Row{.kind = (r % 2 == 0) ? RowKind::kScore : RowKind::kDecode,
                             .input_ids = ids,
                             .decode_state = (r % 2 == 0) ? nullptr : std::make_shared<DecodeState>(1)});
        }
        collectors[slot] = std::make_unique<RowCollector>(rows.size());
        ASSERT_THAT(engine_->Submit(request, std::move(rows), collectors[slot]->Callback()), IsOk());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  int64_t total = 0;
  for (size_t slot = 0; slot < collectors.size(); ++slot) {
    collectors[slot]->Wait();
    EXPECT_THAT(collectors[slot]->answers(), Each(1));
    for (size_t r = 0; r < expected[slot].size(); ++r) EXPECT_EQ(collectors[slot]->result(r).value, expected[slot][r]);
    total += static_cast<int64_t>(expected[slot].size());
  }
  EXPECT_EQ(engine_->Stats().rows, total);
  for (const auto& batch : executor_->batches()) {
    EXPECT_LE(batch.rows.size(), 16u);
  }
}

// A batch that hangs (here: held at a gate while the fake clock runs on) shows as time without progress,
// and past stall_time as stalled; once it finishes the engine is neither.
TEST_F(BatchingEngineTest, ABatchThatHangsPastStallTimeMarksTheEngineStalledUntilItFinishes) {
  Start({.stall_time = absl::Seconds(10)});
  EXPECT_EQ(engine_->TimeWithoutProgress(), absl::ZeroDuration());  // idle is not stalled
  Notification gate;
  RowCollector blocking(1);
  HoldExecutor(gate, blocking);
  now_ms_ += 4000;
  EXPECT_EQ(engine_->TimeWithoutProgress(), absl::Seconds(4));
  EXPECT_FALSE(engine_->stalled());
  now_ms_ += 7000;
  EXPECT_EQ(engine_->TimeWithoutProgress(), absl::Seconds(11));
  EXPECT_TRUE(engine_->stalled());
  gate.Notify();
  blocking.Wait();
  EXPECT_THAT(blocking.result(0).status, IsOk());
  // The engine clears its mark after the batch's answers: poll, moving the clock so that a mark still
  // there shows as time without progress.
  bool cleared = false;
  for (int i = 0; i < 10000 && !cleared; ++i) {
    now_ms_ += 1;
    cleared = engine_->TimeWithoutProgress() == absl::ZeroDuration();
    if (!cleared) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(cleared);
  EXPECT_FALSE(engine_->stalled());
  now_ms_ += 60000;  // a long idle time is no stall either
  EXPECT_FALSE(engine_->stalled());
}

// Work queued behind a hung batch would wait with no end. Once stalled, the queued rows of requests with
// none in the batch are answered UNAVAILABLE (a client retries them on another replica) and their new rows
// refused; the batch's own request keeps its queued rows and may add more, and they all run if it moves.
TEST_F(BatchingEngineTest, StalledQueuedWorkOfOtherRequestsIsRefusedAndTheBatchesOwnIsKept) {
  Start({.stall_time = absl::Seconds(10)});
  Notification gate;
  executor_->HoldFirstBatch(&gate);
  auto held = engine_->NewRequest();
  RowCollector running(1), held_queued(2), held_later(1), other_queued(3);
  ASSERT_THAT(engine_->Submit(held, ScoreRows(1, 2, 7), running.Callback()), IsOk());
  executor_->started().WaitForNotification();
  const absl::Cleanup release_on_return = [&] {  // as in the test below
    if (!gate.HasBeenNotified()) gate.Notify();
    engine_->Shutdown();
  };
  ASSERT_THAT(engine_->Submit(held, ScoreRows(2, 3, 8), held_queued.Callback()), IsOk());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(3, 4, 9), other_queued.Callback()), IsOk());
  now_ms_ += 9000;  // slow, not yet stalled: nothing is refused
  EXPECT_EQ(engine_->RefuseQueuedWorkWhileStalled(), 0);
  EXPECT_EQ(engine_->Stats().queued_rows, 5);

  now_ms_ += 2000;
  EXPECT_EQ(engine_->RefuseQueuedWorkWhileStalled(), 3);
  ASSERT_TRUE(other_queued.done());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_THAT(
        other_queued.result(i).status,
        StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no progress for 11.0 s (the stall time is 10.0 s)")));
  }
  EXPECT_THAT(other_queued.answers(), Each(1));
  EXPECT_EQ(engine_->Stats().queued_rows, 2);
  EXPECT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 10), [](size_t, RowResult) {}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("retry on another replica")));
  ASSERT_THAT(engine_->Submit(held, ScoreRows(1, 2, 11), held_later.Callback()), IsOk());
  EXPECT_FALSE(held_queued.done());

  gate.Notify();  // it was only slow
  for (RowCollector* rows : {&running, &held_queued, &held_later}) {
    rows->Wait();
    for (const int answers : rows->answers()) EXPECT_EQ(answers, 1);
  }
  EXPECT_THAT(held_queued.result(1).status, IsOk());
  EXPECT_EQ(held_queued.result(1).value, 3 * 8);  // the fake executor's value: the sum of the row's ids
  EXPECT_THAT(held_later.result(0).status, IsOk());
  EXPECT_EQ(CountRowsWith(9), 0);  // the refused rows never ran
  // Moving again, it accepts everyone.
  RowCollector after(1);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), ScoreRows(1, 2, 12), after.Callback()), IsOk());
  after.Wait();
  EXPECT_THAT(after.result(0).status, IsOk());
}

// A short call's batch run inside a long batch's pause that hangs stalls the engine too: its request keeps its
// queued rows (its call waits for that batch in any case), the long batch's request too, and other work is refused.
TEST_F(BatchingEngineTest, StalledInsideAPauseTheShortBatchsRequestKeepsItsQueuedWork) {
  Notification short_batch_began, release;
  std::shared_ptr<Request> interactive;  // made once the engine is
  RowCollector long_rows(4), interactive_score(1), interactive_grad(1), other(1);
  Start({.stall_time = absl::Seconds(10)}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(2);
    executor.DuringStretch([&, first = true](const std::vector<const Row*>&) mutable {
      if (!std::exchange(first, false)) return;
      // Arriving while the long batch runs: the score row runs in its pause, the grad rows cannot.
      ASSERT_THAT(engine_->Submit(interactive, ScoreRows(1, 2, 5), interactive_score.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(interactive, GradRows(1, 6), interactive_grad.Callback()), IsOk());
      ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(1, 7), other.Callback()), IsOk());
    });
    executor.DuringBatch([&, first = true](const std::vector<const Row*>& rows) mutable {
      if (rows[0]->kind != RowKind::kScore || !std::exchange(first, false)) return;
      short_batch_began.Notify();
      release.WaitForNotification();
    });
  });
  interactive = engine_->NewRequest();
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(4, 1), long_rows.Callback()), IsOk());
  short_batch_began.WaitForNotification();
  // A failed assertion returns: the held batch must still end, or the engine's destructor would wait for it,
  // and the engine must stop before the collectors go.
  const absl::Cleanup release_on_return = [&] {
    if (!release.HasBeenNotified()) release.Notify();
    engine_->Shutdown();
  };
  now_ms_ += 11000;
  ASSERT_TRUE(engine_->stalled());
  EXPECT_EQ(engine_->RefuseQueuedWorkWhileStalled(), 1);
  ASSERT_TRUE(other.done());
  EXPECT_THAT(other.result(0).status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("stalled")));
  EXPECT_FALSE(interactive_grad.done());
  RowCollector interactive_later(1);
  ASSERT_THAT(engine_->Submit(interactive, ScoreRows(1, 2, 8), interactive_later.Callback()), IsOk());
  release.Notify();
  for (RowCollector* rows : {&long_rows, &interactive_score, &interactive_grad, &interactive_later}) {
    rows->Wait();
    EXPECT_THAT(rows->result(0).status, IsOk());
  }
  EXPECT_EQ(interactive_grad.result(0).value, 2 * 6);
}

// Progress is counted from the latest pause point: a long batch whose stretches between pauses are each
// under stall_time is not stalled, however long it runs as a whole.
TEST_F(BatchingEngineTest, ALongBatchThatReachesItsPausePointsIsNotStalled) {
  std::vector<absl::Duration> without_progress;
  std::atomic<bool> ever_stalled{false};
  Start({.stall_time = absl::Seconds(10)}, [&](FakeExecutor& executor) {
    executor.PauseGradBatches(4);
    executor.DuringStretch([&](const std::vector<const Row*>&) {
      now_ms_ += 6000;
      without_progress.push_back(engine_->TimeWithoutProgress());
      ever_stalled = ever_stalled || engine_->stalled();
    });
  });
  RowCollector gradients(8);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), GradRows(8, 1), gradients.Callback()), IsOk());
  gradients.Wait();
  // 24 s in all, but 6 s since the latest pause each time (not 6, 12, 18, 24: from the batch's start).
  EXPECT_THAT(without_progress,
              ::testing::ElementsAre(absl::Seconds(6), absl::Seconds(6), absl::Seconds(6), absl::Seconds(6)));
  EXPECT_FALSE(ever_stalled);
}

// A generation's next step: `token` appended to a sequence whose cache holds `cached` tokens already.
Row DecodeStep(int64_t token, int64_t cached) {
  auto state = std::make_shared<DecodeState>(/*num_layers=*/1, /*keeps_decoding=*/true);
  state->cache.Truncate({cached});
  return Row{.kind = RowKind::kDecode, .input_ids = {token}, .decode_state = std::move(state)};
}

// A step that continues a sequence runs at once, whatever max_queue_delay says (here an hour of a clock that stands
// still); a new prompt's prefill waits for others to share its batch.
TEST_F(BatchingEngineTest, DecodeStepsThatContinueASequenceDoNotWaitForTheQueueDelay) {
  EngineOptions options{.max_queue_delay = absl::Hours(1)};
  options.clock = [] { return absl::FromUnixSeconds(1000); };
  auto executor = std::make_unique<FakeExecutor>();
  executor_ = executor.get();
  engine_ = *BatchingEngine::Create(std::move(executor), options);
  RowCollector step(1), prefill(1);
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {DecodeStep(5, 10)}, step.Callback()), IsOk());
  EXPECT_TRUE(step.WaitFor(absl::Seconds(60)));
  Row first = DecodeStep(5, 0);
  first.input_ids = {1, 2, 3};
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), {std::move(first)}, prefill.Callback()), IsOk());
  EXPECT_FALSE(prefill.WaitFor(absl::Milliseconds(200)));
  engine_.reset();  // stopping, the engine runs what is queued without waiting
  EXPECT_TRUE(prefill.WaitFor(absl::Seconds(60)));
}

}  // namespace
}  // namespace attribution::engine
