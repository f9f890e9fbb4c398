// SPDX-License-Identifier: Apache-2.0
#include "server/lifecycle.h"

#include <signal.h>

#include <cstdlib>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/log_line.h"

namespace attribution::server {
namespace {

struct State {
  absl::Mutex mutex;
  bool serving ABSL_GUARDED_BY(mutex) = false;
  std::optional<Lifecycle::Stop> stop ABSL_GUARDED_BY(mutex);
};

// Never destroyed: the signal thread is detached and may still wait while the process exits.
State& TheState() {
  static State* state = new State;
  return *state;
}

// Records `stop`, or, before serving, logs it and ends the process: nothing is in flight to drain, and
// main() is busy loading.
void Request(Lifecycle::Stop stop) {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  if (!state.serving) {
    WriteLogLine({{"event", "stopped"}, {"detail", absl::StrCat(stop.reason, ", before serving: exiting at once")}});
    std::_Exit(stop.exit_code);
  }
  if (!state.stop) state.stop = std::move(stop);
}

}  // namespace

void Lifecycle::WatchSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // Threads inherit the mask: blocked here, before any other thread starts, the signals reach only the
  // watcher's sigwait, never a default action that would kill the process without draining.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals] {
    int signal_number = 0;
    while (sigwait(&signals, &signal_number) != 0) {
    }
    Request({0, absl::StrCat("signal ", signal_number)});
  }).detach();
}

void Lifecycle::ServingStarted() {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.serving = true;
}

void Lifecycle::Fail(const std::string& reason) { Request({1, reason}); }

Lifecycle::Stop Lifecycle::WaitForStop() {
  State& state = TheState();
  absl::MutexLock lock(&state.mutex);
  state.mutex.Await(absl::Condition(
      +[](std::optional<Stop>* stop) { return stop->has_value(); }, &state.stop));
  return *state.stop;
}

}  // namespace attribution::server
