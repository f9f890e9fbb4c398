// SPDX-License-Identifier: Apache-2.0
// The shared batching engine of one model on one device: every request's rows (score, grad, decode)
// are queued together, formed into batches by DecideBatch, and run by one executor thread that owns
// the model's compute. Submitters never block on the device; results come back through callbacks.
//
//   auto engine = *BatchingEngine::Create(MakeModelExecutor(model), {});
//   auto request = engine->NewRequest(Priority::kNormal, deadline);
//   RETURN_IF_ERROR(engine->Submit(request, std::move(rows), [](size_t i, RowResult r) { ... }));
//   engine->Cancel(*request);  // pending rows are dropped and answered CANCELLED
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/common/monotonic_clock.h"
#include "engine/scheduler/batch_executor.h"
#include "engine/scheduler/batch_policy.h"

namespace attribution::engine {

struct EngineOptions {
  int64_t max_batch_tokens = 8192;  // padded tokens (rows x longest row) per batch
  int64_t min_batch_tokens = 64;    // out-of-memory retries never shrink the budget below this
  int64_t max_batch_rows = 64;
  absl::Duration max_queue_delay = absl::Milliseconds(2);
  double max_padding_waste = 0.25;    // see BatchLimits
  int64_t max_queued_rows = 1 << 20;  // per engine (model)
  int64_t max_queued_tokens = int64_t{1} << 28;
  // Memory the queued work holds: rows, each embedding path's ids and (once it runs) its input and
  // baseline embeddings, and each prompt pair's ids and (once it runs) both runs' activations at every
  // component site, paths and pairs counted once per request. Submissions above it are refused.
  int64_t max_queued_bytes = int64_t{8} << 30;
  // The keys and values all generations in progress may hold together (ReserveKvCache); a pool of its own, so
  // generations never lock attribution calls out of the queue, nor these them. Size it to the device's memory
  // beside the weights.
  int64_t max_kv_cache_bytes = int64_t{8} << 30;
  int64_t max_rows_per_request = 1 << 16;  // queued at once
  int64_t max_tokens_per_request = int64_t{1} << 24;
  // Latency isolation (see batch_policy.h): while contended, one batch takes at most this device time
  // by the cost the engine learns per kind from its own batches (infinite: no bound). Contention is
  // remembered for `contention_memory`, so the gaps between interactive calls stay bounded too.
  absl::Duration max_batch_time = absl::Milliseconds(25);
  absl::Duration contention_memory = absl::Seconds(1);
  // Uncontended too, one batch takes at most this device time (by the same learned cost), or four
  // times its kind's learned per-batch fixed cost where that is more (kMaxFixedCostShare), so a
  // request running alone stops within about one batch of its cancellation or deadline, and a call
  // that arrives then waits at most that long. Infinite: only the token budget bounds a batch.
  absl::Duration max_uncontended_batch_time = absl::Milliseconds(250);
  // Intra-op threads of the batches that run while contended: 0 as many as the others (all the process
  // has), kOneThreadFewer one fewer than that (at least one), N > 0 N (at most all). On a CPU device the engine's
  // threads share the cores with the threads that receive and answer calls; one fewer leaves them a
  // core, so an interactive call is answered sooner (bench/RESULTS.md: Logprobs p90 beside integrated
  // gradients 25-28 ms against 30-37 ms on 2 cores). Uncontended batches always use all, and so do
  // batches that pause for the short calls (pause_long_batches); the short batches run inside a pause use
  // one fewer (when this is one fewer) while they are short (BatchingEngine::kFewThreadsBelow).
  static constexpr int kOneThreadFewer = -1;
  int contended_intra_op_threads = 0;
  // Long gradient batches pause between layers to run waiting interactive score and decode rows (see
  // BatchExecutor::SetPausePoint), so beside short calls they keep an efficient size: while contended,
  // max_batch_time bounds one stretch between pauses rather than the whole batch.
  bool pause_long_batches = true;
  // A batch that makes no progress for longer than this (see TimeWithoutProgress) marks the engine stalled:
  // its device or its thread hangs (a stuck kernel, a driver fault, a deadlock), and the server stops
  // advertising SERVING until it moves again. Long enough for the longest stretch any batch runs without
  // progress: a gradient batch's between pauses (on the CPU, half a layer), a score or decode batch as a
  // whole, the first batch of a kind before its cost is learned (max_uncontended_batch_time bounds the
  // rest). Infinite: never.
  absl::Duration stall_time = absl::Seconds(120);
  // The engine's clock, which requests' deadlines are on: by default the monotonic clock (MonotonicNow).
  std::function<absl::Time()> clock;
};

// One finished batch, for metrics.
struct BatchRecord {
  RowKind kind;
  int64_t rows = 0;
  int64_t tokens = 0;         // real tokens
  int64_t padded_tokens = 0;  // rows x longest
  absl::Duration device_time;
  absl::Duration max_queue_wait;
  bool failed = false;        // some row answered an error (its call's end included)
  bool time_limited = false;  // max_batch_time or max_uncontended_batch_time bounded its size
  bool inside_pause = false;  // short calls' rows run while a long batch paused
  double padding_waste() const { return PaddingWaste(tokens, padded_tokens); }
};

struct EngineStats {
  int64_t queued_rows = 0;
  int64_t queued_tokens = 0;
  int64_t queued_bytes = 0;
  int64_t kv_cache_bytes = 0;  // reserved by generations in progress (ReserveKvCache)
  int64_t batches = 0;
  int64_t rows = 0;
  int64_t tokens = 0;
  int64_t padded_tokens = 0;
  int64_t failed_rows = 0;            // an error of the device or the model, for a call still waiting
  int64_t abandoned_rows = 0;         // their call cancelled or past its deadline by the batch's end
  int64_t time_limited_batches = 0;   // kept short by max_batch_time or max_uncontended_batch_time
  int64_t batches_inside_pauses = 0;  // of short calls' rows, run while a long batch paused
  int64_t token_budget = 0;           // current (shrinks after out-of-memory, regrows after batches that fit)
  absl::Duration device_time;
  absl::Duration uptime;
  double padding_waste() const { return PaddingWaste(tokens, padded_tokens); }
  double rows_per_second() const { return rows / std::max(1e-9, absl::ToDoubleSeconds(uptime)); }
  double tokens_per_second() const { return tokens / std::max(1e-9, absl::ToDoubleSeconds(uptime)); }
};

// A request's identity, priority and deadline, shared between its owner and the engine.
// Thread-safe.
class Request {
 public:
  Request(uint64_t id, Priority priority, absl::Time deadline) : id_(id), priority_(priority), deadline_(deadline) {}
  uint64_t id() const { return id_; }
  Priority priority() const { return priority_; }
  absl::Time deadline() const { return deadline_; }
  bool cancelled() const { return cancelled_.load(); }

