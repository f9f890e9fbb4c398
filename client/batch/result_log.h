// SPDX-License-Identifier: Apache-2.0
// The results file of a batch job: one JSON object per line and per row, appended in input order; each
// Append is one write(2) followed by fsync(2), so a row counts as done only once it is on disk.
// Reopening the file resumes the job: a last line cut short by a kill is dropped, and so are rows that
// failed only for lack of capacity (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED),
// which the resumed job tries again; the kept lines are rewritten through PATH.tmp and rename(2).
//
//   ASSIGN_OR_RETURN(auto log, ResultLog::Open("out.jsonl"));
//   if (!log->done().contains(row.id)) ... RETURN_IF_ERROR(log->Append({line}));
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::client::batch {

// Whether a row that ended with this status code is tried again when the job resumes.
bool RetriedOnResume(const std::string& code);

class ResultLog {
 public:
  static absl::StatusOr<std::unique_ptr<ResultLog>> Open(const std::string& path);
  ~ResultLog();

  // id -> settings_hash of the rows already done.
  const std::map<std::string, std::string>& done() const { return done_; }
  // Lines without their newline; written in one call and synced before it returns.
  absl::Status Append(const std::vector<std::string>& lines);

 private:
  ResultLog(std::string path, int fd, std::map<std::string, std::string> done);

  std::string path_;
  int fd_;
  std::map<std::string, std::string> done_;
};

}  // namespace attribution::client::batch
