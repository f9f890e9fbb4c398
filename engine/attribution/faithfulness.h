// SPDX-License-Identifier: Apache-2.0
// Measures how faithful an explanation is to the model (see Faithfulness in attribution_request.h):
// every curve point is one score row through the batching engine.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/attribution/attribution_request.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {


// Score rows one faithfulness measurement submits.
int64_t FaithfulnessRowCount();

// Measures `attribution` (one value per feature of `request`: its prompt, target, features and
// baselines) with score rows submitted under `handle`; `done` is called once, on the executor thread
// (or at once when submission fails). The request must be valid and have a target.
void MeasureFaithfulness(BatchingEngine& engine, const std::shared_ptr<Request>& handle,
                         const AttributionRequest& request, const std::vector<double>& attribution,
                         std::function<void(absl::StatusOr<Faithfulness>)> done);

}  // namespace attribution::engine
