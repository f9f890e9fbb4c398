// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/batching_engine.h"

#include <ATen/Parallel.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/model/torch_errors.h"
#include "engine/scheduler/intra_op_threads.h"

namespace attribution::engine {
namespace {

// The engine stops only with the server, so the caller's next try belongs on another replica.
absl::Status ShuttingDown() {
  return absl::UnavailableError("the model's engine is shutting down with the server; retry on another replica");
}

absl::Status CheckRow(const Row& row, size_t index) {
  const std::string where = absl::StrCat("row ", index, ": ");
  if (row.length() < 1) return absl::InvalidArgumentError(where + "has no tokens");
  switch (row.kind) {
    case RowKind::kGrad:
      if (!row.point.path && !row.component.pair) {
        return absl::InvalidArgumentError(where + "grad rows need a point on an embedding path or a prompt pair");
      }
      if (row.component.pair && !row.component.patch && !row.component.site_estimates) {
        return absl::InvalidArgumentError(where + "a pair's grad row needs a patch or site estimates");
      }
      break;
    case RowKind::kDecode:
      if (!row.decode_state) return absl::InvalidArgumentError(where + "decode rows need a decode state");
      if (row.point.path) return absl::InvalidArgumentError(where + "decode rows take token ids");
      break;
    case RowKind::kScore:
      if (row.prefix && (row.prefix_length < 0 || row.prefix_length > row.prefix->cache.lengths()[0])) {
        return absl::InvalidArgumentError(where + "prefix_length exceeds the prefix's cached tokens");
      }
      break;
  }
  if (row.top_k < 0) return absl::InvalidArgumentError(where + "top_k must be >= 0");
  if (const ComponentWork& c = row.component; c.pair) {
    const PromptPair& pair = *c.pair;
    if (row.kind == RowKind::kDecode || row.point.path || row.prefix ||
        pair.corrupted_ids.size() != pair.clean_ids.size() || row.input_ids != pair.ids(c.run == PairRun::kClean)) {
      return absl::InvalidArgumentError(where + "a pair's row reads one of its two equal-length prompts as input_ids");
    }
    if (c.patch && (c.patch->layer < 0 || c.patch->position >= pair.length() || c.patch->position < -1 ||
                    c.patch->head < -1 || (c.patch->head >= 0 && c.patch->site != ComponentSite::kHeads))) {
      return absl::InvalidArgumentError(where + "the patch selects no component of the pair");
    }
  }
  if (const EmbeddingPath* path = row.point.path.get()) {
    if (path->baseline_ids.size() != path->input_ids.size() ||
        (!path->zero_baseline.empty() && path->zero_baseline.size() != path->input_ids.size())) {
      return absl::InvalidArgumentError(where +
                                        "the path's baseline_ids and zero_baseline must match its input_ids in length");
    }
    if (!(path->noise_stdev >= 0)) return absl::InvalidArgumentError(where + "the path's noise_stdev must be >= 0");
  }
  return absl::OkStatus();
}

// Bytes as the largest unit that leaves at least 1 of them, to a tenth ("0 MiB" said nothing of a limit under 1 MiB).
std::string Mebibytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " bytes");
  if (bytes < (1 << 20)) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  return absl::StrFormat("%.1f MiB", bytes / static_cast<double>(1 << 20));
}

// A queue limit, doubled for an admitted request's later stages (Submit), saturating: an operator's "unlimited"
// of INT64_MAX must not wrap to a negative limit that refuses every stage.
int64_t WithHeadroom(int64_t limit, bool admitted) {
  if (!admitted) return limit;
  return limit > std::numeric_limits<int64_t>::max() / 2 ? std::numeric_limits<int64_t>::max() : 2 * limit;
}

}  // namespace

int64_t Row::QueuedBytes() const {
  const int64_t ids = static_cast<int64_t>(input_ids.size());
  const int64_t scored = static_cast<int64_t>(objective.tokens.size());
  return static_cast<int64_t>(sizeof(Row)) + 8 * ids + 24 * scored;  // ids; positions, tokens, weights
}

Request::Stats Request::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

BatchingEngine::BatchingEngine(std::unique_ptr<BatchExecutor> executor, EngineOptions options)
    : executor_(std::move(executor)),
      options_(std::move(options)),
      started_(Now()),
      token_budget_(options_.max_batch_tokens) {}

