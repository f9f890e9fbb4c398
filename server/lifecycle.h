// SPDX-License-Identifier: Apache-2.0
// What ends the server process, and how: a signal (SIGTERM/SIGINT/SIGHUP) or a failure that leaves it unable
// to serve (gRPC's listener stopped accepting), both watched from before the models load.
//
// A signal while the models load ends the process at once: a load can take minutes (tens of GB from
// network storage) and nothing is in flight yet, so an orchestrator stopping a starting pod must not wait
// for it. From ServingStarted() on, a signal or a failure wakes WaitForStop(), and the server drains; a
// second signal while it drains ends the process at once (exit 1).
//
//   Lifecycle::WatchSignals();      // first thing in main(), before any other thread starts
//   ... load the models ...
//   Lifecycle::ServingStarted();
//   const Lifecycle::Stop stop = Lifecycle::WaitForStop();  // drain, then return stop.exit_code
#pragma once
#include <string>

#include "absl/time/time.h"

namespace attribution::server {

class Lifecycle {
 public:
  struct Stop {
    int exit_code = 0;   // 0 for a signal; 1 for a failure, so that orchestrators restart the server
    std::string reason;  // for the log
  };

  // Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, so in every thread started after it, and starts the
  // one thread that waits for them. Once only, from main() before any other thread exists.
  static void WatchSignals();
  // A signal or failure from now on is answered by draining: WaitForStop() returns it.
  static void ServingStarted();
  // The process only checks its configuration (--check_config): a signal before it ends exits 1, not 0.
  static void OnlyChecking();
  // What startup does now ("loading model demo from /models/demo"): a signal before serving names it.
  static void Doing(std::string what);
  // The server cannot serve any more; thread-safe, any number of times (the first one counts). Before
  // ServingStarted() it ends the process at once with status 1.
  static void Fail(const std::string& reason);
  // Blocks until a signal or Fail() after ServingStarted().
  static Stop WaitForStop();
  // Once the models have stopped: should what is left of the exit (gRPC's shutdown, which waits for its threads,
  // destructors) outlast `bound`, the log is flushed, an `exit_overdue` line written and the process ends with
  // `exit_code` all the same. Under a process limit that refused gRPC a thread, its shutdown waited forever after
  // the drain, and a supervisor waiting for the exit (systemd, a script; Kubernetes for its grace period) with it.
  static void ExitWithin(absl::Duration bound, int exit_code);
};

}  // namespace attribution::server
