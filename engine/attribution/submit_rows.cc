// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/submit_rows.h"

#include <atomic>

namespace attribution::engine {

void SubmitRows(BatchingEngine& engine, const std::shared_ptr<Request>& handle, std::vector<Row> rows,
                std::function<void()> row_answered, std::function<void(std::vector<RowResult>&)> then,
                std::function<void(const absl::Status&)> failed) {
  const size_t count = rows.size();
  auto results = std::make_shared<std::vector<RowResult>>(count);
  auto remaining = std::make_shared<std::atomic<size_t>>(count);
  absl::Status submitted = engine.Submit(handle, std::move(rows), [=](size_t index, RowResult result) {
    (*results)[index] = std::move(result);
    if (row_answered) row_answered();
    if (remaining->fetch_sub(1) != 1) return;
    // The last row: every result is in place.
    for (const RowResult& r : *results) {
      if (!r.status.ok()) return failed(r.status);
    }
    then(*results);
  });
  if (!submitted.ok()) failed(submitted);
}

}  // namespace attribution::engine