absl::StatusOr<std::unique_ptr<BatchingEngine>> BatchingEngine::Create(std::unique_ptr<BatchExecutor> executor,
                                                                       EngineOptions options) {
  if (!executor) return absl::InvalidArgumentError("engine needs an executor");
  if (options.max_batch_tokens < 1 || options.max_batch_rows < 1 || options.min_batch_tokens < 1 ||
      options.min_batch_tokens > options.max_batch_tokens) {
    return absl::InvalidArgumentError(
        "engine options: need 1 <= min_batch_tokens <= max_batch_tokens and max_batch_rows >= 1");
  }
  // A request larger than the whole queue could never be queued: its refusal was a retryable RESOURCE_EXHAUSTED
  // on an idle server, forever. As per-request limits it is INVALID_ARGUMENT, and ListModels advertises it.
  options.max_rows_per_request = std::min(options.max_rows_per_request, options.max_queued_rows);
  options.max_tokens_per_request = std::min(options.max_tokens_per_request, options.max_queued_tokens);
  std::unique_ptr<BatchingEngine> engine(new BatchingEngine(std::move(executor), std::move(options)));
  if (engine->options_.pause_long_batches) {
    engine->executor_->SetPausePoint([e = engine.get()] { e->RunShortWorkWhilePaused(); });
    std::lock_guard<std::mutex> lock(engine->mu_);
    for (int k = 0; k < kRowKinds; ++k) {
      engine->max_paused_stretches_[k] = std::max(1, engine->executor_->PausedStretches(static_cast<RowKind>(k)));
      engine->paused_stretches_[k] = engine->max_paused_stretches_[k];
    }
  }
  engine->executor_->SetAbandonPoint([e = engine.get()] { e->StopIfRunningBatchAbandoned(); });
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

BatchingEngine::~BatchingEngine() { Shutdown(); }

std::shared_ptr<Request> BatchingEngine::NewRequest(Priority priority, absl::Time deadline) {
  return std::make_shared<Request>(next_request_id_.fetch_add(1), priority, deadline);
}

std::pair<const void*, int64_t> BatchingEngine::SharedInput(const Row& row) const {
  // A path: ids and mask on the host, input and baseline embeddings on the device once it runs. A
  // pair: both prompts' ids, and both runs' activations at every site once its first row runs.
  if (const EmbeddingPath* path = row.point.path.get()) {
    return {path, path->length() * (17 + executor_->EmbeddedBytesPerToken())};
  }
  if (const PromptPair* pair = row.component.pair.get()) {
    return {pair, pair->length() * (16 + executor_->CapturedBytesPerToken(row.component.exact_attention_weights))};
  }
  return {nullptr, 0};
}

absl::Status BatchingEngine::AbandonedAt(const Request& request, absl::Time now) const {
  if (request.cancelled()) return absl::CancelledError("request was cancelled");
  if (now > request.deadline()) return absl::DeadlineExceededError("request deadline has passed");
  if (stopping_flag_.load()) return ShuttingDown();
  return absl::OkStatus();
}

absl::Status BatchingEngine::Submit(const std::shared_ptr<Request>& request, std::vector<Row> rows, RowCallback done) {
  int64_t tokens = 0, bytes = 0;
  std::unordered_map<const void*, int64_t> shared;  // bytes of each path or pair the rows hold
  for (size_t i = 0; i < rows.size(); ++i) {
    if (absl::Status s = CheckRow(rows[i], i); !s.ok()) return s;
    tokens += rows[i].length();
    bytes += rows[i].QueuedBytes();
    if (const auto [input, input_bytes] = SharedInput(rows[i]); input && shared.emplace(input, input_bytes).second) {
      bytes += input_bytes;
    }
  }
  const absl::Time now = Now();
  if (absl::Status abandoned = AbandonedAt(*request, now); !abandoned.ok()) return abandoned;
  const int64_t count = static_cast<int64_t>(rows.size());
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return ShuttingDown();  // Shutdown began since
  if (absl::Status stalled = StallRefusalLocked(request->id()); !stalled.ok()) return stalled;
  RequestQueue& queue = queues_[request->id()];
  const bool fresh = queue.request == nullptr;
  auto reject = [&](absl::Status status) {
    if (fresh) queues_.erase(request->id());
    return status;
  };
  if (queue.rows + count > options_.max_rows_per_request) {
    return reject(absl::InvalidArgumentError(
        absl::StrCat("request would queue ", queue.rows + count, " rows, over this model's limits.max_rows (",
                     options_.max_rows_per_request, "): fewer steps, samples or features")));
  }
  if (queue.tokens + tokens > options_.max_tokens_per_request) {
    return reject(absl::InvalidArgumentError(
        absl::StrCat("request would queue ", queue.tokens + tokens,
                     " tokens (its rows' tokens together), over this model's limits.max_queued_tokens (",
                     options_.max_tokens_per_request, "): fewer steps, samples or features, or a shorter prompt")));
  }
  // A full queue refuses requests, not stages: the later rows of a request admitted before (a generation's next
  // decode step, a perturbation's coalitions after its prefix, the next order of a tolerance, the rows after a
  // generated target) are queued up to twice the engine's limits, or the request would fail part-way with its
  // work lost; past twice, even they are refused, so the queue's memory stays bounded.
  const bool admitted = request->admitted_.load();
  if (stats_.queued_rows + count > WithHeadroom(options_.max_queued_rows, admitted) ||
      stats_.queued_tokens + tokens > WithHeadroom(options_.max_queued_tokens, admitted)) {
    return reject(absl::ResourceExhaustedError(absl::StrCat("engine queue is full (", stats_.queued_rows, " rows, ",
                                                            stats_.queued_tokens, " tokens queued)")));
  }
  // A path or pair this request already has queued rows on is counted already.
  for (const auto& [input, input_bytes] : shared) {
    if (queue.shared_rows.count(input) > 0) bytes -= input_bytes;
  }
  if (bytes > options_.max_queued_bytes) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "this request alone needs ", Mebibytes(bytes),
        " of queue memory, more than this model's limits.max_queued_bytes (", Mebibytes(options_.max_queued_bytes),
        "): it cannot be queued even on an idle server (fewer or shorter rows)")));
  }
  if (stats_.queued_bytes + bytes > WithHeadroom(options_.max_queued_bytes, admitted)) {
    return reject(absl::ResourceExhaustedError(
        absl::StrCat("engine queue memory is full: ", Mebibytes(stats_.queued_bytes), " queued and this request needs ",
                     Mebibytes(bytes), " more; the limit is ", Mebibytes(options_.max_queued_bytes))));
  }
  if (fresh) {
    queue.request = request;
    queue.arrival = arrivals_++;
  }
  if (count > 0) request->admitted_.store(true);
  auto group = std::make_shared<Group>(Group{request, std::move(done)});
  for (size_t i = 0; i < rows.size(); ++i) {
    const int k = static_cast<int>(rows[i].kind);
    if (rows[i].kind != RowKind::kDecode) request->submitted_work_rows_ += 1;
    if (const void* input = SharedInput(rows[i]).first) queue.shared_rows[input] += 1;
    queue.kinds[k].push_back(PendingRow{std::move(rows[i]), group, i, now});
  }
  queue.rows += count;
  queue.tokens += tokens;
  queue.bytes += bytes;
  stats_.queued_rows += count;
  stats_.queued_tokens += tokens;
  stats_.queued_bytes += bytes;
  ++submissions_;
  lock.unlock();
  work_changed_.notify_one();  // after unlocking, so the executor does not wake into a held lock
  return absl::OkStatus();
}

