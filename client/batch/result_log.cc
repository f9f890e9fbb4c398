// SPDX-License-Identifier: Apache-2.0
#include "client/batch/result_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/batch/untrusted_text.h"

namespace attribution::client::batch {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot write", path);
    written += static_cast<size_t>(n);
  }
  return ::fsync(fd) == 0 ? absl::OkStatus() : Errno("cannot sync", path);
}

}  // namespace

bool OverMessageLimit(absl::string_view code, absl::string_view message) {
  // gRPC core's texts, sent by whichever side refused the message.
  return code == "RESOURCE_EXHAUSTED" && absl::StrContains(absl::AsciiStrToLower(message), "message larger than max");
}

bool RetriedOnResume(absl::string_view code, absl::string_view message) {
  if (OverMessageLimit(code, message)) return false;
  if (code == "FAILED_PRECONDITION") return absl::StartsWith(message, kOtherWeights);
  return code == "UNAVAILABLE" || code == "RESOURCE_EXHAUSTED" || code == "DEADLINE_EXCEEDED" || code == "CANCELLED";
}

namespace {

std::string ErrorField(const nlohmann::json& result, const char* key) {
  const nlohmann::json error = result.value("error", nlohmann::json());
  const nlohmann::json value = error.is_object() ? error.value(key, nlohmann::json()) : nlohmann::json();
  return value.is_string() ? value.get<std::string>() : "";
}

}  // namespace

std::string ResultErrorCode(const nlohmann::json& result) { return ErrorField(result, "code"); }
std::string ResultErrorMessage(const nlohmann::json& result) { return ErrorField(result, "message"); }

namespace {

// `bytes` as the whole file at `path`: readers (and a kill) see the old file or the new one.
absl::Status ReplaceFile(const std::string& path, const std::string& bytes) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", temporary);
  absl::Status written = WriteAll(fd, bytes, temporary);
  ::close(fd);
  if (!written.ok()) return written;
  if (::rename(temporary.c_str(), path.c_str()) != 0) return Errno("cannot rename over", path);
  return absl::OkStatus();
}

// An exclusive lock on PATH.lock for this process, or why not: another job writing to the same file
// (a replacement pod while the old one still runs, a second shell) would interleave and lose lines.
// Returns the lock file's descriptor, which holds the lock until closed.
absl::StatusOr<int> LockResults(const std::string& path) {
  const std::string lock_path = path + ".lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", lock_path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(fd);
    if (error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": another job is writing this results file (it holds ",
                                                        lock_path,
                                                        "): let it finish or stop it first, or write to another file"));
    }
    return absl::InternalError(absl::StrCat("cannot lock ", lock_path, ": ", std::strerror(error)));
  }
  return fd;
}

std::string StringField(const nlohmann::json& result, const char* key) {
  const nlohmann::json value = result.value(key, nlohmann::json());
  return value.is_string() ? value.get<std::string>() : "";
}

}  // namespace

absl::StatusOr<DoneRow> ParseResultLine(const std::string& line, const std::string& where) {
  const std::string not_ours = absl::StrCat(": a line is not a result of this tool: ", line.substr(0, 80));
  absl::StatusOr<nlohmann::json> parsed = ParseJson(line, where);
  if (!parsed.ok()) return absl::DataLossError(absl::StrCat(parsed.status().message(), not_ours));
  const nlohmann::json& result = *parsed;
  if (!result.is_object() || !result.contains("id") || !result["id"].is_string()) {
    return absl::DataLossError(absl::StrCat(where, not_ours));
  }
  // The index page and Parquet table read these fields: a line of another shape is not ours.
  const nlohmann::json status = result.value("status", nlohmann::json());
  const std::string code = status == "ok" ? "" : ResultErrorCode(result);
  if (!status.is_string() || (status != "ok" && code.empty())) {
    return absl::DataLossError(absl::StrCat(
        where, ": a line is not a result of this tool (no \"status\" \"ok\" or \"error\" {code, message}): ",
        line.substr(0, 80)));
  }
  return DoneRow{.id = result["id"].get<std::string>(),
                 .error_code = code,
                 .error_message = ResultErrorMessage(result),
                 .settings_hash = StringField(result, "settings_hash"),
                 .request_id = StringField(result, "request_id"),
                 .model_fingerprint = StringField(result, "model_fingerprint"),
                 .model = StringField(result, "model"),
                 .input_hash = StringField(result, "input_hash"),
                 .text = line};
}

