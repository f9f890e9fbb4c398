// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/attributor.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "engine/attribution/faithfulness.h"
#include "engine/attribution/row_plan.h"
#include "engine/attribution/submit_rows.h"
#include "engine/model/torch_errors.h"
#include "engine/scheduler/engine_generation.h"

namespace attribution::engine {

Attributor::Attributor(std::shared_ptr<const CausalLM> model, BatchingEngine* engine, AttributionLimits limits)
    : model_(std::move(model)), engine_(engine), limits_(limits) {
  if (engine_ != nullptr) {
    limits_.max_rows = engine_->max_rows_per_request();
    limits_.max_queued_tokens = engine_->max_tokens_per_request();
  }
}

void Attributor::Attribute(std::shared_ptr<Request> handle, AttributionRequest request, Done done,
                           Progress progress) const {
  if (absl::Status s = ValidateAttributionRequest(request, model_->config(), limits_); !s.ok()) return done(s);
  if (!request.target_ids.empty()) {
    return AttributeTarget(std::move(handle), std::move(request), std::move(done), std::move(progress));
  }
  // No target: generate it first (greedy by default, as Captum), then attribute it. The generation's rows (one
  // per token, a stop token included: a prefill, then a decode step per token but the last) count in the
  // answer's stats, as their device time does, and in the progress: until the target is known, of
  // max_new_tokens; then the plan's after them.
  const Attributor* self = this;
  auto shared_request = std::make_shared<AttributionRequest>(std::move(request));
  auto generated = std::make_shared<int64_t>(0);
  TokenCallback on_token = nullptr;
  if (progress) {
    on_token = [progress, generated, most = shared_request->generation.max_new_tokens](int64_t, float) {
      progress(++*generated, most);
    };
  }
  GenerateAsync(
      *engine_, handle, model_->config(), shared_request->prompt_ids, shared_request->generation,
      [self, handle, shared_request, done, progress](absl::StatusOr<Generation> generation) {
        if (!generation.ok()) return done(generation.status());
        shared_request->target_ids = generation->tokens;
        const auto rows = static_cast<int64_t>(generation->tokens.size());
        Done with_generation = [done, rows](absl::StatusOr<AttributionResult> result) {
          if (result.ok()) {
            result->rows += rows;
            result->forward_passes += rows;
          }
          done(std::move(result));
        };
        Progress after_generation = nullptr;
        if (progress) {
          after_generation = [progress, rows](int64_t rows_done, int64_t rows_total) {
            progress(rows + rows_done, rows + rows_total);
          };
        }
        self->AttributeTarget(handle, std::move(*shared_request), std::move(with_generation),
                              std::move(after_generation));
      },
      std::move(on_token));
}

namespace {

// Counts a plan's answered rows for progress reports.
struct RowProgress {
  Attributor::Progress report;
  int64_t extra = 0;  // rows after the plan's (faithfulness); set before any row is submitted
  std::atomic<int64_t> done{0};
  std::shared_ptr<RowPlan> plan;
  void RowAnswered() {
    const int64_t now = done.fetch_add(1) + 1;
    // Rows of one round are all answered before the plan's next round begins (by the executor, or where
    // BatchingEngine::Cancel or a stall's refusal answers them), so the plan does not change meanwhile.
    if (report) report(now, plan->expected_rows() + extra);
  }
};

// NaN in the scored quantity or in an attribution makes the whole answer meaningless (and ranks the features
// for faithfulness in index order, which scores as a plausible explanation).
absl::Status CheckNumbers(const AttributionResult& result) {
  if (std::isnan(result.objective)) return NotANumberError("the attributed quantity (objective)");
  bool nan_attribution = AnyNaN(result.sequence) || (result.convergence_delta && std::isnan(*result.convergence_delta));
  for (const std::vector<double>& row : result.per_token) nan_attribution = nan_attribution || AnyNaN(row);
  if (nan_attribution) {
    return NotANumberError("the attributions (the scores of the baseline or of a perturbed or interpolated input)");
  }
  return absl::OkStatus();
}

// Runs a plan's rounds one after another on the engine, then its faithfulness rows when asked.
class PlanRun : public std::enable_shared_from_this<PlanRun> {
 public:
  PlanRun(BatchingEngine* engine, std::shared_ptr<Request> handle, std::shared_ptr<RowPlan> plan,
          std::shared_ptr<const AttributionRequest> measured, Attributor::Done done, Attributor::Progress report)
      : engine_(engine),
        handle_(std::move(handle)),
        plan_(std::move(plan)),
        measured_(std::move(measured)),
        done_(std::move(done)),
        progress_(std::make_shared<RowProgress>()) {
    progress_->report = std::move(report);
    progress_->plan = plan_;
    if (measured_) progress_->extra = FaithfulnessRowCount();
  }

