// SPDX-License-Identifier: Apache-2.0
// The results file of a batch job: one JSON object per line and per row, appended in input order; each
// Append is one write(2) followed by fsync(2), so a row counts as done only once it is on disk.
// Reopening the file resumes the job: a last line cut short by a kill is dropped, and so are rows that
// failed only for lack of capacity (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED),
// which the resumed job tries again; the kept lines are rewritten through PATH.tmp and rename(2).
// Rows tried again belong in the middle of the file: the job hands their lines to Rewrite, which
// replaces the whole file the same way, so a kill leaves either file and never a mix.
// Results files can be far larger than memory: the log keeps of each line what the job checks and where the
// line is (offset, length), never its text, and rewrites copy kept lines from the old file by offset.
// One job at a time writes a results file: Open takes an exclusive flock(2) on PATH.lock (not on the file,
// which Rewrite replaces) and holds it until the ResultLog is destroyed; the lock file stays behind. A file
// of several names (hard links), or that is no regular file, is refused (CheckResultsFile): a lock by name cannot cover
// its other names. PATH is the real file a given path names (RealFilePath: through symbolic links), so a job writing
// through a link and one writing the file itself exclude each other, and a rewrite replaces the file, not the link.
//
//   ASSIGN_OR_RETURN(auto log, ResultLog::Open("out.jsonl"));
//   if (!log->done().contains(row.id)) ... RETURN_IF_ERROR(log->Append({line}));
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/batch/batch_job.h"

namespace attribution::client::batch {

// Whether a call failed on a gRPC message size limit ("Received message larger than max", "Sent message
// larger than max"): RESOURCE_EXHAUSTED, but not the servers' load, and the same row fails the same way
// every time.
bool OverMessageLimit(absl::string_view code, absl::string_view message);

// How the message of a row's FAILED_PRECONDITION begins when a server answered it with weights other than the
// job's (another model_digest): no result of the row, which a rerun tries again.
inline constexpr absl::string_view kOtherWeights = "answered by other weights";

// How the message of a row's NOT_FOUND begins when no server answering ListModels at the start served the
// row's model: a deployment's state, not the row's, so a rerun (once the model is served) tries it again.
inline constexpr absl::string_view kModelNotServed = "model not served";

// Whether a row that ended with this error is tried again when the job resumes: UNAVAILABLE,
// RESOURCE_EXHAUSTED (unless OverMessageLimit), DEADLINE_EXCEEDED, CANCELLED, FAILED_PRECONDITION
// kOtherWeights and NOT_FOUND kModelNotServed.
bool RetriedOnResume(absl::string_view code, absl::string_view message);

// A result line's error code and message, "" when it has none (an ok row, or a line not written by this tool).
std::string ResultErrorCode(const nlohmann::json& result);
std::string ResultErrorMessage(const nlohmann::json& result);

// A result line: its row, how it ended, and what identifies the job that wrote it.
struct DoneRow {
  int64_t line = 0;  // 1-based, in the file as reopened
  std::string id;
  std::string error_code, error_message;  // "" for an ok row
  std::string settings_hash;              // "" when the line has none
  std::string job_settings_hash;          // of the job's settings, without the row's own; "" when none (older)
  std::string request_id;                 // "" when the line has none (a row whose settings did not merge)
  std::string model_fingerprint;          // "" when the line has none
  std::string model;                      // "" when the line has none
  std::string input_hash;                 // "" when the line has none (written before results carried it)
  std::string settings_used;              // SettingsUsedOf the line
  bool reports_settings = false;          // answered by a server that reports its settings used (server_build)
  int64_t offset = 0, length = 0;         // the line's bytes in the file (without its newline)
};

// Rows of one settings hash must have run with one set of settings, which only servers that report them (since
// 146fc40, beside server_build) let a job check. Rows of the others (a rolling update, a resume of an older
// file) mixed in unchecked: with a limit lowering a default on one release, 10 and 25 KernelSHAP samples under
// one hash, 0.031 apart. Counts the answered rows that could not be checked in hashes whose checked rows read
// settings (saliency reads none: nothing to check).
class UncheckedSettings {
 public:
  void Add(const std::string& id, const std::string& settings_hash, const std::string& settings_used,
           bool reports_settings);
  // A result line as read back (a resumed job's, a shard's): answered rows with a settings hash only.
  void Add(const DoneRow& row);
  int64_t count() const;
  // "" when count() is 0.
  std::string Describe() const;

