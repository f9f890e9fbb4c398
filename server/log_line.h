// SPDX-License-Identifier: Apache-2.0
// The server's log: one JSON object per line on stderr (requests and lifecycle events), so log
// collectors parse it without patterns. Every line carries a "severity" (DEBUG, INFO, WARNING, ERROR):
// collectors that read stderr without one (GKE, for one) file every line as an error.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace attribution::server {

// `line` as WriteLogLine writes it: with "time" (UTC, milliseconds) and, unless it has one, "severity" (see
// LogSeverity); invalid UTF-8 replaced, and control characters a terminal obeys spelled \uNNNN.
std::string FormatLogLine(nlohmann::json line);

// Hands FormatLogLine(line) to the process's LogWriter for stderr, unless its severity is below the minimum.
// Never blocks on stderr.
void WriteLogLine(nlohmann::json line);

// Calls' and gRPC's lines of a lower severity than `severity` (DEBUG < INFO < WARNING < ERROR, any case) are not
// written from now on (--log_level; every line by default): a replica answering thousands of calls a second wrote
// an INFO line for each. The server's own events (listening ... stopped) are always written. INVALID_ARGUMENT
// naming `field` for another name.
absl::Status SetMinimumLogSeverity(absl::string_view severity, absl::string_view field);
// OK when `severity` names one; SetMinimumLogSeverity's error otherwise.
absl::Status CheckLogSeverity(absl::string_view severity, absl::string_view field);

// Waits until the lines written before have been written to stderr (or failed to: a reader gone), or `timeout`
// passed; false then. Call it before the process exits.
bool FlushLog(absl::Duration timeout);

// Writes `line`, waits up to 1 s for the log to reach stderr (FlushLog), and ends the process at once with
// `exit_code` (std::_Exit: no destructors, no waiting for threads that may be stuck).
[[noreturn]] void ExitAfterLogLine(nlohmann::json line, int exit_code);

// FlushLog for a crash's failure signal handler: no locks, at most `timeout`.
void FlushLogInSignalHandler(absl::Duration timeout);

// Lines left out since the process started because stderr did not take them (see LogWriter).
int64_t LogLinesDropped();

// Writes lines to a file descriptor on a thread of its own. Whatever reads the server's stderr (a log
// shipper, a container runtime's pipe) may stop reading: a blocking write on the threads that answer calls
// (or on the engine's executor, which ends calls) then hung the whole server while health said SERVING, and
// a signal's log line held the lock its second signal needed to exit. Lines queue instead, up to
// `max_buffered_bytes`; past it they are dropped and counted, and once the descriptor takes lines again a
// `log_lines_dropped` line says how many. Thread-safe; never blocks but in Flush.
class LogWriter {
 public:
  LogWriter(int fd, int64_t max_buffered_bytes);
  ~LogWriter();  // waits for the writer thread: only for writers whose descriptor does not stay blocked
  // `text`: one whole line with its newline.
  void Append(std::string text);
  // Waits until the lines appended before have been written or failed to be (EPIPE); false after `timeout`.
  bool Flush(absl::Duration timeout);
  // The same without a lock (async-signal-safe), polling.
  bool FlushWithoutLocking(absl::Duration timeout) const;
  int64_t dropped() const;

 private:
  void Run();

  const int fd_;
  const int64_t max_buffered_bytes_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::string> lines_;
  int64_t buffered_bytes_ = 0;
  // Lines appended, lines written or failed; atomic for FlushWithoutLocking, changed under mu_.
  std::atomic<int64_t> appended_{0}, done_{0};
  int64_t dropped_ = 0, dropped_unsaid_ = 0;
  int write_error_ = 0;    // why stderr last refused lines (0: none refused since the last written)
  bool line_cut_ = false;  // a write failed part-way: the next one ends that line first
  bool stopping_ = false;
  std::thread thread_;
};

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
