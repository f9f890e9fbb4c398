// SPDX-License-Identifier: Apache-2.0
// The server's log: one JSON object per line on stderr (requests and lifecycle events), so log
// collectors parse it without patterns.
#pragma once
#include <nlohmann/json.hpp>

namespace attribution::server {

// Adds "time" (UTC, milliseconds) and writes `line` as one line; invalid UTF-8 is replaced.
void WriteLogLine(nlohmann::json line);

}  // namespace attribution::server
