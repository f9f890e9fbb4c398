// SPDX-License-Identifier: Apache-2.0
// The batching decision as a pure function of (queue view, now): which rows form the next batch, or
// how long to wait for more. Kept free of threads and locks so tests can drive it with any clock.
//
// Policy: requests are ordered by priority (high first), then deadline (earliest first), then arrival, except
// that the request that batches of the kind have passed over the longest, for rows of another length, leads within
// its priority level.
// Kinds take turns: among the kinds queued at the highest priority level with work, the batch takes
// the first one at or after `next_kind` in cyclic order (so a scoring call is never stuck behind a
// long run of gradient batches). Priority levels are strict: the batch is filled from the highest level first. Within a
// level it is filled round-robin, one row per request per pass in deadline order, so a short request queued behind a
// 512-step integrated-gradients job gets rows into the very next batch. A batch holds at most `max_rows` rows and rows
// x longest row <= token budget (padding counted); a single row longer than the budget runs alone. A batch that is not
// full waits until its oldest row has waited `max_queue_delay`, unless it holds only decode rows that continue their
// sequences (nothing more is coming for them: a lone generation paid the delay at every token, 2.8x its time).
//
// Latency isolation: while the queue is contended (an interactive request waits beside long work, or
// did so within the engine's recent memory), a batch also stays within
// max(`max_batch_time`, kIsolationFactor x the waiting short calls' own batch time) of device time by
// the learned cost of its kind, so a short call waits at most one short batch. A batch that pauses to
// run waiting short calls (gradient batches, between layers) keeps each stretch within that bound
// instead, so long work keeps batches of an efficient size beside short calls. Uncontended, batches
// fill the token budget up to the looser `max_uncontended_batch_time` (raised to 1 / kMaxFixedCostShare
// times the kind's per-batch fixed cost where that is more), so a request running alone still stops
// within about one batch of its cancellation or deadline (long rows, whose attention cost grows with
// their square, run in fewer rows per batch). Until a kind's cost is known (a few batches),
// its batches are bounded by the token budget only: growing them from one row instead would make the
// first requests' results differ in the last float bits from later ones (batch shapes change fp32
// summation order).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "engine/scheduler/batch_cost.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

// The share of padded token slots (rows x longest row) that hold padding.
inline double PaddingWaste(int64_t tokens, int64_t padded_tokens) {
  return padded_tokens > 0 ? 1.0 - static_cast<double>(tokens) / padded_tokens : 0;
}

struct QueuedRequestView {
  uint64_t request_id = 0;
  Priority priority = Priority::kNormal;
  absl::Time deadline = absl::InfiniteFuture();
  uint64_t arrival = 0;  // submission order of the request's first rows
  // Few rows in all (a Logprobs or Generate call, an attribution of a few features): the time bound
  // protects these from long work.
  bool interactive = false;
  struct KindQueue {
    std::vector<int64_t> lengths;  // queued rows of this kind, front first
    // Decode rows: the tokens their sequences hold in the cache already (empty: none). A row that continues a
    // sequence gains no partner by waiting: the sequences of a batch that decode on are queued again as soon as it
    // ends, before the next decision.
    std::vector<int64_t> cached;
    absl::Time oldest_enqueued = absl::InfiniteFuture();
  };
  KindQueue kinds[kRowKinds];
};

