// SPDX-License-Identifier: Apache-2.0
// Runs attribution requests as row plans on the shared batching engine: a method turns the request
// into rounds of score / grad rows described by token ids, submits each round in one call, and
// reduces their results. It touches no tensor of the model: the engine's executor does all device work.
//
//   Attributor attributor(model, engine.get(), {});
//   attributor.Attribute(engine->NewRequest(), request, [](absl::StatusOr<AttributionResult> r) { ... });
#pragma once

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/attribution/attribution_request.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {

// Thread-safe: holds only shared read-only state.
class Attributor {
 public:
  Attributor(std::shared_ptr<const CausalLM> model, BatchingEngine* engine, AttributionLimits limits = {});

  using Done = std::function<void(absl::StatusOr<AttributionResult>)>;
  // Told the plan's rows answered so far and their total, on the executor thread, after each row
  // (the total is known once the target is; generation steps are not counted).
  using Progress = std::function<void(int64_t rows_done, int64_t rows_total)>;
  // Calls `done` exactly once: at once for an invalid request, else on the engine's executor thread.
  // Cancel through engine->Cancel(*handle).
  void Attribute(std::shared_ptr<Request> handle, AttributionRequest request, Done done,
                 Progress progress = nullptr) const;

  // Blocks until the result is ready.
  absl::StatusOr<AttributionResult> AttributeAndWait(const AttributionRequest& request) const;

  const AttributionLimits& limits() const { return limits_; }

 private:
  void AttributeTarget(std::shared_ptr<Request> handle, AttributionRequest request, Done done, Progress progress) const;

  std::shared_ptr<const CausalLM> model_;
  BatchingEngine* engine_;
  AttributionLimits limits_;
};

}  // namespace attribution::engine
