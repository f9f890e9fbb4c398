// SPDX-License-Identifier: Apache-2.0
#include "server/lifecycle.h"

#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
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

// What ExitStuck needs, set before its alarm: a signal handler may not allocate or lock.
std::atomic<int> exit_code_when_stuck{1};
char overdue_line_start[256];  // the JSON line up to its time's value

// Appends `value` as `digits` decimal digits.
char* PutDigits(char* out, int64_t value, int digits) {
  for (int i = digits - 1; i >= 0; --i, value /= 10) out[i] = static_cast<char>('0' + value % 10);
  return out + digits;
}

// "2026-12-07T14:03:57.931Z" as the log's other lines have it, from arithmetic alone (gmtime_r may lock).
char* PutUtcTime(char* out) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const int64_t seconds = now.tv_sec, days = seconds / 86400, second_of_day = seconds % 86400;
  // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar, eras of 400 years).
  const int64_t z = days + 719468, era = z / 146097, day_of_era = z - era * 146097;
  const int64_t year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const int64_t day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const int64_t month_from_march = (5 * day_of_year + 2) / 153;
  const int64_t day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
  const int64_t month = month_from_march < 10 ? month_from_march + 3 : month_from_march - 9;
  const int64_t year = year_of_era + era * 400 + (month <= 2 ? 1 : 0);
  out = PutDigits(out, year, 4);
  *out++ = '-';
  out = PutDigits(out, month, 2);
  *out++ = '-';
  out = PutDigits(out, day, 2);
  *out++ = 'T';
  out = PutDigits(out, second_of_day / 3600, 2);
  *out++ = ':';
  out = PutDigits(out, second_of_day / 60 % 60, 2);
  *out++ = ':';
  out = PutDigits(out, second_of_day % 60, 2);
  *out++ = '.';
  out = PutDigits(out, now.tv_nsec / 1000000, 3);
  *out++ = 'Z';
  return out;
}

void ExitStuck(int) {
  FlushLogInSignalHandler(absl::Seconds(1));
  char line[sizeof(overdue_line_start) + 32];
  const size_t start = std::strlen(overdue_line_start);
  std::memcpy(line, overdue_line_start, start);
  char* end = PutUtcTime(line + start);
  *end++ = '"';
  *end++ = '}';
  *end++ = '\n';
  // Only into a stderr that takes it (a stalled reader's full pipe would block the exit): one write of at most
  // PIPE_BUF bytes, which a pipe ready for writing takes whole.
  pollfd err{.fd = STDERR_FILENO, .events = POLLOUT, .revents = 0};
  if (start > 0 && ::poll(&err, 1, 1000) == 1 && (err.revents & POLLOUT) != 0) {
    [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, line, static_cast<size_t>(end - line));
  }
  std::_Exit(exit_code_when_stuck.load());
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

void Lifecycle::ExitWithin(absl::Duration bound, int exit_code) {
  const int64_t seconds = std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(bound, absl::Seconds(1))));
  exit_code_when_stuck = exit_code;
  const std::string start =
      nlohmann::json::object(
          {{"detail", absl::StrCat("the exit outlasted ", seconds,
                                   " s after the models stopped (gRPC's shutdown waits for threads it may have been "
                                   "refused): ending now, status ",
                                   exit_code)},
           {"event", "exit_overdue"},
           {"severity", "WARNING"},
           {"time", ""}})
          .dump();
  // Up to the time's value: everything but its closing `"}`; none (no line) if it would not fit whole.
  static_assert(sizeof(overdue_line_start) < PIPE_BUF - 32);
  overdue_line_start[0] = '\0';
  if (start.size() - 2 < sizeof(overdue_line_start)) {
    std::snprintf(overdue_line_start, sizeof(overdue_line_start), "%.*s", static_cast<int>(start.size() - 2),
                  start.c_str());
  }
  // A signal and not a thread: the thread could be the one a process limit refuses.
  struct sigaction action {};
  action.sa_handler = ExitStuck;
  sigemptyset(&action.sa_mask);
  sigaction(SIGALRM, &action, nullptr);
  ::alarm(static_cast<unsigned>(seconds));
}

}  // namespace attribution::server