void BatchingEngine::Cancel(Request& request) {
  request.cancelled_.store(true);
  std::vector<Answer> answers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // This request's rows only. Other requests' dead rows are the executor's to drop: a call's answers
    // then arrive on the executor or on the thread cancelling that call, never inside the cancellation
    // of another call (whose gRPC reaction it is).
    if (auto it = queues_.find(request.id()); it != queues_.end()) {
      DropQueueLocked(it->second, absl::CancelledError("request was cancelled"), answers);
      queues_.erase(it);
    }
  }
  Deliver(answers);
}

absl::Status BatchingEngine::StallRefusalLocked(uint64_t request_id) const {
  const absl::Duration without_progress = TimeWithoutProgress();
  if (without_progress <= options_.stall_time ||
      std::binary_search(running_requests_.begin(), running_requests_.end(), request_id) ||
      std::binary_search(paused_for_requests_.begin(), paused_for_requests_.end(), request_id)) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrFormat(
      "the model is stalled: its running batch has made no progress for %.1f s (the stall time is %.1f s), so work "
      "that waits for it is refused until it moves; retry on another replica",
      absl::ToDoubleSeconds(without_progress), absl::ToDoubleSeconds(options_.stall_time)));
}

int64_t BatchingEngine::RefuseQueuedWorkWhileStalled() {
  std::vector<Answer> answers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DropQueuesLocked([this](const RequestQueue& queue)
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return StallRefusalLocked(queue.request->id()); },
                     answers);
  }
  const int64_t refused = static_cast<int64_t>(answers.size());
  Deliver(answers);
  return refused;
}

void BatchingEngine::DropQueueLocked(RequestQueue& queue, const absl::Status& status, std::vector<Answer>& answers) {
  for (auto& kind : queue.kinds) {
    for (PendingRow& row : kind) answers.push_back({row.group, row.index, RowResult{.status = status}});
  }
  stats_.queued_rows -= queue.rows;
  stats_.queued_tokens -= queue.tokens;
  stats_.queued_bytes -= queue.bytes;
}

void BatchingEngine::DropDeadRowsLocked(absl::Time now, std::vector<Answer>& answers) {
  DropQueuesLocked(
      [now](const RequestQueue& queue) {
        if (queue.request->cancelled()) return absl::CancelledError("request was cancelled");
        if (now > queue.request->deadline()) return absl::DeadlineExceededError("request deadline passed while queued");
        return absl::OkStatus();
      },
      answers);
}

void BatchingEngine::DropQueuesLocked(absl::FunctionRef<absl::Status(const RequestQueue&)> refusal,
                                      std::vector<Answer>& answers) {
  for (auto it = queues_.begin(); it != queues_.end();) {
    RequestQueue& queue = it->second;
    const absl::Status status = refusal(queue);
    if (status.ok() && queue.rows > 0) {
      ++it;
      continue;
    }
    DropQueueLocked(queue, status, answers);
    it = queues_.erase(it);
  }
}