  struct Stats {
    int64_t rows_done = 0;
    absl::Duration queue_time;   // summed over rows: enqueue to batch start
    absl::Duration device_time;  // this request's share (by tokens) of its batches' device time
  };
  Stats stats() const;

 private:
  friend class BatchingEngine;
  const uint64_t id_;
  const Priority priority_;
  const absl::Time deadline_;
  std::atomic<bool> cancelled_{false};
  // Score and grad rows ever submitted (decode steps not counted): few make the request interactive.
  std::atomic<int64_t> submitted_work_rows_{0};
  // Whether the engine has accepted rows of this request before: its later stages are not refused for a full
  // queue (BatchingEngine::Submit).
  std::atomic<bool> admitted_{false};
  mutable std::mutex mu_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

// Thread-safe. Destruction shuts down (pending rows are answered UNAVAILABLE) and joins.
class BatchingEngine {
 public:
  static absl::StatusOr<std::unique_ptr<BatchingEngine>> Create(std::unique_ptr<BatchExecutor> executor,
                                                                EngineOptions options);
  ~BatchingEngine();

  // `deadline` is on the engine's clock (EngineOptions::clock).
  std::shared_ptr<Request> NewRequest(Priority priority = Priority::kNormal,
                                      absl::Time deadline = absl::InfiniteFuture());

  // Queues `rows` of `request`. Either accepts them all (OK; then `done` is called exactly once per
  // row, possibly with CANCELLED / DEADLINE_EXCEEDED / UNAVAILABLE, on the executor thread or on the thread
  // of the Cancel, RefuseQueuedWorkWhileStalled or Shutdown call that answered it) or none: INVALID_ARGUMENT for a
  // malformed row or one over a per-request limit (rows, tokens, bytes: no wait makes it fit),
  // RESOURCE_EXHAUSTED when the engine's queue is full now (retrying later may succeed), CANCELLED /
  // DEADLINE_EXCEEDED for a finished request, UNAVAILABLE after Shutdown or while stalled. The queue's limits (rows,
  // tokens, bytes) admit work: the next decode step of a generation already admitted (one row of one token) is accepted
  // over them, so a full queue does not fail a Generate part-way; each in-flight generation adds at most that one row.
  absl::Status Submit(const std::shared_ptr<Request>& request, std::vector<Row> rows, RowCallback done);

