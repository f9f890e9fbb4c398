// SPDX-License-Identifier: Apache-2.0
// Submitting a group of rows and continuing once every one is answered: what attribution plans and
// faithfulness measurements do with the batching engine. Private to engine/attribution.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {

// Submits `rows` as one group under `handle`; `then` receives every result (in row order) once all are
// answered, or `failed` the first failed row's status (or the submission's error). `row_answered`
// (may be empty) runs after each row. Callbacks run where the engine answers the rows (BatchingEngine::
// Submit: its executor thread, or the thread that cancelled or refused them), except `failed` for a
// refused submission, which runs at once.
void SubmitRows(BatchingEngine& engine, const std::shared_ptr<Request>& handle, std::vector<Row> rows,
                std::function<void()> row_answered, std::function<void(std::vector<RowResult>&)> then,
                std::function<void(const absl::Status&)> failed);

}  // namespace attribution::engine