std::vector<BatchingEngine::PendingRow> BatchingEngine::TakeBatchLocked(const BatchDecision& decision,
                                                                        const std::vector<uint64_t>& ids) {
  std::vector<PendingRow> batch;
  const int k = static_cast<int>(decision.kind);
  for (const auto& [view_index, count] : decision.take) {
    RequestQueue& queue = queues_[ids[view_index]];
    for (int64_t i = 0; i < count; ++i) {
      PendingRow row = std::move(queue.kinds[k].front());
      queue.kinds[k].pop_front();
      int64_t bytes = row.row.QueuedBytes();
      if (const auto [input, input_bytes] = SharedInput(row.row); input && --queue.shared_rows[input] == 0) {
        queue.shared_rows.erase(input);
        bytes += input_bytes;
      }
      queue.rows -= 1;
      queue.tokens -= row.row.length();
      queue.bytes -= bytes;
      stats_.queued_rows -= 1;
      stats_.queued_tokens -= row.row.length();
      stats_.queued_bytes -= bytes;
      batch.push_back(std::move(row));
    }
  }
  return batch;
}

void BatchingEngine::Loop() {
  all_threads_ = at::get_num_threads();
  // At most all: the setting lowers the count while contended, and more threads than cores (a config from
  // a larger machine) ran a 300-token ablation 8x slower on 2 cores with 64.
  contended_threads_ = options_.contended_intra_op_threads == EngineOptions::kOneThreadFewer
                           ? std::max(1, all_threads_ - 1)
                           : std::min(options_.contended_intra_op_threads, all_threads_);
  absl::Duration idle_wait = kIdleBeforeTrim;
  while (true) {
    std::vector<Answer> dropped;
    std::vector<PendingRow> batch;
    RowKind kind = RowKind::kScore;
    bool time_limited = false, isolating = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || stats_.queued_rows > 0; };
      if (!work_changed_.wait_for(lock, absl::ToChronoNanoseconds(idle_wait), has_work)) {
        // Idle a moment after work: requests let go of their tensors on their own threads, some much
        // later than others on a busy machine (building and sending a large answer), so trim a few
        // times, each idle moment twice as long as the one before.
        // Any work: a call of few tokens can free gigabytes (a component attribution's activations; 65,536
        // tokens of work were needed before, and 16 pairs of 512 tokens left 3.6 GB of a 5.5 GB peak held).
        if (stats_.padded_tokens != padded_tokens_at_trim_) idle_trims_left_ = kIdleTrims;
        padded_tokens_at_trim_ = stats_.padded_tokens;
        if (idle_trims_left_ > 0) {
          --idle_trims_left_;
          idle_wait *= 2;
          lock.unlock();
          ReleaseFreeMemory();
          continue;
        }
        work_changed_.wait(lock, has_work);
      }
      idle_wait = kIdleBeforeTrim;
      if (stopping_ && stats_.queued_rows == 0) return;
      const absl::Time now = Now();
      DropDeadRowsLocked(now, dropped);
      std::vector<uint64_t> ids;
      const std::vector<QueuedRequestView> views = QueueViewsLocked(/*inside_pause=*/false, ids);
      const BatchDecision decision = DecideBatch(views, now, LimitsLocked(now));
      if (decision.contended) last_contended_ = now;
      if (decision.interactive_seconds > 0) {  // the latest sighting, remembered for the window
        recent_interactive_seconds_ = decision.interactive_seconds;
        last_interactive_ = now;
      }
      if (decision.unpausable) last_unpausable_ = now;
      if (decision.run) {
        kind = decision.kind;
        time_limited = decision.time_limited;
        next_kind_ = static_cast<RowKind>((static_cast<int>(kind) + 1) % kRowKinds);
        passed_over_[static_cast<int>(kind)].After(decision.passed_over);
        isolating = decision.isolating;
        batch = TakeBatchLocked(decision, ids);
        running_priority_ = Priority::kLow;
        for (const PendingRow& row : batch)
          running_priority_ = std::max(running_priority_, row.group->request->priority());
        running_requests_ = RequestIds(batch);
      } else if (!views.empty() && dropped.empty()) {
        // Wait for the oldest row's delay to run out, or for new rows to change the decision.
        const uint64_t seen = submissions_;
        work_changed_.wait_for(lock, absl::ToChronoNanoseconds(decision.wait),
                               [this, seen]()
                                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || submissions_ != seen; });
      }
    }
    Deliver(dropped);
    if (batch.empty()) continue;
    std::vector<PendingRow*> rows;
    for (PendingRow& row : batch) rows.push_back(&row);
    std::vector<RowResult> results(batch.size());
    // A batch that pauses for the short calls keeps every thread: they run inside it, so leaving them a
    // core only slows the long work (bench/RESULTS.md).
    if (contended_threads_ > 0) {
      SetThreadIntraOpThreads(isolating && max_paused_stretches_[static_cast<int>(kind)] == 1 ? contended_threads_
                                                                                              : all_threads_);
    }
    const absl::Time started = Now();
    MarkProgress();
    paused_time_ = longest_stretch_ = absl::ZeroDuration();
    stretch_began_ = started;
    running_batch_ = &batch;
    running_batch_abandoned_ = false;
    Execute(kind, rows, results, /*inside_pause=*/false);
    running_batch_ = nullptr;
    const absl::Time ended = Now();
    longest_stretch_ = std::max(longest_stretch_, ended - stretch_began_);
    MarkProgress();  // the answers' callbacks run on this thread too: a callback that hangs is a stall
    Finish(kind, batch, results, started, ended - started - paused_time_, time_limited, /*inside_pause=*/false);
    last_progress_ns_.store(kNoBatchRunning);
  }
}

