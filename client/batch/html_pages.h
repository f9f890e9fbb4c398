// SPDX-License-Identifier: Apache-2.0
// A batch job's results for people (--html DIR): DIR/rows/ID.html for each row answered, the same page
// as `attribution-cli attribute --html` (component rows: `components --html`), and DIR/index.html, every
// result of the results file in a table (id linking to its page, status, prediction, label, objective,
// |convergence delta|, the three strongest features, or components) that sorts by a column when its header
// is clicked. Self-contained files.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/attribution_client.h"

namespace attribution::client::batch {

// DIR-relative path of a row's page: its id made file-safe (the first 64 characters), plus 128 bits of the
// id's SHA-256, so that no two ids share a page.
std::string RowPagePath(const std::string& id);

// Writes the row's page through a temporary file and rename(2) (a kill leaves no half page). The page carries
// the result's request_id (a digest of model, settings and row) in <meta name="attribution-request-id">.
absl::Status WriteRowPage(const std::string& dir, const std::string& id, const std::string& request_id,
                          const Attribution& attribution);

// The same for a component row: the page of `attribution-cli components --html` (each grid as a coloured
// table, the value on hover).
absl::Status WriteComponentRowPage(const std::string& dir, const std::string& id, const std::string& request_id,
                                   const ComponentAttribution& attribution);

// Creates DIR and DIR/rows where they do not exist: INTERNAL "cannot create PATH: strerror" where they cannot be.
absl::Status MakeReportDirectory(const std::string& dir);

// Rewrites DIR/index.html from the results file, each answered row linking to its page when DIR has one
// written for that result (its request_id in the page: a page of another job's row of the same id, another
// model, settings or input, is not linked; rows done by a run without --html, or pages of shards written
// elsewhere, have none; the index says how many). Returns how many answered rows have no page.
absl::StatusOr<int64_t> WriteIndex(const std::string& dir, const std::string& results_path);

}  // namespace attribution::client::batch
