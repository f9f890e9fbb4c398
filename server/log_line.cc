// SPDX-License-Identifier: Apache-2.0
#include "server/log_line.h"

#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/common/status_macros.h"
#include "engine/common/visible_controls.h"

namespace attribution::server {

const char* LogSeverity(const nlohmann::json& line) {
  if (const auto code = line.find("code"); code != line.end() && code->is_string()) {
    const std::string& name = code->get_ref<const std::string&>();
    if (name == "INTERNAL" || name == "UNKNOWN" || name == "DATA_LOSS") return "ERROR";
    if (name == "RESOURCE_EXHAUSTED" || name == "DEADLINE_EXCEEDED" || name == "UNAVAILABLE") return "WARNING";
    return "INFO";
  }
  const std::string event = line.value("event", "");
  if (event == "startup_failed" || event == "internal_error") return "ERROR";
  if (event == "model_warning") return "WARNING";
  return "INFO";
}

namespace {

// JSON escapes C0 controls only: the C1 controls (U+009B is CSI), DEL, the bidirectional controls and the line
// separators U+2028 / U+2029 in text a client sent (a model name, a request id, before any token was checked)
// reached a terminal reading the log (`kubectl logs`, `less -R`) raw, to recolour or reorder what it showed.
// Spelled \uNNNN, they mean the same to a JSON reader. `json`: valid UTF-8.
std::string EscapeTerminalControls(std::string json) {
  const std::string_view text(json);
  // Most lines are ASCII without DEL: they pass as they are.
  if (std::none_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x7f; })) {
    return json;
  }
  std::string out;
  out.reserve(json.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t length = c < 0x80 ? 1 : std::max<size_t>(Utf8SequenceLength(text, i, /*subpart=*/false), 1);
    const uint32_t control = c == 0x7f ? c : NonAsciiControl(text, i, length);
    if (control != 0) {
      absl::StrAppendFormat(&out, "\\u%04x", control);
    } else {
      out.append(text.substr(i, length));
    }
    i += length;
  }
  return out;
}

std::atomic<LogWriter*> process_log{nullptr};  // once made, for FlushLogInSignalHandler

// Never destroyed: its thread may be blocked in write() while the process exits.
LogWriter& ProcessLog() {
  static LogWriter* writer = [] {
    auto* made = new LogWriter(STDERR_FILENO, int64_t{16} << 20);
    process_log.store(made);
    return made;
  }();
  return *writer;
}

// Writes all of `text` unless the descriptor fails (a reader gone: EPIPE, with SIGPIPE ignored; a full disk):
// the bytes written, and errno where fewer than all. A non-blocking descriptor (inherited so) that is full is
// waited for as a blocking one would be.
size_t WriteAll(int fd, absl::string_view text, int& error) {
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd writable{.fd = fd, .events = POLLOUT, .revents = 0};
      ::poll(&writable, 1, /*timeout_ms=*/1000);
      continue;
    }
    if (n <= 0) {
      error = n < 0 ? errno : ENOSPC;
      return written;
    }
    written += static_cast<size_t>(n);
  }
  return written;
}

}  // namespace

std::string FormatLogLine(nlohmann::json line) {
  line["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  if (!line.contains("severity")) line["severity"] = LogSeverity(line);
  return EscapeTerminalControls(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)) + "\n";
}

namespace {

constexpr absl::string_view kSeverities[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
std::atomic<int> minimum_severity{0};

// The rank of a severity in kSeverities; -1 for another name.
int SeverityRank(absl::string_view severity) {
  for (int rank = 0; rank < static_cast<int>(std::size(kSeverities)); ++rank) {
    if (absl::EqualsIgnoreCase(severity, kSeverities[rank])) return rank;
  }
  return -1;
}

// The lines --log_level filters: calls' (they have no "event") and gRPC's own. The server's events (listening,
// serving, draining, stopped, a model's warnings and stalls) are few and say what happened to the process: always.
bool Filtered(const nlohmann::json& line) {
  const auto event = line.find("event");
  return event == line.end() || !event->is_string() || *event == "grpc" || *event == "answer_undelivered";
}

}  // namespace

void WriteLogLine(nlohmann::json line) {
  if (const int minimum = minimum_severity.load(std::memory_order_relaxed); minimum > 0 && Filtered(line)) {
    // Named here once, as FormatLogLine would name it.
    if (!line.contains("severity")) line["severity"] = LogSeverity(line);
    const nlohmann::json& severity = line["severity"];
    const int rank = severity.is_string() ? SeverityRank(severity.get_ref<const std::string&>()) : -1;
    if (rank >= 0 && rank < minimum) return;
  }
  ProcessLog().Append(FormatLogLine(std::move(line)));
}

absl::Status CheckLogSeverity(absl::string_view severity, absl::string_view field) {
  if (SeverityRank(severity) >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown level \"", severity, "\" (debug, info, warning or error)"));
}