  void NextRound() {
    std::vector<Row> rows = plan_->TakeRows();
    if (rows.empty()) {
      // LIME's fits took seconds per target token on the executor thread: every call to the model waited, the
      // fits ran on past the call's deadline, and a long one read as a stall (NOT_SERVING, a pod restart).
      if (plan_->long_result()) return engine_->RunAside([self = shared_from_this()] { self->Finish(); });
      return Finish();
    }
    auto self = shared_from_this();
    SubmitRows(
        *engine_, handle_, std::move(rows), [progress = progress_] { progress->RowAnswered(); },
        [self](std::vector<RowResult>& results) {
          absl::Status absorbed;
          try {
            absorbed = self->plan_->Absorb(results);
          } catch (const std::exception& e) {
            absorbed = StatusFromException(e, "reducing attribution rows");
          }
          if (!absorbed.ok()) return self->done_(absorbed);
          self->NextRound();
        },
        [self](const absl::Status& status) { self->done_(status); });
  }

 private:
  void Finish() {
    absl::StatusOr<AttributionResult> result;
    try {
      result = plan_->Result();
    } catch (const std::exception& e) {
      result = StatusFromException(e, "reducing attribution rows");
    }
    if (!result.ok()) return done_(result.status());
    // A long reduction (LIME's fits) stops early once nobody waits: its numbers are unfinished, never an answer.
    if (absl::Status abandoned = engine_->Abandoned(*handle_); !abandoned.ok()) return done_(abandoned);
    if (absl::Status numbers = CheckNumbers(*result); !numbers.ok()) return done_(numbers);
    if (!measured_) return Answer(std::move(*result));
    auto attribution = std::make_shared<AttributionResult>(std::move(*result));
    auto self = shared_from_this();
    MeasureFaithfulness(
        *engine_, handle_, *measured_, attribution->sequence,
        [self, attribution](absl::StatusOr<Faithfulness> faithfulness) {
          if (!faithfulness.ok()) return self->done_(faithfulness.status());
          attribution->faithfulness = std::move(*faithfulness);
          attribution->rows += FaithfulnessRowCount();
          attribution->forward_passes += FaithfulnessRowCount();
          self->Answer(std::move(*attribution));
        },
        [progress = progress_] { progress->RowAnswered(); });
  }

  // The answer, with the request's queue and device time once all its rows ran.
  void Answer(AttributionResult result) {
    const Request::Stats stats = handle_->stats();
    result.queue_time = stats.queue_time;
    result.device_time = stats.device_time;
    done_(std::move(result));
  }

  BatchingEngine* const engine_;
  const std::shared_ptr<Request> handle_;
  const std::shared_ptr<RowPlan> plan_;
  const std::shared_ptr<const AttributionRequest> measured_;  // set when faithfulness is asked
  const Attributor::Done done_;
  const std::shared_ptr<RowProgress> progress_;
};

}  // namespace

void Attributor::AttributeTarget(std::shared_ptr<Request> handle, AttributionRequest request, Done done,
                                 Progress report) const {
  // Faithfulness rows need the request after the plan took it.
  std::shared_ptr<const AttributionRequest> measured;
  if (request.want_faithfulness) measured = std::make_shared<AttributionRequest>(request);
  request.abandoned = [handle, engine = engine_] { return !engine->Abandoned(*handle).ok(); };
  absl::StatusOr<std::unique_ptr<RowPlan>> plan;
  try {  // plans draw seeded samples with LibTorch's CPU generator, which may throw
    plan = RowPlan::Create(model_->config(), std::move(request));
  } catch (const std::exception& e) {
    return done(StatusFromException(e, "building the attribution plan"));
  }
  if (!plan.ok()) return done(plan.status());
  auto run = std::make_shared<PlanRun>(engine_, std::move(handle), std::move(*plan), std::move(measured),
                                       std::move(done), std::move(report));
  run->NextRound();
}

absl::StatusOr<AttributionResult> Attributor::AttributeAndWait(const AttributionRequest& request) const {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<AttributionResult>> result;
  Attribute(engine_->NewRequest(request.priority, request.deadline), request, [&](absl::StatusOr<AttributionResult> r) {
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(r);
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  return std::move(*result);
}

}  // namespace attribution::engine
