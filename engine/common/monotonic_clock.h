// SPDX-License-Identifier: Apache-2.0
// Durations, deadlines and rates inside the process run on the monotonic clock. On the wall clock an NTP
// step (a VM after boot or migration, an operator fixing the date) moved them all: a step forward failed
// every queued request DEADLINE_EXCEEDED and cancelled answers being written as stalled; a step back held
// queued rows and a drain for its length and left the log's rationed lines refused until the clock caught
// up; either way the metrics counted the step as a batch's device time. Header-only, so the clients use it
// too without linking the engine.
//
// The values are absl::Time on an epoch of the clock's own (about the machine's boot): subtract and compare
// them, never print them as dates; timestamps meant for people come from absl::Now().
//
//   const absl::Time started = MonotonicNow();
//   ...
//   const absl::Duration took = MonotonicNow() - started;  // whatever the wall clock did meanwhile
#pragma once

#include <chrono>

#include "absl/time/time.h"

namespace attribution {

// Now on the monotonic clock (std::chrono::steady_clock).
inline absl::Time MonotonicNow() {
  return absl::FromUnixNanos(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace attribution
