// SPDX-License-Identifier: Apache-2.0
#include "client/batch/result_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/batch/line_files.h"
#include "client/batch/untrusted_text.h"

namespace attribution::client::batch {
namespace {

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  if (absl::Status written = WriteAllBytes(fd, bytes, path); !written.ok()) return written;
  return ::fsync(fd) == 0 ? absl::OkStatus() : FileError("cannot sync", path, errno);
}

}  // namespace

bool OverMessageLimit(absl::string_view code, absl::string_view message) {
  // gRPC core's texts, sent by whichever side refused the message.
  return code == "RESOURCE_EXHAUSTED" && absl::StrContains(absl::AsciiStrToLower(message), "message larger than max");
}

bool RetriedOnResume(absl::string_view code, absl::string_view message) {
  if (OverMessageLimit(code, message)) return false;
  if (code == "FAILED_PRECONDITION") return absl::StartsWith(message, kOtherWeights);
  if (code == "NOT_FOUND") return absl::StartsWith(message, kModelNotServed);
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

// A piece of the file ReplaceFile writes: `length` bytes at `offset` of the file it replaces, or new bytes.
struct Piece {
  int64_t offset = 0, length = 0;
  std::string bytes;  // when length is 0
};

// `pieces` as the whole file at `path`, copied from the file now there or written: readers (and a kill) see
// the old file or the new one. The old file is read by offset, never held in memory.
absl::Status ReplaceFile(const std::string& path, const std::vector<Piece>& pieces) {
  int old_fd = -1;
  for (const Piece& piece : pieces) {
    if (piece.length == 0 || old_fd >= 0) continue;
    old_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (old_fd < 0) return FileError("cannot read", path, errno);
  }
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::CreateWhileLocked(path);
  absl::Status written = out.status();
  for (size_t i = 0; written.ok() && i < pieces.size(); ++i) {
    const Piece& piece = pieces[i];
    written = piece.length > 0 ? (*out)->Copy(old_fd, path, piece.offset, piece.length) : (*out)->Write(piece.bytes);
  }
  if (old_fd >= 0) ::close(old_fd);
  return written.ok() ? (*out)->Commit() : written;
}

// Appends the bytes at [offset, offset + length) of the old file to `pieces`, joining it to the last piece
// when they touch (a kept run of lines is one copy).
void AddCopy(std::vector<Piece>& pieces, int64_t offset, int64_t length) {
  if (!pieces.empty() && pieces.back().length > 0 && pieces.back().offset + pieces.back().length == offset) {
    pieces.back().length += length;
    return;
  }
  pieces.push_back({.offset = offset, .length = length});
}

}  // namespace

absl::StatusOr<int> LockResults(const std::string& path) {
  const std::string lock_path = path + ".lock";
  // Writable by the group where the umask allows (a shared folder): the lock left behind lets a colleague resume.
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return FileError("cannot create", lock_path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(fd);
    if (error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": another job is writing this results file (it holds ",
                                                        lock_path,
                                                        "): let it finish or stop it first, or write to another file"));
    }
    return FileError("cannot lock", lock_path, error);
  }
  return fd;
}

absl::Status CheckResultsFile(const std::string& path, absl::string_view what) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    return errno == ENOENT ? absl::OkStatus() : FileError("cannot read", path, errno);
  }
  // Before the names: a directory always has several.
  if (S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": ", what, " is a directory: name a file (in it, or beside it) for the results"));
  }
  // A device or a pipe is read and written without end (/dev/zero), never fills (/dev/full) or blocks (a FIFO):
  // results are resumed, rewritten and renamed over, which only a file allows.
  if (!S_ISREG(info.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": ", what,
        " is not a regular file (a device or a pipe): results are read again and replaced, so write them to a "
        "file"));
  }
  if (info.st_nlink <= 1) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      path, ": ", what, " has ", info.st_nlink,
      " names (hard links): a job writing it by another name would not be stopped by this job's lock (taken "
      "beside the name), and a rewrite replaces only this name, leaving the others with the old lines; copy it "
      "to a file of its own, or remove its other names"));
}

