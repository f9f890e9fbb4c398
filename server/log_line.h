// SPDX-License-Identifier: Apache-2.0
// The server's log: one JSON object per line on stderr (requests and lifecycle events), so log
// collectors parse it without patterns. Every line carries a "severity" (DEBUG, INFO, WARNING, ERROR):
// collectors that read stderr without one (GKE, for one) file every line as an error.
#pragma once
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/time/time.h"

namespace attribution::server {

// Adds "time" (UTC, milliseconds) and, unless `line` has one, "severity" (see LogSeverity), and writes
// `line` as one line; invalid UTF-8 is replaced.
void WriteLogLine(nlohmann::json line);

// The severity of a line without one: a call's by its "code" (the server's own faults ERROR; overload,
// deadlines and unavailability WARNING; answers and the client's mistakes INFO), an event's by its name.
const char* LogSeverity(const nlohmann::json& line);

// At most `lines_per_second` lines of one kind a second, for lines a client can have written at no cost
// to itself (one per HTTP/2 stream it opens and resets at once). Thread-safe.
class LogLineBudget {
 public:
  explicit LogLineBudget(int64_t lines_per_second) : lines_per_second_(lines_per_second) {}
  // Whether a line may be written at `now`; if so, `left_out` is set to the lines refused since the
  // last one allowed (for that line to say).
  bool Take(absl::Time now, int64_t& left_out);

 private:
  const int64_t lines_per_second_;
  std::mutex mu_;
  absl::Time second_began_ = absl::InfinitePast();
  int64_t taken_ = 0, refused_ = 0;
};

}  // namespace attribution::server