std::vector<QueuedRequestView> BatchingEngine::QueueViewsLocked(bool inside_pause, std::vector<uint64_t>& ids) const {
  // Inside a pause priority levels stay strict: nothing runs ahead of queued work of a higher level.
  Priority lowest_in_pause = running_priority_;
  for (const auto& [id, queue] : queues_) {
    if (inside_pause && queue.rows > 0) lowest_in_pause = std::max(lowest_in_pause, queue.request->priority());
  }
  std::vector<QueuedRequestView> views;
  for (const auto& [id, queue] : queues_) {
    const bool interactive = queue.request->submitted_work_rows_ <= kInteractiveRows;
    // A request with rows in the running batch waits for it: so a request alone always gets the same
    // batches, whenever its rows arrive.
    if (inside_pause && (!interactive || queue.request->priority() < lowest_in_pause ||
                         std::binary_search(running_requests_.begin(), running_requests_.end(), id))) {
      continue;
    }
    QueuedRequestView view{id, queue.request->priority(), queue.request->deadline(), queue.arrival, interactive};
    for (int k = 0; k < kRowKinds; ++k) {
      // Gradient rows cannot run inside a paused gradient batch.
      if (inside_pause && k == static_cast<int>(RowKind::kGrad)) continue;
      for (const PendingRow& row : queue.kinds[k]) view.kinds[k].lengths.push_back(row.row.batch_length());
      // Read on the executor's thread, the only one that changes a sequence's cache.
      if (k == static_cast<int>(RowKind::kDecode)) {
        for (const PendingRow& row : queue.kinds[k])
          view.kinds[k].cached.push_back(row.row.decode_state->cached_tokens());
      }
      if (!queue.kinds[k].empty()) view.kinds[k].oldest_enqueued = queue.kinds[k].front().enqueued;
    }
    views.push_back(std::move(view));
    ids.push_back(id);
  }
  return views;
}

BatchLimits BatchingEngine::LimitsLocked(absl::Time now) const {
  BatchLimits limits{.token_budget = token_budget_,
                     .max_rows = options_.max_batch_rows,
                     .max_queue_delay = stopping_ ? absl::ZeroDuration() : options_.max_queue_delay,
                     .next_kind = next_kind_,
                     .max_padding_waste = options_.max_padding_waste,
                     .max_batch_time = options_.max_batch_time,
                     .max_uncontended_batch_time = options_.max_uncontended_batch_time,
                     .contended_recently = now - last_contended_ < options_.contention_memory,
                     .recent_unpausable = now - last_unpausable_ < options_.contention_memory};
  if (now - last_interactive_ < options_.contention_memory)
    limits.recent_interactive_seconds = recent_interactive_seconds_;
  for (int k = 0; k < kRowKinds; ++k) {
    limits.costs[k] = costs_.cost(static_cast<RowKind>(k));
    limits.paused_stretches[k] = paused_stretches_[k];
    limits.lead_requests[k] = passed_over_[k].lead();
  }
  return limits;
}

bool BatchingEngine::NoRowIsWanted(const std::vector<PendingRow>& batch, absl::Time now) {
  return std::all_of(batch.begin(), batch.end(), [now](const PendingRow& row) {
    const Request& request = *row.group->request;
    return request.cancelled() || now > request.deadline();
  });
}

void BatchingEngine::StopIfRunningBatchAbandoned() {
  if (running_batch_ == nullptr || running_short_work_ || !NoRowIsWanted(*running_batch_, Now())) return;
  running_batch_abandoned_ = true;
  // Unwinds the forward or backward (through autograd when thrown from a gradient hook) to Execute; its
  // activations are freed on the way.
  throw std::runtime_error("batch abandoned: every request in it was cancelled or expired");
}

void BatchingEngine::RunShortWorkWhilePaused() {
  StopIfRunningBatchAbandoned();
  const absl::Time paused = Now();
  longest_stretch_ = std::max(longest_stretch_, paused - stretch_began_);
  MarkProgress();
  RunShortWork(paused);
  const absl::Time resumed = Now();
  MarkProgress();
  paused_time_ += resumed - paused;
  stretch_began_ = resumed;
}