  // Drops the request's queued rows (answered CANCELLED now) and discards its in-flight results.
  void Cancel(Request& request);

  EngineStats Stats() const;
  // How long the running batch has gone without progress: since it began, its latest pause point (the
  // executor's, e.g. between layers), its latest retry of a part, or the start of its answers, whichever
  // came last; zero while no batch runs. A hung device shows only here: its calls simply never end.
  absl::Duration TimeWithoutProgress() const;
  // TimeWithoutProgress() is over EngineOptions::stall_time.
  bool stalled() const { return TimeWithoutProgress() > options_.stall_time; }
  // While stalled, answers UNAVAILABLE the queued rows of every request with none in the running batch (or
  // in the short batch running inside its pause): they would wait for it with no end, and a client's retry
  // of UNAVAILABLE goes to another replica. The running batches' own requests keep theirs (their calls wait
  // for the batch in any case, and finish if it moves again). Submit refuses the same requests' new rows
  // while stalled. Returns the rows answered, whose callbacks run on the calling thread; the engine has no
  // thread of its own to notice a stall with (its executor is the one that hangs): the server's health
  // watch calls this.
  int64_t RefuseQueuedWorkWhileStalled();
  // The most rows one request may have queued at once (EngineOptions::max_rows_per_request).
  int64_t max_rows_per_request() const { return options_.max_rows_per_request; }
  // The most tokens (all its queued rows together) one request may queue (EngineOptions::max_tokens_per_request).
  int64_t max_tokens_per_request() const { return options_.max_tokens_per_request; }
  // Queue memory one request may hold: the whole queue's (a request over it can never be queued).
  int64_t max_bytes_per_request() const { return options_.max_queued_bytes; }
  // Tokens (prompt and new tokens) all generations' KV caches may hold together: max_kv_cache_bytes in tokens.
  int64_t max_kv_cache_tokens() const;
  // Holds the keys and values of a generation of `tokens` (prompt and new tokens) against max_kv_cache_bytes
  // until the returned reservation is destroyed: the cache lives from a generation's first step to its end,
  // mostly while no row of it is queued, and went uncounted (64 Generates held 3.3 GB that no limit refused and
  // no metric showed). INVALID_ARGUMENT where it exceeds the limit alone, RESOURCE_EXHAUSTED while other
  // generations hold too much; the caller passes `what` (the field that sets `tokens`) for the message.
  class Reservation;
  absl::StatusOr<std::unique_ptr<Reservation>> ReserveKvCache(int64_t tokens, absl::string_view what);
  // Called on the executor thread after every batch, before its rows are answered.
  void SetBatchObserver(std::function<void(const BatchRecord&)> observer);

  // Runs `task` on the engine's aside thread, after the tasks given before it: a reduction too long for the
  // executor thread (LIME's fits), where every call to the model would wait behind it. Once Shutdown began,
  // runs it on the caller's thread.
  void RunAside(std::function<void()> task);
  // Why nobody waits for `request`'s answer any more: CANCELLED, DEADLINE_EXCEEDED (on the engine's clock) or,
  // once Shutdown began, UNAVAILABLE; OK while someone does. Submit refuses rows for it, and long work (LIME's
  // fits) stops at it.
  absl::Status Abandoned(const Request& request) const { return AbandonedAt(request, Now()); }

  // Stops accepting, answers queued rows UNAVAILABLE, lets the running batch finish, joins (the aside thread
  // too, after its tasks). Idempotent.
  void Shutdown();

 private:
  struct Group {  // the rows of one Submit call
    std::shared_ptr<Request> request;
    RowCallback done;
  };
  struct PendingRow {
    Row row;
    std::shared_ptr<Group> group;
    size_t index = 0;
    absl::Time enqueued;
  };
  struct RequestQueue {
    std::shared_ptr<Request> request;
    uint64_t arrival = 0;
    int64_t rows = 0, tokens = 0, bytes = 0;
    std::unordered_map<const void*, int64_t> shared_rows;  // queued rows per embedding path or prompt pair
    std::deque<PendingRow> kinds[kRowKinds];
  };
  struct Answer {  // a callback to make outside the lock
    std::shared_ptr<Group> group;
    size_t index;
    RowResult result;
  };