 private:
  struct OfHash {
    bool read_settings = false;  // a row that reported them read some
    int64_t unreported = 0;
    std::string first_unreported;
  };
  std::map<std::string, OfHash> hashes_;
};

// Whether a result's server reported the settings its method ran with: an attribution row's since 146fc40 (which
// also brought server_build), a component row's since settings_used reached AttributeComponents (before it, servers
// already sent server_build there; layer integrated gradients always reads n_steps, the other methods none).
bool ReportsSettings(const nlohmann::json& result);

// The settings a result's method ran with (its "*_used" fields, from the answer's settings_used) as compact JSON
// with sorted keys, so that equal settings compare equal; "" when it has none (an error, a method that reads none, a
// server that does not report them: ReportsSettings).
std::string SettingsUsedOf(const nlohmann::json& result);

// `line` as a result this tool writes (a JSON object with a string "id", "status" "ok" or "error" with an
// error {code, message}); DATA_LOSS naming `where` (FILE:LINE) otherwise. The resumed job and merge both
// read lines through it.
absl::StatusOr<DoneRow> ParseResultLine(const std::string& line, const std::string& where);

// Whether `result` is the result of `row` as the input now has it (its input_hash; lines without one are
// not checked): FAILED_PRECONDITION naming `where` and the row when its prompt, target, choices, label or
// own settings changed since.
absl::Status CheckResultIsOfRow(const DoneRow& result, const BatchRow& row, const std::string& where);

// FAILED_PRECONDITION naming `path` (`what`: "the results file", "--output", ...) when what is there is a
// directory or not a regular file (a device, a pipe), or a file of more than one name (hard links): the lock is
// PATH.lock by name, so jobs writing one file by two names would both run and write its rows twice, and a
// rewrite (rename(2)) would replace one name only. OK when there is no file.
absl::Status CheckResultsFile(const std::string& path, absl::string_view what);

// An exclusive lock on PATH.lock (PATH: the real file, RealFilePath) for this process, or why not: another job
// writing to the same file (a replacement pod while the old one still runs, a second shell, a merge into it)
// would interleave and lose lines. Returns the lock file's descriptor, which holds the lock until closed.
absl::StatusOr<int> LockResults(const std::string& path);

// Not thread-safe: one writer.
class ResultLog {
 public:
  // FAILED_PRECONDITION naming the path when another process (or ResultLog) holds the file's lock;
  // DATA_LOSS naming the line when a line is not a result of this tool or repeats a row's id.
  static absl::StatusOr<std::unique_ptr<ResultLog>> Open(const std::string& path);
  ~ResultLog();

  const std::string& path() const { return path_; }
  // id -> the row's result, of the rows already done.
  const std::map<std::string, DoneRow>& done() const { return done_; }
  // Lines without their newline; written in one call and synced before it returns.
  absl::Status Append(const std::vector<std::string>& lines);
  // A line of the file Rewrite writes: a done row's line as the file holds it, or a new line.
  struct RewrittenLine {
    const DoneRow* done = nullptr;  // one of done(): copied from the file by its offset
    std::string text;               // when `done` is null: the line, without its newline
  };
  // Replaces the file with `lines` (through PATH.tmp, fsync and rename(2)); later Appends follow them, and
  // done() then says where its rows' lines are in the new file.
  absl::Status Rewrite(const std::vector<RewrittenLine>& lines);

 private:
  ResultLog(std::string path, std::string file, int fd, int lock_fd, std::map<std::string, DoneRow> done);
  // Open's work once the lock on `file` (the real file `path` names) is held; on success the ResultLog owns
  // `lock_fd`.
  static absl::StatusOr<std::unique_ptr<ResultLog>> OpenLocked(const std::string& path, const std::string& file,
                                                               int lock_fd);

  std::string path_;  // as given, for messages
  std::string file_;  // RealFilePath(path_): the file locked, read, appended to and replaced
  int fd_;            // O_APPEND, on the file now at path_
  int lock_fd_;       // PATH.lock, flock(LOCK_EX) held while this object lives
  std::map<std::string, DoneRow> done_;
};

}  // namespace attribution::client::batch