void BatchingEngine::RunShortWork(absl::Time now) {
  std::vector<PendingRow> batch;
  BatchDecision decision;
  bool few_threads = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stats_.queued_rows == 0) return;
    // Dead rows are left to the next decision between batches: dropping a request's queue here could
    // drop the running request's, and its next rows would then queue as a later arrival.
    std::vector<uint64_t> ids;
    const std::vector<QueuedRequestView> views = QueueViewsLocked(/*inside_pause=*/true, ids);
    if (views.empty()) return;
    BatchLimits limits = LimitsLocked(now);
    limits.max_queue_delay = absl::ZeroDuration();  // the device is free only for this pause
    limits.next_kind = next_kind_in_pause_;         // score and decode take turns here too
    decision = DecideBatch(views, now, limits);
    if (!decision.run) return;
    // Short calls waited beside the long batch: contention, which the batches after it respect.
    last_contended_ = now;
    if (decision.interactive_seconds > 0) {
      recent_interactive_seconds_ = decision.interactive_seconds;
      last_interactive_ = now;
    }
    next_kind_in_pause_ = static_cast<RowKind>((static_cast<int>(decision.kind) + 1) % kRowKinds);
    batch = TakeBatchLocked(decision, ids);
    paused_for_requests_ = RequestIds(batch);
    // A short batch gains little from more threads (their handoffs cost as much as they save), and the
    // threads that receive and answer its calls get the core it leaves: bench/RESULTS.md, 2026-12-05. A
    // longer one (a larger model's) keeps them all: on one thread fewer it would hold the long batch longer.
    // Measured for one thread fewer only: a count set lower could stretch a pause many times over.
    if (contended_threads_ > 0 && contended_threads_ == all_threads_ - 1) {
      int64_t longest = 0;
      for (const PendingRow& row : batch) longest = std::max(longest, row.row.batch_length());
      const BatchCost cost = costs_.cost(decision.kind);
      if (cost.known) {
        // The cost learned mixes both thread counts: a kind leaves one thread fewer only well above the
        // bound it entered it under, so it does not flip between them batch after batch.
        const double seconds = cost.Seconds(static_cast<int64_t>(batch.size()), longest);
        bool& few = few_threads_in_pause_[static_cast<int>(decision.kind)];
        few = seconds < absl::ToDoubleSeconds(few ? kEveryThreadAbove : kFewThreadsBelow);
        few_threads = few;
      }
    }
  }
  std::vector<PendingRow*> rows;
  for (PendingRow& row : batch) rows.push_back(&row);
  std::vector<RowResult> results(batch.size());
  const absl::Time started = Now();
  // The paused batch gets its threads back however this one ends.
  const int paused_threads = at::get_num_threads();
  if (few_threads) SetThreadIntraOpThreads(contended_threads_);
  absl::Cleanup paused_batch_threads = [few_threads, paused_threads] {
    if (few_threads) SetThreadIntraOpThreads(paused_threads);
  };
  running_short_work_ = true;
  absl::Cleanup short_work_ended = [this] { running_short_work_ = false; };
  Execute(decision.kind, rows, results, /*inside_pause=*/true);
  std::move(short_work_ended).Invoke();
  std::move(paused_batch_threads).Invoke();
  const absl::Time ended = Now();
  MarkProgress();  // as between batches: its answers are progress
  Finish(decision.kind, batch, results, started, ended - started, decision.time_limited, /*inside_pause=*/true);
  std::lock_guard<std::mutex> lock(mu_);
  paused_for_requests_.clear();
}

namespace {

// The process's resident bytes (/proc/self/statm), 0 when unknown.
int64_t ResidentBytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "re");
  if (statm == nullptr) return 0;
  long long size = 0, resident = 0;
  const bool read = std::fscanf(statm, "%lld %lld", &size, &resident) == 2;
  std::fclose(statm);
  return read ? resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace

void BatchingEngine::ReleaseFreeMemory() {
#ifdef __GLIBC__
  // The allocator keeps freed heap pages (its mmap threshold grows with the large tensors a burst
  // frees), so an idle server would stay at its peak; hand them back to the system. Not after every
  // short call: the pages trimmed are faulted in again by the next.
  const int64_t resident = ResidentBytes(), free = static_cast<int64_t>(mallinfo2().fordblks);
  if (resident - resident_after_trim_ < kBytesWorthTrimming && free - free_after_trim_ < kBytesWorthTrimming) {
    // Either may have fallen since (memory used again, then freed without growing): follow it down.
    resident_after_trim_ = std::min(resident_after_trim_, resident);
    free_after_trim_ = std::min(free_after_trim_, free);
    return;
  }
  malloc_trim(0);
  resident_after_trim_ = ResidentBytes();
  free_after_trim_ = static_cast<int64_t>(mallinfo2().fordblks);
#endif
}

// A budget shrunk by one batch's out-of-memory (another request's long rows, a transient peak) would
// otherwise bound every later batch until a restart: after a run of batches that fit it doubles, up to
// the configured budget; a batch that still does not fit shrinks it again.
void BatchingEngine::RegrowTokenBudget() {
  std::lock_guard<std::mutex> lock(mu_);
  if (token_budget_ >= options_.max_batch_tokens || ++batches_since_shrink_ < kBatchesBeforeBudgetRegrows) return;
  token_budget_ = token_budget_ > options_.max_batch_tokens / 2 ? options_.max_batch_tokens : 2 * token_budget_;
  batches_since_shrink_ = 0;
}

