// SPDX-License-Identifier: Apache-2.0
#include "server/lifecycle.h"

#include <signal.h>

#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/log_line.h"

namespace attribution::server {
namespace {

struct State {
  absl::Mutex mutex;
  bool serving ABSL_GUARDED_BY(mutex) = false;
  bool signalled ABSL_GUARDED_BY(mutex) = false;
  bool only_checking ABSL_GUARDED_BY(mutex) = false;
  std::string doing ABSL_GUARDED_BY(mutex);  // what startup does now (Lifecycle::Doing), for a stop's line
  std::optional<Lifecycle::Stop> stop ABSL_GUARDED_BY(mutex);
};

// Never destroyed: the signal thread is detached and may still wait while the process exits.
State& TheState() {
  static State* state = new State;
  return *state;
}

// Records `stop`, or, before serving, logs it and ends the process: nothing is in flight to drain, and
// main() is busy loading. A second signal ends a drain at once (exit 1: calls were cut off), as an operator
// pressing Ctrl-C twice means.
void Request(Lifecycle::Stop stop, bool from_signal) {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  if (!state.serving) {
    const std::string during = state.doing.empty() ? "" : absl::StrCat(" while ", state.doing);
    // A check cut short checked nothing: its exit 0 read as "valid".
    ExitAfterLogLine(
        {{"event", "stopped"},
         {"detail", absl::StrCat(stop.reason, during,
                                 state.only_checking ? ", before the check ended: exiting, nothing was checked"
                                                     : ", before serving: exiting at once")}},
        state.only_checking ? 1 : stop.exit_code);
  }
  if (from_signal && state.signalled) {
    ExitAfterLogLine({{"event", "stopped"},
                      {"detail", absl::StrCat(stop.reason, " again while draining: exiting at once, calls cut off")}},
                     1);
  }
  state.signalled |= from_signal;
  if (!state.stop) state.stop = std::move(stop);
}

}  // namespace

void Lifecycle::WatchSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  // A closed terminal or session (SIGHUP) and Ctrl-C drain like SIGTERM, unless the process was started to ignore
  // them (nohup, a shell's background job): a blocked signal still reaches sigwait even when ignored.
  for (int signal_number : {SIGINT, SIGHUP}) {
    struct sigaction current {};
    if (sigaction(signal_number, nullptr, &current) == 0 && current.sa_handler != SIG_IGN) {
      sigaddset(&signals, signal_number);
    }
  }
  // Threads inherit the mask: blocked here, before any other thread starts, the signals reach only the
  // watcher's sigwait, never a default action that would kill the process without draining.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals] {
    for (;;) {
      int signal_number = 0;
      if (sigwait(&signals, &signal_number) == 0) Request({0, absl::StrCat("signal ", signal_number)}, true);
    }
  }).detach();
}

void Lifecycle::ServingStarted() {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.serving = true;
}

void Lifecycle::OnlyChecking() {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.only_checking = true;
}

void Lifecycle::Doing(std::string what) {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.doing = std::move(what);
}

void Lifecycle::Fail(const std::string& reason) { Request({1, reason}, false); }

Lifecycle::Stop Lifecycle::WaitForStop() {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.mutex.Await(absl::Condition(
      +[](std::optional<Stop>* stop) { return stop->has_value(); }, &state.stop));
  return *state.stop;
}

}  // namespace attribution::server
