// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/attributor.h"

#include <c10/core/InferenceMode.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "engine/attribution/faithfulness.h"
#include "engine/attribution/row_plan.h"
#include "engine/model/torch_errors.h"
#include "engine/scheduler/engine_generation.h"

namespace attribution::engine {

Attributor::Attributor(std::shared_ptr<const CausalLM> model, BatchingEngine* engine, AttributionLimits limits)
    : model_(std::move(model)), engine_(engine), limits_(limits) {}

void Attributor::Attribute(std::shared_ptr<Request> handle, AttributionRequest request, Done done,
                           Progress progress) const {
  if (absl::Status s = ValidateAttributionRequest(request, model_->config(), limits_); !s.ok()) return done(s);
  if (!request.target_ids.empty()) {
    return AttributeTarget(std::move(handle), std::move(request), std::move(done), std::move(progress));
  }
  // No target: generate it first (greedy by default, as Captum), then attribute it.
  const Attributor* self = this;
  auto shared_request = std::make_shared<AttributionRequest>(std::move(request));
  GenerateAsync(*engine_, handle, model_->config(), shared_request->prompt_ids, shared_request->generation,
                [self, handle, shared_request, done, progress](absl::StatusOr<Generation> generation) {
                  if (!generation.ok()) return done(generation.status());
                  shared_request->target_ids = generation->tokens;
                  self->AttributeTarget(handle, std::move(*shared_request), done, progress);
                });
}

namespace {

// Counts a plan's answered rows for progress reports.
struct RowProgress {
  Attributor::Progress report;
  int64_t total = 0;
  std::atomic<int64_t> done{0};
  void RowAnswered() {
    const int64_t now = done.fetch_add(1) + 1;
    if (report) report(now, total);
  }
};

// Submits `rows` as one group and calls `then` with all their results once every row is answered
// (or `done` with the first failure).
void SubmitAll(BatchingEngine& engine, const std::shared_ptr<Request>& handle, std::vector<Row> rows,
               std::shared_ptr<RowProgress> progress, std::function<void(std::vector<RowResult>&)> then,
               const Attributor::Done& done) {
  const size_t count = rows.size();
  auto results = std::make_shared<std::vector<RowResult>>(count);
  auto remaining = std::make_shared<std::atomic<size_t>>(count);
  absl::Status submitted = engine.Submit(handle, std::move(rows), [=](size_t index, RowResult result) {
    (*results)[index] = std::move(result);
    progress->RowAnswered();
    if (remaining->fetch_sub(1) != 1) return;
    // The last row: every result is in place.
    for (const RowResult& r : *results) {
      if (!r.status.ok()) return done(r.status);
    }
    then(*results);
  });
  if (!submitted.ok()) done(submitted);
}

}  // namespace

void Attributor::AttributeTarget(std::shared_ptr<Request> handle, AttributionRequest request, Done done,
                                 Progress report) const {
  // Faithfulness rows need the request after the plan took it.
  std::shared_ptr<const AttributionRequest> measured;
  if (request.want_faithfulness) measured = std::make_shared<AttributionRequest>(request);
  absl::StatusOr<std::unique_ptr<RowPlan>> plan;
  try {
    c10::InferenceMode inference;
    plan = RowPlan::Create(*model_, std::move(request));
  } catch (const std::exception& e) {
    return done(StatusFromException(e, "building the attribution plan"));
  }
  if (!plan.ok()) return done(plan.status());
  std::shared_ptr<RowPlan> shared_plan = std::move(*plan);
  auto progress = std::make_shared<RowProgress>();
  progress->report = std::move(report);
  progress->total = shared_plan->num_rows() + (measured ? FaithfulnessRowCount() : 0);
  BatchingEngine* engine = engine_;
  auto run_main = [engine, handle, shared_plan, progress, measured, done](std::vector<RowResult>& prepared) {
    shared_plan->Prepared(prepared);
    SubmitAll(*engine, handle, shared_plan->TakeRows(), progress,
              [engine, handle, shared_plan, progress, measured, done](std::vector<RowResult>& results) {
      absl::StatusOr<AttributionResult> reduced;
      try {
        reduced = shared_plan->Reduce(results);
      } catch (const std::exception& e) {
        reduced = StatusFromException(e, "reducing attribution rows");
      }
      if (reduced.ok()) {
        const Request::Stats stats = handle->stats();
        reduced->queue_time = stats.queue_time;
        reduced->device_time = stats.device_time;
      }
      if (!reduced.ok() || !measured) return done(std::move(reduced));
      auto attribution = std::make_shared<AttributionResult>(std::move(*reduced));
      MeasureFaithfulness(*engine, handle, *measured, attribution->sequence,
                          [handle, progress, attribution, done](absl::StatusOr<Faithfulness> faithfulness) {
                            if (!faithfulness.ok()) return done(faithfulness.status());
                            progress->done += FaithfulnessRowCount();
                            if (progress->report) progress->report(progress->done, progress->total);
                            attribution->faithfulness = std::move(*faithfulness);
                            attribution->rows += FaithfulnessRowCount();
                            attribution->forward_passes += FaithfulnessRowCount();
                            const Request::Stats stats = handle->stats();
                            attribution->queue_time = stats.queue_time;
                            attribution->device_time = stats.device_time;
                            done(std::move(*attribution));
                          });
    }, done);
  };
  std::vector<Row> prepare = shared_plan->TakePrepareRows();
  if (prepare.empty()) {
    std::vector<RowResult> none;
    return run_main(none);
  }
  SubmitAll(*engine_, handle, std::move(prepare), progress, run_main, done);
}

absl::StatusOr<AttributionResult> Attributor::AttributeAndWait(const AttributionRequest& request) const {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<AttributionResult>> result;
  Attribute(engine_->NewRequest(request.priority, request.deadline), request,
            [&](absl::StatusOr<AttributionResult> r) {
              std::lock_guard<std::mutex> lock(mu);
              result = std::move(r);
              cv.notify_all();
            });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  return std::move(*result);
}

}  // namespace attribution::engine
