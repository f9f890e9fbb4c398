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

// The curves' points: the share of features (most attributed first) deleted or inserted.
inline constexpr double kFaithfulnessPercents[] = {1, 5, 10, 20, 50};

// Score rows one faithfulness measurement submits.
int64_t FaithfulnessRowCount();

// Feature indices by attribution, highest first, NaN last; ties keep prompt order (the ranking the curves use).
std::vector<int64_t> RankFeatures(const std::vector<double>& attribution);

// Measures `attribution` (one value per feature of `request`: its prompt, target, features and
// baselines) with score rows submitted under `handle`; `done` is called once, on the executor thread
// (or at once when submission fails), `row_answered` (may be empty) after each row. The request must be
// valid and have a target.
void MeasureFaithfulness(BatchingEngine& engine, const std::shared_ptr<Request>& handle,
                         const AttributionRequest& request, const std::vector<double>& attribution,
                         std::function<void(absl::StatusOr<Faithfulness>)> done,
                         std::function<void()> row_answered = nullptr);

}  // namespace attribution::engine