namespace {

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
                 .job_settings_hash = StringField(result, "job_settings_hash"),
                 .request_id = StringField(result, "request_id"),
                 .model_fingerprint = StringField(result, "model_fingerprint"),
                 .model = StringField(result, "model"),
                 .input_hash = StringField(result, "input_hash"),
                 .settings_used = SettingsUsedOf(result),
                 .reports_settings = ReportsSettings(result),
                 .length = static_cast<int64_t>(line.size())};
}

void UncheckedSettings::Add(const std::string& id, const std::string& settings_hash, const std::string& settings_used,
                            bool reports_settings) {
  OfHash& hash = hashes_[settings_hash];
  if (reports_settings) {
    hash.read_settings |= !settings_used.empty();
  } else if (hash.unreported++ == 0) {
    hash.first_unreported = id;
  }
}

void UncheckedSettings::Add(const DoneRow& row) {
  if (row.error_code.empty() && !row.settings_hash.empty()) {
    Add(row.id, row.settings_hash, row.settings_used, row.reports_settings);
  }
}

int64_t UncheckedSettings::count() const {
  int64_t count = 0;
  for (const auto& [settings_hash, hash] : hashes_) count += hash.read_settings ? hash.unreported : 0;
  return count;
}

std::string UncheckedSettings::Describe() const {
  std::string first;
  for (const auto& [settings_hash, hash] : hashes_) {
    if (hash.read_settings && hash.unreported > 0) {
      first = hash.first_unreported;
      break;
    }
  }
  if (first.empty()) return "";
  const int64_t rows = count();
  return absl::StrCat(rows, rows == 1 ? " row" : " rows", " (the first \"", TerminalSafe(first), "\") ",
                      rows == 1 ? "was" : "were",
                      " answered by servers that do not report the settings their method ran with (before "
                      "146fc40: no server_build), beside rows of the same settings that do: they may have run with "
                      "other defaults (a server limit below a default lowers it) and could not be checked; run "
                      "them again against the current servers (remove their lines) to be sure");
}

bool ReportsSettings(const nlohmann::json& result) {
  if (!result.contains("grid_values")) return result.contains("server_build");
  return result.value("method", "") != "layer_integrated_gradients" || result.contains("n_steps_used");
}

std::string SettingsUsedOf(const nlohmann::json& result) {
  nlohmann::json used = nlohmann::json::object();
  for (const auto& [key, value] : result.items()) {
    if (absl::EndsWith(key, "_used")) used[key] = value;
  }
  return used.empty() ? "" : used.dump();
}

absl::Status CheckResultIsOfRow(const DoneRow& result, const BatchRow& row, const std::string& where) {
  if (result.input_hash.empty()) return absl::OkStatus();
  const std::string input_hash = InputDigest(row);
  if (result.input_hash == input_hash) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(where, ": row \"", row.id, "\" done for another input (input_hash ", result.input_hash,
                   ", the input's ", input_hash,
                   "): its prompt, target, choices, label (a component row: clean, corrupted, answer, wrong_answer) or "
                   "settings changed since; run the row again"));
}

absl::StatusOr<std::unique_ptr<ResultLog>> ResultLog::Open(const std::string& path) {
  const std::string file = RealFilePath(path);
  // Checked before the lock too: no PATH.lock is left beside a directory's or a device's name (/dev/zero.lock).
  if (absl::Status regular = CheckResultsFile(file, "the results file"); !regular.ok()) return regular;
  absl::StatusOr<int> lock_fd = LockResults(file);
  if (!lock_fd.ok()) return lock_fd.status();
  // Checked with the lock held: of two jobs on one file's two names, the one that checks second sees both
  // names whenever the link was made before it, and stops.
  if (absl::Status one_name = CheckResultsFile(file, "the results file"); !one_name.ok()) {
    ::close(*lock_fd);
    return one_name;
  }
  absl::StatusOr<std::unique_ptr<ResultLog>> log = OpenLocked(path, file, *lock_fd);
  if (!log.ok()) ::close(*lock_fd);
  return log;
}

