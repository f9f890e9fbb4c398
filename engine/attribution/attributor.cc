// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/attributor.h"

#include <c10/core/InferenceMode.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "engine/attribution/faithfulness.h"
#include "engine/attribution/row_plan.h"
#include "engine/attribution/submit_rows.h"
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
  auto row_answered = [progress] { progress->RowAnswered(); };
  auto failed = [done](const absl::Status& status) { done(status); };
  // The answer, with the request's queue and device time once all its rows (faithfulness's too) ran.
  auto finish = [handle, done](AttributionResult result) {
    const Request::Stats stats = handle->stats();
    result.queue_time = stats.queue_time;
    result.device_time = stats.device_time;
    done(std::move(result));
  };
  auto run_main = [=](std::vector<RowResult>& prepared) {
    shared_plan->Prepared(prepared);
    SubmitRows(*engine, handle, shared_plan->TakeRows(), row_answered, [=](std::vector<RowResult>& results) {
      absl::StatusOr<AttributionResult> reduced;
      try {
        reduced = shared_plan->Reduce(results);
      } catch (const std::exception& e) {
        reduced = StatusFromException(e, "reducing attribution rows");
      }
      if (!reduced.ok()) return done(reduced.status());
      if (!measured) return finish(std::move(*reduced));
      auto attribution = std::make_shared<AttributionResult>(std::move(*reduced));
      MeasureFaithfulness(*engine, handle, *measured, attribution->sequence,
                          [attribution, finish, done](absl::StatusOr<Faithfulness> faithfulness) {
                            if (!faithfulness.ok()) return done(faithfulness.status());
                            attribution->faithfulness = std::move(*faithfulness);
                            attribution->rows += FaithfulnessRowCount();
                            attribution->forward_passes += FaithfulnessRowCount();
                            finish(std::move(*attribution));
                          },
                          row_answered);
    }, failed);
  };
  std::vector<Row> prepare = shared_plan->TakePrepareRows();
  if (prepare.empty()) {
    std::vector<RowResult> none;
    return run_main(none);
  }
  SubmitRows(*engine_, handle, std::move(prepare), row_answered, run_main, failed);
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