absl::Status SetMinimumLogSeverity(absl::string_view severity, absl::string_view field) {
  RETURN_IF_ERROR(CheckLogSeverity(severity, field));
  minimum_severity = SeverityRank(severity);
  return absl::OkStatus();
}

bool FlushLog(absl::Duration timeout) { return ProcessLog().Flush(timeout); }

void ExitAfterLogLine(nlohmann::json line, int exit_code) {
  WriteLogLine(std::move(line));
  FlushLog(absl::Seconds(1));
  std::_Exit(exit_code);
}

void FlushLogInSignalHandler(absl::Duration timeout) {
  // Making the writer (memory, a thread) is not for a signal handler; before it exists nothing is queued.
  if (LogWriter* writer = process_log.load()) writer->FlushWithoutLocking(timeout);
}

int64_t LogLinesDropped() { return ProcessLog().dropped(); }

LogWriter::LogWriter(int fd, int64_t max_buffered_bytes)
    : fd_(fd), max_buffered_bytes_(max_buffered_bytes), thread_([this] { Run(); }) {}

LogWriter::~LogWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void LogWriter::Append(std::string text) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (buffered_bytes_ + static_cast<int64_t>(text.size()) > max_buffered_bytes_) {
      ++dropped_;
      ++dropped_unsaid_;
      return;
    }
    buffered_bytes_ += static_cast<int64_t>(text.size());
    lines_.push_back(std::move(text));
    ++appended_;
  }
  changed_.notify_all();
}

bool LogWriter::Flush(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t target = appended_;
  return changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return done_ >= target; });
}

bool LogWriter::FlushWithoutLocking(absl::Duration timeout) const {
  const int64_t target = appended_.load();
  constexpr timespec kPoll{.tv_sec = 0, .tv_nsec = 10'000'000};
  for (absl::Duration waited; done_.load() < target; waited += absl::Milliseconds(10)) {
    if (waited >= timeout) return false;
    ::nanosleep(&kPoll, nullptr);
  }
  return true;
}

int64_t LogWriter::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

void LogWriter::Run() {
  // Lifecycle::ExitWithin's alarm waits for this thread to write the queue out: delivered here, it could not.
  sigset_t alarm;
  sigemptyset(&alarm);
  sigaddset(&alarm, SIGALRM);
  pthread_sigmask(SIG_BLOCK, &alarm, nullptr);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !lines_.empty(); });
    if (lines_.empty()) return;  // stopping, everything written
    // The lines queued now in one write, up to PIPE_BUF bytes (a longer line alone): a pipe takes that much in
    // one piece, so what else writes to stderr (a crash's report, a library's warning) cannot land inside one of
    // these lines. The count of lines dropped comes first, once stderr takes lines again.
    // A line a failed write cut off is ended first: the next line was glued to its half.
    std::string text = line_cut_ ? "\n" : "";
    const int64_t unsaid = std::exchange(dropped_unsaid_, 0);
    if (unsaid > 0) {
      text += FormatLogLine(
          {{"event", "log_lines_dropped"},
           {"severity", "WARNING"},
           {"count", unsaid},
           {"detail", write_error_ != 0
                          ? absl::StrCat("stderr refused lines (", std::strerror(write_error_), ")")
                          : std::string("stderr took lines slower than they came, and the log's buffer was full")}});
    }
    const size_t notice_end = text.size();  // the cut line's end and the notice of lines dropped, if any
    std::vector<size_t> line_ends;          // of the queued lines taken, in `text`
    while (!lines_.empty() && (text.empty() || text.size() + lines_.front().size() <= PIPE_BUF)) {
      text += lines_.front();
      line_ends.push_back(text.size());
      buffered_bytes_ -= static_cast<int64_t>(lines_.front().size());
      lines_.pop_front();
    }
    const int64_t count = static_cast<int64_t>(line_ends.size());
    lock.unlock();
    int error = 0;
    const size_t written = WriteAll(fd_, text, error);
    lock.lock();
    if (written < text.size()) {  // said once stderr takes lines again, if it ever does
      // Lines written whole before the failure are out; the notice too, if it was.
      const int64_t lost = count - (std::upper_bound(line_ends.begin(), line_ends.end(), written) - line_ends.begin());
      dropped_ += lost;
      dropped_unsaid_ += (written < notice_end ? unsaid : 0) + lost;
      write_error_ = error;
      line_cut_ = written > 0 ? text[written - 1] != '\n' : line_cut_;
    } else {
      write_error_ = 0;
      line_cut_ = false;
    }
    done_ += count;
    changed_.notify_all();
  }
}

bool LogLineBudget::Take(absl::Time now, int64_t& left_out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now - second_began_ >= absl::Seconds(1)) {
    second_began_ = now;
    taken_ = 0;
  }
  if (taken_ >= lines_per_second_) {
    ++refused_;
    return false;
  }
  ++taken_;
  left_out = std::exchange(refused_, 0);
  return true;
}

}  // namespace attribution::server