struct BatchLimits {
  int64_t token_budget = 8192;
  int64_t max_rows = 64;
  absl::Duration max_queue_delay = absl::ZeroDuration();
  RowKind next_kind = RowKind::kScore;  // the kind after the previous batch's
  // A row joins a batch of two or more rows only while padding stays at most this fraction of the
  // batch's padded tokens: requests that list rows longest first get batches of similar lengths. A row
  // refused so is tried again on each pass of the round-robin, as the batch holds more rows.
  double max_padding_waste = 1.0;
  // Per kind, the request that leads this batch within its priority level, ahead of earlier deadlines and
  // arrivals (0: none): the front of the kind's PassedOver. Requests whose rows cannot share a batch take turns by
  // batch: a 10-token integrated gradients call behind a 300-token one (no deadlines) otherwise got no batch until
  // all the long one's rows had run (0.35 s alone, 7.5-17 s).
  uint64_t lead_requests[kRowKinds] = {0, 0, 0};
  // Device time of one batch while contended, by `costs` (a kind whose cost is not known yet is not
  // limited). `contended_recently`: the engine saw contention within its memory window.
  absl::Duration max_batch_time = absl::InfiniteDuration();
  BatchCost costs[kRowKinds];
  // Device time of one batch at any time, contended or not (infinite: only the token budget bounds it).
  absl::Duration max_uncontended_batch_time = absl::InfiniteDuration();
  bool contended_recently = false;
  // The latest interactive_seconds (see BatchDecision) the engine saw, while within its memory window.
  double recent_interactive_seconds = 0;
  // Into how many stretches a batch of each kind is cut by its pauses, where waiting interactive score
  // and decode rows run (as the engine sees them; 1: none). While contended, the time bound holds for
  // one stretch of such a batch, unless interactive work that cannot run in a pause waits, or did so
  // recently (`recent_unpausable`): gradient rows, or rows below the queue's highest priority.
  double paused_stretches[kRowKinds] = {1, 1, 1};
  bool recent_unpausable = false;
};

// A request that submits at most this many score / grad rows in all is interactive: beside long work
// it makes the queue contended, and its rows are never kept out of a batch by the time bound.
inline constexpr int64_t kInteractiveRows = 16;
// Uncontended, the time bound lets a batch grow until the per-batch fixed cost of its kind (by the
// learned cost) is at most this share of the batch's time: a bound that cut batches below that would
// spend the device mostly on per-batch work (a 20-token gradient row of a GPT-2-small-sized model
// alone: 3-4x the device time per row of a batch of 25).
inline constexpr double kMaxFixedCostShare = 0.25;
// The time bound is at least this many times the interactive work's own batch time, so on a device
// where one short call takes longer than max_batch_time, long work keeps batches worth running.
inline constexpr double kIsolationFactor = 2.0;

struct BatchDecision {
  bool run = false;                                // false: nothing to run now
  absl::Duration wait = absl::InfiniteDuration();  // when !run: how long until the decision may change
  RowKind kind = RowKind::kScore;
  // (index into the view vector, rows taken from the front of that request's `kind` queue)
  std::vector<std::pair<size_t, int64_t>> take;
  int64_t rows = 0;
  int64_t longest = 0;
  int64_t tokens = 0;              // real (unpadded) tokens
  bool contended = false;          // the queue is contended now (see the file comment)
  bool isolating = false;          // contended now or recently: the contended time bound applies
  bool time_limited = false;       // max_batch_time or max_uncontended_batch_time bounded its size
  double interactive_seconds = 0;  // predicted time of the queued interactive work, 0 when none
  bool unpausable = false;         // queued interactive work that cannot run in a pause (see BatchLimits)
  // The requests of the kind that had a row kept out for the length of the batch's rows (padding either way, or the
  // time or tokens of rows padded to a longer length than theirs), in the batch's order of requests: those that got
  // a few rows too (a short row joins a quarter of a long batch's) would trickle along at that rate.
  std::vector<uint64_t> passed_over;
};

// The requests of a kind that batches passed over for rows of another length, in the order they were first passed over:
// the front leads the next batch of the kind (BatchLimits::lead_requests), so each gets a batch in turn however many
// lengths compete (with a single slot, two requests passed each other over and a third waited for one of them to end).
class PassedOver {
 public:
  uint64_t lead() const { return waiting_.empty() ? 0 : waiting_.front(); }
  // After a batch of the kind: those it passed over wait on in their order, the new ones behind them; the others
  // (rows taken, the request gone or not reached) leave.
  void After(const std::vector<uint64_t>& passed_over);

 private:
  std::vector<uint64_t> waiting_;
};

BatchDecision DecideBatch(const std::vector<QueuedRequestView>& queue, absl::Time now, const BatchLimits& limits);

}  // namespace attribution::engine
