// SPDX-License-Identifier: Apache-2.0
// The server's log: one JSON object per line on stderr (requests and lifecycle events), so log
// collectors parse it without patterns. Every line carries a "severity" (DEBUG, INFO, WARNING, ERROR):
// collectors that read stderr without one (GKE, for one) file every line as an error.
#pragma once
#include <nlohmann/json.hpp>

namespace attribution::server {

// Adds "time" (UTC, milliseconds) and, unless `line` has one, "severity" (see LogSeverity), and writes
// `line` as one line; invalid UTF-8 is replaced.
void WriteLogLine(nlohmann::json line);

// The severity of a line without one: a call's by its "code" (the server's own faults ERROR; overload,
// deadlines and unavailability WARNING; answers and the client's mistakes INFO), an event's by its name.
const char* LogSeverity(const nlohmann::json& line);

}  // namespace attribution::server
