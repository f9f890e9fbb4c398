// SPDX-License-Identifier: Apache-2.0
// Splitting one batch of rows into groups that each need their own forward (a propagation rule, a
// layer to start at, a kind of work), and putting the groups' results back in row order. Private to
// engine/scheduler.
#pragma once

#include <map>
#include <vector>

#include "absl/status/status.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

// Runs the rows of each group (by group_of(row), in key order) through run(key, rows, results) and
// fills results[i] for rows[i]. One group of all the rows runs as it is, without copies.
template <typename GroupOf, typename Run>
absl::Status RunInGroups(const std::vector<const Row*>& rows, std::vector<RowResult>& results, GroupOf group_of,
                         Run run) {
  using Key = decltype(group_of(*rows.front()));
  std::map<Key, std::vector<size_t>> groups;
  for (size_t r = 0; r < rows.size(); ++r) groups[group_of(*rows[r])].push_back(r);
  for (const auto& [key, indices] : groups) {
    if (indices.size() == rows.size()) return run(key, rows, results);
    std::vector<const Row*> some;
    for (size_t r : indices) some.push_back(rows[r]);
    std::vector<RowResult> some_results(indices.size());
    if (absl::Status s = run(key, some, some_results); !s.ok()) return s;
    for (size_t i = 0; i < indices.size(); ++i) results[indices[i]] = std::move(some_results[i]);
  }
  return absl::OkStatus();
}

}  // namespace attribution::engine