absl::Status CheckResultIsOfRow(const DoneRow& result, const BatchRow& row, const std::string& where) {
  if (result.input_hash.empty()) return absl::OkStatus();
  const std::string input_hash = InputDigest(row);
  if (result.input_hash == input_hash) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      where, ": row \"", row.id, "\" done for another input (input_hash ", result.input_hash, ", the input's ",
      input_hash, "): its prompt, target, choices, label or settings changed since; run the row again"));
}

absl::StatusOr<std::unique_ptr<ResultLog>> ResultLog::Open(const std::string& path) {
  const std::string file = RealFilePath(path);
  absl::StatusOr<int> lock_fd = LockResults(file);
  if (!lock_fd.ok()) return lock_fd.status();
  absl::StatusOr<std::unique_ptr<ResultLog>> log = OpenLocked(path, file, *lock_fd);
  if (!log.ok()) ::close(*lock_fd);
  return log;
}

absl::StatusOr<std::unique_ptr<ResultLog>> ResultLog::OpenLocked(const std::string& path, const std::string& file,
                                                                 int lock_fd) {
  std::map<std::string, DoneRow> done;
  std::map<std::string, int64_t> line_of;  // id -> its kept line's number in the file as read
  std::string kept;
  int64_t kept_lines = 0;
  bool rewrite = false;
  if (std::ifstream in(file, std::ios::binary); in) {
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    size_t begin = 0;
    for (int64_t number = 1; begin < text.size(); ++number) {
      const size_t end = text.find('\n', begin);
      if (end == std::string::npos) {  // cut short by a kill: never counted as done
        rewrite = true;
        break;
      }
      const std::string line = text.substr(begin, end - begin);
      begin = end + 1;
      absl::StatusOr<DoneRow> result = ParseResultLine(line, absl::StrCat(path, ":", number));
      if (!result.ok()) return result.status();
      if (RetriedOnResume(result->error_code, result->error_message)) {
        rewrite = true;
        continue;
      }
      if (auto [first, inserted] = line_of.emplace(result->id, number); !inserted) {
        return absl::DataLossError(absl::StrCat(path, ":", number, ": row \"", result->id,
                                                "\" already has a result on line ", first->second,
                                                ": the file holds two results of one row (two jobs wrote it?); "
                                                "keep one of the lines, or write to another file"));
      }
      result->line = ++kept_lines;
      std::string id = result->id;
      done.emplace(std::move(id), std::move(*result));
      kept += line + "\n";
    }
  }
  if (rewrite) {
    if (absl::Status replaced = ReplaceFile(file, kept); !replaced.ok()) return replaced;
  }
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot open", file);
  return std::unique_ptr<ResultLog>(new ResultLog(path, file, fd, lock_fd, std::move(done)));
}

ResultLog::ResultLog(std::string path, std::string file, int fd, int lock_fd, std::map<std::string, DoneRow> done)
    : path_(std::move(path)), file_(std::move(file)), fd_(fd), lock_fd_(lock_fd), done_(std::move(done)) {}

ResultLog::~ResultLog() {
  ::close(fd_);
  ::close(lock_fd_);  // releases the lock, once the last line is on disk
}

absl::Status ResultLog::Append(const std::vector<std::string>& lines) {
  if (lines.empty()) return absl::OkStatus();
  std::string bytes;
  for (const std::string& line : lines) absl::StrAppend(&bytes, line, "\n");
  return WriteAll(fd_, bytes, path_);
}

absl::Status ResultLog::Rewrite(const std::vector<std::string>& lines) {
  std::string bytes;
  for (const std::string& line : lines) absl::StrAppend(&bytes, line, "\n");
  if (absl::Status replaced = ReplaceFile(file_, bytes); !replaced.ok()) return replaced;
  // The rename left fd_ on the old file's inode: later appends must reach the new one.
  const int fd = ::open(file_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", file_);
  ::close(fd_);
  fd_ = fd;
  return absl::OkStatus();
}

}  // namespace attribution::client::batch