void BatchingEngine::Execute(RowKind kind, std::vector<PendingRow*> rows, std::vector<RowResult>& results,
                             bool inside_pause) {
  std::vector<const Row*> plain;
  int64_t longest = 0;
  for (PendingRow* row : rows) {
    plain.push_back(&row->row);
    longest = std::max(longest, row->row.batch_length());
  }
  // Finish answers an abandoned batch's rows for their requests' reasons (cancelled or expired); no
  // part of it runs again.
  auto answer_abandoned = [&results] {
    for (RowResult& result : results) result = RowResult{.status = absl::CancelledError("batch abandoned")};
  };
  if (running_batch_abandoned_) return answer_abandoned();
  std::vector<RowResult> local(rows.size());
  absl::Status status;
  MarkProgress();  // a retried half is progress too
  try {
    status = executor_->Run(kind, plain, local);
  } catch (const std::exception& e) {
    status = StatusFromException(e, "batch");
  }
  if (running_batch_abandoned_) return answer_abandoned();
  if (status.ok()) {
    results = std::move(local);
    if (!inside_pause) RegrowTokenBudget();
    return;
  }
  if (rows.size() == 1) {
    results[0].status = status;
    return;
  }
  // Out of memory beside a paused batch's activations says little about what a batch alone can hold.
  if (status.code() == absl::StatusCode::kResourceExhausted && !inside_pause) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t padded = static_cast<int64_t>(rows.size()) * longest;
    token_budget_ = std::max(options_.min_batch_tokens, std::min(token_budget_, padded / 2));
    batches_since_shrink_ = 0;
  }
  // Halve and retry, so only rows that fail alone fail.
  const size_t half = rows.size() / 2;
  std::vector<RowResult> first(half), second(rows.size() - half);
  Execute(kind, std::vector<PendingRow*>(rows.begin(), rows.begin() + half), first, inside_pause);
  Execute(kind, std::vector<PendingRow*>(rows.begin() + half, rows.end()), second, inside_pause);
  for (size_t i = 0; i < half; ++i) results[i] = std::move(first[i]);
  for (size_t i = half; i < rows.size(); ++i) results[i] = std::move(second[i - half]);
}

void BatchingEngine::Finish(RowKind kind, std::vector<PendingRow>& batch, std::vector<RowResult>& results,
                            absl::Time started, absl::Duration device_time, bool time_limited, bool inside_pause) {
  BatchRecord record{.kind = kind,
                     .rows = static_cast<int64_t>(batch.size()),
                     .device_time = device_time,
                     .time_limited = time_limited,
                     .inside_pause = inside_pause};
  int64_t longest = 0;
  for (const PendingRow& row : batch) {
    record.tokens += row.row.length();
    longest = std::max(longest, row.row.batch_length());
    record.max_queue_wait = std::max(record.max_queue_wait, started - row.enqueued);
  }
  record.padded_tokens = longest * record.rows;
  const absl::Time now = Now();
  std::vector<Answer> answers;
  // Rows of calls that ended meanwhile are abandoned, not failed: counted as failed, every client's cancel and
  // deadline showed as "rows that failed on the device".
  int64_t failed = 0, abandoned = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Request& request = *batch[i].group->request;
    if (request.cancelled()) {
      results[i] = RowResult{.status = absl::CancelledError("request was cancelled")};
      ++abandoned;
    } else if (now > request.deadline()) {
      results[i] = RowResult{.status = absl::DeadlineExceededError("request deadline passed while running")};
      ++abandoned;
    } else if (!results[i].status.ok()) {
      ++failed;
    }
    {
      std::lock_guard<std::mutex> lock(request.mu_);
      request.stats_.rows_done += 1;
      request.stats_.queue_time += started - batch[i].enqueued;
      request.stats_.device_time += device_time * (static_cast<double>(batch[i].row.length()) / record.tokens);
    }
    answers.push_back({batch[i].group, batch[i].index, std::move(results[i])});
  }
  record.failed = failed + abandoned > 0;
  std::function<void(const BatchRecord&)> observer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.batches += 1;
    stats_.rows += record.rows;
    stats_.tokens += record.tokens;
    stats_.padded_tokens += record.padded_tokens;
    stats_.failed_rows += failed;
    stats_.abandoned_rows += abandoned;
    stats_.time_limited_batches += time_limited ? 1 : 0;
    stats_.batches_inside_pauses += inside_pause ? 1 : 0;
    stats_.device_time += device_time;
    // A failed batch's time (split retries, errors, a batch stopped for its cancelled calls) says nothing about
    // the kind's cost.
    if (!record.failed) costs_.Observe(kind, record.rows, longest, device_time);
    if (!record.failed && !inside_pause) ObserveStretchesLocked(kind, device_time);
    observer = observer_;
  }
  // Observed before the answers go out, so whoever learns a result also finds its batch counted.
  if (observer) observer(record);
  Deliver(answers);
}