absl::StatusOr<std::unique_ptr<ResultLog>> ResultLog::OpenLocked(const std::string& path, const std::string& file,
                                                                 int lock_fd) {
  std::map<std::string, DoneRow> done;
  std::map<std::string, int64_t> line_of;  // id -> its kept line's number in the file as read
  std::vector<Piece> kept;                 // the kept lines' bytes in the file as read
  int64_t kept_lines = 0, kept_bytes = 0;
  bool rewrite = false;
  int open_error = 0;
  absl::StatusOr<LineReader> in = LineReader::Open(file, &open_error);
  if (!in.ok() && open_error != ENOENT) return in.status();
  for (Line line; in.ok();) {
    absl::StatusOr<bool> more = in->Next(line);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (!line.complete) {  // cut short by a kill (or zeros a crash left): never counted as done
      rewrite = true;
      break;
    }
    if (line.holds_nul) return NulByteError(absl::StrCat(path, ":", line.number));
    // A blank line (left by an edit) holds no result: dropped, as merge passes over it; it stopped the resume
    // as "not valid JSON".
    if (absl::StripAsciiWhitespace(line.text).empty()) {
      rewrite = true;
      continue;
    }
    absl::StatusOr<DoneRow> result = ParseResultLine(line.text, absl::StrCat(path, ":", line.number));
    if (!result.ok()) return result.status();
    if (RetriedOnResume(result->error_code, result->error_message)) {
      rewrite = true;
      continue;
    }
    if (auto [first, inserted] = line_of.emplace(result->id, line.number); !inserted) {
      return absl::DataLossError(absl::StrCat(path, ":", line.number, ": row \"", result->id,
                                              "\" already has a result on line ", first->second,
                                              ": the file holds two results of one row (two jobs wrote it?); "
                                              "keep one of the lines, or write to another file"));
    }
    AddCopy(kept, line.offset, result->length + 1);
    // Where the line is once the lines before it that are dropped are gone (where it is now, if none is).
    result->line = ++kept_lines;
    result->offset = kept_bytes;
    kept_bytes += result->length + 1;
    std::string id = result->id;
    done.emplace(std::move(id), std::move(*result));
  }
  if (rewrite) {
    // Only lines at the end dropped (a write cut short, the disk full): cut them off in place, under the lock.
    // A copy needed as much free space as the whole file, on the volume that had just filled up.
    const bool only_the_tail = kept.empty() || (kept.size() == 1 && kept[0].length > 0 && kept[0].offset == 0);
    if (only_the_tail && ::truncate(file.c_str(), kept_bytes) != 0) return FileError("cannot truncate", file, errno);
    if (!only_the_tail) {
      if (absl::Status replaced = ReplaceFile(file, kept); !replaced.ok()) {
        const int error = FileErrorNumber(replaced);
        if (error != ENOSPC && error != EDQUOT) return replaced;
        return absl::Status(replaced.code(),
                            absl::StrCat(replaced.message(), " (dropping lines rewrites ", file,
                                         ": it needs free space for the ", kept_bytes, " bytes kept)"));
      }
    }
  }
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd < 0) return FileError("cannot open", file, errno);
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

absl::Status ResultLog::Rewrite(const std::vector<RewrittenLine>& lines) {
  std::vector<Piece> pieces;
  struct Moved {
    std::string id;
    int64_t offset, line;  // in the new file
  };
  std::vector<Moved> moved;
  int64_t size = 0, number = 0;
  for (const RewrittenLine& line : lines) {
    ++number;
    if (line.done != nullptr) {
      AddCopy(pieces, line.done->offset, line.done->length + 1);
      moved.push_back({line.done->id, size, number});
      size += line.done->length + 1;
      continue;
    }
    if (pieces.empty() || pieces.back().length > 0) pieces.emplace_back();
    absl::StrAppend(&pieces.back().bytes, line.text, "\n");
    size += static_cast<int64_t>(line.text.size()) + 1;
  }
  if (absl::Status replaced = ReplaceFile(file_, pieces); !replaced.ok()) return replaced;
  for (const Moved& row : moved) {
    DoneRow& done = done_.at(row.id);
    done.offset = row.offset;
    done.line = row.line;
  }
  // The rename left fd_ on the old file's inode: later appends must reach the new one.
  const int fd = ::open(file_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return FileError("cannot open", file_, errno);
  ::close(fd_);
  fd_ = fd;
  return absl::OkStatus();
}

}  // namespace attribution::client::batch
