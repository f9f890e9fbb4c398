// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/batch_policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

namespace attribution::engine {
namespace {

bool HasRows(const QueuedRequestView& view) {
  for (const auto& kind : view.kinds) {
    if (!kind.lengths.empty()) return true;
  }
  return false;
}

// An interactive request waits beside long work (a request that is not interactive).
bool Contended(const std::vector<QueuedRequestView>& queue) {
  bool interactive = false, long_work = false;
  for (const QueuedRequestView& view : queue) {
    if (!HasRows(view)) continue;
    (view.interactive ? interactive : long_work) = true;
  }
  return interactive && long_work;
}

// Interactive work a paused batch cannot run: gradient rows, and rows below `top` (a batch's priority).
bool Unpausable(const std::vector<QueuedRequestView>& queue, Priority top) {
  return std::any_of(queue.begin(), queue.end(), [top](const QueuedRequestView& view) {
    return view.interactive && HasRows(view) &&
           (view.priority < top || !view.kinds[static_cast<int>(RowKind::kGrad)].lengths.empty());
  });
}

// The predicted device time of the slowest interactive request's rows, each kind as one batch.
double InteractiveSeconds(const std::vector<QueuedRequestView>& queue, const BatchCost costs[kRowKinds]) {
  double seconds = 0;
  for (const QueuedRequestView& view : queue) {
    if (!view.interactive) continue;
    for (int k = 0; k < kRowKinds; ++k) {
      const std::vector<int64_t>& lengths = view.kinds[k].lengths;
      if (lengths.empty() || !costs[k].known) continue;
      const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
      seconds = std::max(seconds, costs[k].Seconds(static_cast<int64_t>(lengths.size()), longest));
    }
  }
  return seconds;
}

}  // namespace

BatchDecision DecideBatch(const std::vector<QueuedRequestView>& queue, absl::Time now, const BatchLimits& limits) {
  BatchDecision decision;
  std::vector<size_t> order(queue.size());
  std::iota(order.begin(), order.end(), 0);
  auto has_work = [](const QueuedRequestView& v) {
    for (const auto& kind : v.kinds) {
      if (!kind.lengths.empty()) return true;
    }
    return false;
  };
  bool present[kRowKinds] = {false, false, false};
  bool found = false;
  Priority top = Priority::kLow;
  for (const QueuedRequestView& view : queue) {
    if (!has_work(view) || (found && view.priority <= top)) continue;
    found = true;
    top = view.priority;
  }
  if (!found) return decision;
  // Kinds with work at the highest priority level that has any; the first at or after next_kind wins.
  for (const QueuedRequestView& view : queue) {
    if (view.priority != top) continue;
    for (int k = 0; k < kRowKinds; ++k) present[k] = present[k] || !view.kinds[k].lengths.empty();
  }
  for (int step = 0; step < kRowKinds; ++step) {
    const int k = (static_cast<int>(limits.next_kind) + step) % kRowKinds;
    if (present[k]) {
      decision.kind = static_cast<RowKind>(k);
      break;
    }
  }
  const int k = static_cast<int>(decision.kind);
  const uint64_t lead = limits.lead_requests[k];
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const QueuedRequestView &x = queue[a], &y = queue[b];
    if (x.priority != y.priority) return x.priority > y.priority;
    if (lead != 0 && (x.request_id == lead) != (y.request_id == lead)) return x.request_id == lead;
    if (x.deadline != y.deadline) return x.deadline < y.deadline;
    return x.arrival < y.arrival;
  });
  decision.contended = Contended(queue);
  decision.isolating = decision.contended || limits.contended_recently;
  const BatchCost& cost = limits.costs[k];
  // A short call waits for the batch that runs and then its own: a bound below a few times its own
  // batch's time only costs the long work its batching and helps nobody.
  decision.interactive_seconds = InteractiveSeconds(queue, limits.costs);
  // Uncontended, the bound never makes a batch so small that its fixed cost (on a CPU, reading and
  // repacking every weight matrix once per batch) is most of its time.
  double max_seconds =
      std::max(absl::ToDoubleSeconds(limits.max_uncontended_batch_time), cost.fixed / kMaxFixedCostShare);
  decision.unpausable = Unpausable(queue, top);
  if (decision.isolating) {
    const double stretches =
        decision.unpausable || limits.recent_unpausable ? 1 : std::max(1.0, limits.paused_stretches[k]);
    const double max_stretch_seconds =
        std::max(absl::ToDoubleSeconds(limits.max_batch_time),
                 kIsolationFactor * std::max(decision.interactive_seconds, limits.recent_interactive_seconds));
    max_seconds = std::min(max_seconds, stretches * max_stretch_seconds);
  }
  const bool time_limited = cost.known && std::isfinite(max_seconds);
  std::vector<int64_t> taken(queue.size(), 0);
  std::vector<bool> blocked(queue.size(), false);
  std::vector<bool> kept_out_by_length(queue.size(), false);
  bool only_continuations = true;  // every row taken continues a cached sequence
  bool limited = false;            // true once a limit (not a lack of rows) kept a row out: the batch runs now
  bool full = false;               // rows or token budget: no further row joins
  absl::Time oldest_in_batch = absl::InfiniteFuture();
  // Priority levels are strict: a lower level only fills what the higher ones leave.
  for (size_t level_begin = 0; level_begin < order.size() && !full;) {
    size_t level_end = level_begin;
    while (level_end < order.size() && queue[order[level_end]].priority == queue[order[level_begin]].priority)
      ++level_end;
    for (bool progress = true; progress && !full;) {
      progress = false;
      for (size_t o = level_begin; o < level_end; ++o) {
        const size_t i = order[o];
        const auto& rows = queue[i].kinds[k].lengths;
        if (blocked[i] || taken[i] >= static_cast<int64_t>(rows.size())) continue;
        const int64_t longest = std::max(decision.longest, rows[taken[i]]);
        const int64_t padded = (decision.rows + 1) * longest;
        const double waste = PaddingWaste(decision.tokens + rows[taken[i]], padded);
        // Interactive requests' rows are what the time bound protects: they join however long the batch takes.
        const bool in_time =
            !time_limited || queue[i].interactive || cost.Seconds(decision.rows + 1, longest) <= max_seconds;
        const bool fits_size = decision.rows + 1 <= limits.max_rows && padded <= limits.token_budget;
        const bool padded_enough = decision.rows == 0 || waste <= limits.max_padding_waste;
        const bool fits = fits_size && padded_enough && in_time;
        decision.time_limited = decision.time_limited || (!in_time && decision.rows > 0);
        if (!fits && decision.rows > 0) {
          limited = true;
          // A row that would only pad the batch too much waits for a later pass, when the batch holds more
          // rows of the leading length (a short row beside three long ones pads a quarter): tried once, a short
          // request behind a long one got no row until the long one's rows ran out (a 10-token integrated
          // gradients call 25-60x its time alone), and an interactive row let past the limit padded every
          // row of its batch to its own length (short Logprobs calls beside one 2000-token one: 20 -> 800 ms).
          // The others' rows still join meanwhile. A row that does not fit the size or time keeps its request
          // out (its row order kept: nothing behind it jumps ahead), while shorter rows of others may still fit.
          if (!fits_size || !in_time) blocked[i] = true;
          // Kept out by the length of the batch's rows (padding either way, or the time or tokens of rows padded to
          // a longer length than its own): it may lead a batch where its own rows set the length. A row as long as
          // the batch's that does not fit only waits its turn.
          if (!padded_enough || rows[taken[i]] < decision.longest) kept_out_by_length[i] = true;
          continue;
        }
        if (taken[i] == 0) oldest_in_batch = std::min(oldest_in_batch, queue[i].kinds[k].oldest_enqueued);
        decision.tokens += rows[taken[i]];
        const std::vector<int64_t>& cached = queue[i].kinds[k].cached;
        only_continuations = only_continuations && !cached.empty() && cached[taken[i]] > 0;
        ++taken[i];
        ++decision.rows;
        decision.longest = longest;
        progress = true;
        if (!fits) break;  // an over-long row runs alone
      }
      if (decision.rows >= limits.max_rows || decision.rows * decision.longest >= limits.token_budget) {
        limited = full = true;
      }
    }
    level_begin = level_end;
  }
  for (size_t i = 0; i < queue.size(); ++i) {
    if (taken[i] > 0) decision.take.emplace_back(i, taken[i]);
  }
  for (size_t i : order) {
    if (kept_out_by_length[i]) decision.passed_over.push_back(queue[i].request_id);
  }
  const absl::Duration waited = now - oldest_in_batch;
  if (limited || (decision.rows > 0 && only_continuations) || waited >= limits.max_queue_delay) {
    decision.run = true;
  } else {
    decision.wait = limits.max_queue_delay - waited;
    decision.take.clear();
  }
  return decision;
}

void PassedOver::After(const std::vector<uint64_t>& passed_over) {
  std::vector<uint64_t> waiting;
  for (uint64_t id : waiting_) {
    if (std::find(passed_over.begin(), passed_over.end(), id) != passed_over.end()) waiting.push_back(id);
  }
  for (uint64_t id : passed_over) {
    if (std::find(waiting.begin(), waiting.end(), id) == waiting.end()) waiting.push_back(id);
  }
  waiting_ = std::move(waiting);
}

}  // namespace attribution::engine