void BatchingEngine::ObserveStretchesLocked(RowKind kind, absl::Duration device_time) {
  const int k = static_cast<int>(kind);
  if (max_paused_stretches_[k] == 1 || longest_stretch_ <= absl::ZeroDuration()) return;
  // The longest stretch, not the count of pauses, is what a short call may wait. A batch that paused
  // less (rows joining at a later layer) lowers the estimate at once; it grows back slowly.
  const double seen =
      std::clamp(absl::FDivDuration(device_time, longest_stretch_), 1.0, static_cast<double>(max_paused_stretches_[k]));
  double& estimate = paused_stretches_[k];
  estimate = seen < estimate ? seen : estimate + kStretchesRecovery * (seen - estimate);
}

std::vector<uint64_t> BatchingEngine::RequestIds(const std::vector<PendingRow>& batch) {
  std::vector<uint64_t> ids;
  for (const PendingRow& row : batch) ids.push_back(row.group->request->id());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

void BatchingEngine::Deliver(std::vector<Answer>& answers) {
  for (Answer& a : answers) a.group->done(a.index, std::move(a.result));
  answers.clear();
}

absl::StatusOr<std::unique_ptr<BatchingEngine::Reservation>> BatchingEngine::ReserveKvCache(int64_t tokens,
                                                                                            absl::string_view what) {
  int64_t bytes = 0;
  if (__builtin_mul_overflow(tokens, executor_->KvCacheBytesPerToken(), &bytes)) {
    bytes = std::numeric_limits<int64_t>::max();
  }
  if (bytes > options_.max_kv_cache_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the KV cache of ", tokens, " tokens needs ", Mebibytes(bytes),
                     ", more than this model's generations may hold together, ", Mebibytes(options_.max_kv_cache_bytes),
                     " (engine.max_kv_cache_bytes): it cannot run even on an idle server"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return ShuttingDown();
  if (stats_.kv_cache_bytes + bytes > options_.max_kv_cache_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("generations' KV caches are full: ", Mebibytes(stats_.kv_cache_bytes), " held and this one needs ",
                     Mebibytes(bytes), " more; the limit is ", Mebibytes(options_.max_kv_cache_bytes),
                     " (engine.max_kv_cache_bytes)"));
  }
  stats_.kv_cache_bytes += bytes;
  return std::make_unique<Reservation>(this, bytes);
}

int64_t BatchingEngine::max_kv_cache_tokens() const {
  return options_.max_kv_cache_bytes / std::max<int64_t>(1, executor_->KvCacheBytesPerToken());
}

// Never under mu_: every callback that may end a generation (and drop its reservation) is delivered after the
// engine's lock is released.
BatchingEngine::Reservation::~Reservation() {
  std::lock_guard<std::mutex> lock(engine_->mu_);
  engine_->stats_.kv_cache_bytes -= bytes_;
}

EngineStats BatchingEngine::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats stats = stats_;
  stats.token_budget = token_budget_;
  stats.uptime = Now() - started_;
  return stats;
}

absl::Duration BatchingEngine::TimeWithoutProgress() const {
  const int64_t last = last_progress_ns_.load();
  if (last == kNoBatchRunning) return absl::ZeroDuration();
  return std::max(absl::ZeroDuration(), absl::Nanoseconds(absl::ToUnixNanos(Now()) - last));
}

void BatchingEngine::SetBatchObserver(std::function<void(const BatchRecord&)> observer) {
  std::lock_guard<std::mutex> lock(mu_);
  observer_ = std::move(observer);
}

void BatchingEngine::RunAside(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(aside_mu_);
    if (!aside_stopping_) {
      aside_tasks_.push_back(std::move(task));
      if (!aside_thread_.joinable()) {
        aside_thread_ = std::thread([this] {
          std::unique_lock<std::mutex> lock(aside_mu_);
          while (true) {
            aside_changed_.wait(lock, [this] { return aside_stopping_ || !aside_tasks_.empty(); });
            if (aside_tasks_.empty()) return;  // stopping, and nothing left
            std::function<void()> next = std::move(aside_tasks_.front());
            aside_tasks_.pop_front();
            lock.unlock();
            next();
            lock.lock();
          }
        });
      }
      aside_changed_.notify_one();
      return;
    }
  }
  task();
}

void BatchingEngine::Shutdown() {
  std::lock_guard<std::mutex> shutdown_lock(shutdown_mu_);
  stopping_flag_ = true;
  std::vector<Answer> answers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    for (auto& [id, queue] : queues_) {
      for (auto& kind : queue.kinds) {
        for (PendingRow& row : kind) {
          answers.push_back({row.group, row.index, RowResult{.status = ShuttingDown()}});
        }
      }
    }
    queues_.clear();
    stats_.queued_rows = 0;
    stats_.queued_tokens = 0;
    stats_.queued_bytes = 0;
  }
  work_changed_.notify_all();
  Deliver(answers);
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(aside_mu_);
    aside_stopping_ = true;
  }
  aside_changed_.notify_all();
  // From an aside task itself (no caller does so) joining would throw: its thread ends once the task returns.
  if (aside_thread_.joinable() && aside_thread_.get_id() != std::this_thread::get_id()) aside_thread_.join();
}

}  // namespace attribution::engine