  BatchingEngine(std::unique_ptr<BatchExecutor> executor, EngineOptions options);
  absl::Time Now() const { return options_.clock ? options_.clock() : MonotonicNow(); }
  absl::Status AbandonedAt(const Request& request, absl::Time now) const;
  // The embedding path or prompt pair `row` shares with other rows, and the memory it holds once.
  std::pair<const void*, int64_t> SharedInput(const Row& row) const;
  void Loop();
  // Views of the queued requests for DecideBatch, with `ids` their request ids. Inside a pause: only
  // the interactive requests of at least the running batch's priority that have no rows in it, and only
  // their score and decode rows (what can run inside a paused gradient batch).
  std::vector<QueuedRequestView> QueueViewsLocked(bool inside_pause, std::vector<uint64_t>& ids) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  BatchLimits LimitsLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The executor's pause point: abandons the running batch if no row of it is still wanted, else times
  // the stretch that ended and runs the short work.
  void RunShortWorkWhilePaused();
  // The executor's abandon point, and the pause point's first step: throws (to Execute) once no row of the
  // running batch is still wanted. A short batch inside a pause is not the running batch: it runs on.
  void StopIfRunningBatchAbandoned();
  // Whether every row of `batch` belongs to a cancelled or expired request.
  static bool NoRowIsWanted(const std::vector<PendingRow>& batch, absl::Time now);
  // Runs one batch of the waiting short work QueueViewsLocked shows inside a pause.
  void RunShortWork(absl::Time now);
  // Learns paused_stretches_ from a finished batch's own device time and longest stretch.
  void ObserveStretchesLocked(RowKind kind, absl::Duration device_time) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static constexpr double kStretchesRecovery = 0.1;
  // UNAVAILABLE, naming the stall, for a request with no rows in the running batch while stalled; else OK.
  absl::Status StallRefusalLocked(uint64_t request_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes rows of expired or cancelled requests; appends their answers.
  void DropDeadRowsLocked(absl::Time now, std::vector<Answer>& answers) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Erases every queue that is empty or for which `refusal` is not OK, answering its rows with that status.
  void DropQueuesLocked(absl::FunctionRef<absl::Status(const RequestQueue&)> refusal, std::vector<Answer>& answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Answers every queued row of `queue` with `status` and takes them off the totals; the caller erases it.
  void DropQueueLocked(RequestQueue& queue, const absl::Status& status, std::vector<Answer>& answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<PendingRow> TakeBatchLocked(const BatchDecision& decision, const std::vector<uint64_t>& ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs rows as one batch, splitting it on failure until failures are pinned to single rows.
  void Execute(RowKind kind, std::vector<PendingRow*> rows, std::vector<RowResult>& results, bool inside_pause);
  void RegrowTokenBudget();
  void Finish(RowKind kind, std::vector<PendingRow>& batch, std::vector<RowResult>& results, absl::Time started,
              absl::Duration device_time, bool time_limited, bool inside_pause);
  static void Deliver(std::vector<Answer>& answers);
  // The requests with rows in `batch`, sorted, each once.
  static std::vector<uint64_t> RequestIds(const std::vector<PendingRow>& batch);
  // Returns freed heap memory to the system when there may be kBytesWorthTrimming of it to give: the process's
  // resident memory or the allocator's free bytes grew by that much since the last trim (a trim leaves the
  // free bytes counted, their pages given back, so the free bytes alone kept a fragmented heap trimming after
  // every call). After any work, the executor calls it kIdleTrims times with an empty queue: after
  // kIdleBeforeTrim, then after twice the previous wait (0.2, 0.6, 1.4, 3.0, 6.2, 12.6 s into the idle
  // stretch), so memory after a burst falls back towards its idle size even when the last answers take
  // seconds to build. Executor thread only.
  void ReleaseFreeMemory();
  static constexpr absl::Duration kIdleBeforeTrim = absl::Milliseconds(200);
  static constexpr int64_t kBytesWorthTrimming = int64_t{16} << 20;
  static constexpr int kIdleTrims = 6;
  int64_t resident_after_trim_ = 0, free_after_trim_ = 0;  // executor thread only

  const std::unique_ptr<BatchExecutor> executor_;  // used by the executor thread only
  // Intra-op threads: all the process has, and those of contended batches (EngineOptions; 0: all). Set by
  // the executor thread as it starts, read by the thread that runs batches only.
  int all_threads_ = 1, contended_threads_ = 0;
  // Short batches run inside a pause on contended_threads_ (when it is one fewer) once their kind's learned
  // cost says they take less than kFewThreadsBelow on the device (the default model's Logprobs calls, 2.5-5
  // ms on 2 CPU cores; not the 46M-parameter Llama's, 15-20 ms, which one thread fewer slowed by a third),
  // and again on every thread once it says more than kEveryThreadAbove (a third over: the slowdown the
  // fewer threads may add to the cost they teach). Per kind, the thread that runs batches only.
  static constexpr absl::Duration kFewThreadsBelow = absl::Milliseconds(8);
  static constexpr absl::Duration kEveryThreadAbove = absl::Milliseconds(11);
  bool few_threads_in_pause_[kRowKinds] = {false, false, false};
  int max_paused_stretches_[kRowKinds] = {1, 1, 1};  // the executor's, set before the executor thread starts
  // Only the thread that runs batches (the executor thread, or autograd's while that thread waits) uses
  // these: of the running batch, the time spent in short batches run inside it (its own device time is
  // less), its longest stretch between pauses so far, and when the current stretch began.
  absl::Duration paused_time_, longest_stretch_;
  absl::Time stretch_began_;
  // The batch Loop runs, and whether a pause abandoned it: its work stops at the next layer once its
  // requests are all cancelled or expired, rather than running the whole batch for nobody.
  const std::vector<PendingRow>* running_batch_ = nullptr;
  bool running_batch_abandoned_ = false;
  bool running_short_work_ = false;  // a short batch runs inside the running batch's pause
  // When the running batch last progressed (nanoseconds on the engine's clock), kNoBatchRunning between
  // batches. Written by the thread that runs batches, read by anyone.
  void MarkProgress() { last_progress_ns_.store(absl::ToUnixNanos(Now())); }
  static constexpr int64_t kNoBatchRunning = INT64_MIN;
  std::atomic<int64_t> last_progress_ns_{kNoBatchRunning};
  const EngineOptions options_;
  const absl::Time started_;
  std::atomic<uint64_t> next_request_id_{1};

  // std::mutex rather than absl::Mutex: Debian's abseil is not built with ThreadSanitizer, which
  // then cannot see absl::Mutex synchronise; the TSAN job (scripts/test-tsan) checks this class.
  mutable std::mutex mu_;
  std::condition_variable work_changed_;  // rows arrived, or shutdown began
  std::map<uint64_t, RequestQueue> queues_ ABSL_GUARDED_BY(mu_);
  uint64_t arrivals_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t submissions_ ABSL_GUARDED_BY(mu_) = 0;  // tells a waiting executor that rows arrived
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t token_budget_ ABSL_GUARDED_BY(mu_);
  int64_t batches_since_shrink_ ABSL_GUARDED_BY(mu_) = 0;  // batches that fit since the budget last changed
  static constexpr int64_t kBatchesBeforeBudgetRegrows = 32;
  RowKind next_kind_ ABSL_GUARDED_BY(mu_) = RowKind::kScore;  // kinds take turns between batches
  // Per kind, the requests its batches passed over for padding: the front leads the next (BatchLimits).
  PassedOver passed_over_[kRowKinds] ABSL_GUARDED_BY(mu_);
  absl::Time last_contended_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_interactive_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_unpausable_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  double paused_stretches_[kRowKinds] ABSL_GUARDED_BY(mu_) = {1, 1, 1};  // learned, at most the executor's
  RowKind next_kind_in_pause_ ABSL_GUARDED_BY(mu_) = RowKind::kScore;
  // The running batch's highest priority and its requests' ids, sorted (kept until the next batch); the ids
  // of the short batch running inside its pause, sorted (empty when none runs).
  Priority running_priority_ ABSL_GUARDED_BY(mu_) = Priority::kLow;
  std::vector<uint64_t> running_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> paused_for_requests_ ABSL_GUARDED_BY(mu_);
  double recent_interactive_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t padded_tokens_at_trim_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_trims_left_ ABSL_GUARDED_BY(mu_) = 0;
  BatchCostModel costs_ ABSL_GUARDED_BY(mu_);  // learned from finished batches
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::function<void(const BatchRecord&)> observer_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;      // the executor thread; joined by Shutdown
  std::mutex shutdown_mu_;  // serialises Shutdown callers around the join
  std::atomic<bool> stopping_flag_{false};

  // RunAside's tasks and thread (started by the first task).
  std::mutex aside_mu_;
  std::condition_variable aside_changed_;
  std::deque<std::function<void()>> aside_tasks_ ABSL_GUARDED_BY(aside_mu_);
  bool aside_stopping_ ABSL_GUARDED_BY(aside_mu_) = false;
  std::thread aside_thread_;  // started and joined under aside_mu_ / by Shutdown
};

// Memory a generation holds against its engine's max_kv_cache_bytes; returns it when destroyed. The engine must
// outlive it (a generation's callbacks, which hold it, end before the engine's Shutdown returns).
class BatchingEngine::Reservation {
 public:
  Reservation(BatchingEngine* engine, int64_t bytes) : engine_(engine), bytes_(bytes) {}
  ~Reservation();
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;

 private:
  BatchingEngine* engine_;
  int64_t bytes_;
};

}  // namespace attribution::engine
