// SPDX-License-Identifier: Apache-2.0
// A job's input rows in bounded memory. Data sets outgrow a pod's memory (a 1 GiB limit, each shard's pod
// reading the whole file): holding every row parsed took 7.5 times the file (a 100 MB CSV, 756 MB). The
// file is read once, a record at a time, to check every row (the same errors, naming the line, and ids
// repeated), keeping of each row only where it is and digests of its id and content; a row is read again,
// by offset, when it is about to be sent. A file changed since the check is refused, never mixed.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<InputRows> rows, InputRows::Open("facts.csv", shard, shards));
//   ASSIGN_OR_RETURN(BatchRow row, rows->Row(0));  // from the file, checked to be the row checked
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "client/batch/batch_job.h"
#include "client/batch/line_files.h"

namespace attribution::client::batch {

// The rows a job runs, in input order. Row may be called from several threads at once.
class JobRows {
 public:
  virtual ~JobRows() = default;
  virtual size_t size() const = 0;
  // Row `i` in full; FAILED_PRECONDITION when its file changed since the rows were checked.
  virtual absl::StatusOr<BatchRow> Row(size_t i) const = 0;
  // IdDigest of row `i`'s id, known without reading the row: only rows whose digest is among the ids of
  // results already written need reading to be matched with them.
  virtual uint64_t IdDigestOf(size_t i) const = 0;
  // The models rows name in their own settings (that merge), each once, in the order first named.
  const std::vector<std::string>& models() const { return models_; }

 protected:
  // Adds the model `row` names to models(), if any.
  void NoteModel(const BatchRow& row);

 private:
  std::vector<std::string> models_;
};

// A 64-bit digest of a row's id (FNV-1a).
uint64_t IdDigest(const std::string& id);

// Rows held in memory (tests; small jobs built in code).
class RowsInMemory final : public JobRows {
 public:
  explicit RowsInMemory(std::vector<BatchRow> rows);
  size_t size() const override { return rows_.size(); }
  absl::StatusOr<BatchRow> Row(size_t i) const override { return rows_[i]; }
  uint64_t IdDigestOf(size_t i) const override { return IdDigest(rows_[i].id); }

 private:
  std::vector<BatchRow> rows_;
};

// The rows of a .jsonl / .csv file (by extension), of one shard of it: rows i with i % shard_count ==
// shard_index (0-based input order). Holds the file open; per row 40 bytes, whatever the row's size.
class InputRows final : public JobRows {
 public:
  // Reads and checks every row of the file (all shards': a repeated id is an error in any of them). A row
  // that does not parse, a row without id or prompt, or an id seen before fails it, naming the line (as
  // ReadRows); FAILED_PRECONDITION when the file changes while it is read.
  static absl::StatusOr<std::unique_ptr<InputRows>> Open(const std::string& path, int shard_index = 0,
                                                         int shard_count = 1);
  ~InputRows() override;
  InputRows(const InputRows&) = delete;
  InputRows& operator=(const InputRows&) = delete;

  size_t size() const override { return rows_.size(); }
  absl::StatusOr<BatchRow> Row(size_t i) const override;
  uint64_t IdDigestOf(size_t i) const override { return rows_[i].id_digest; }

 private:
  // Where a row is and what it was when checked.
  struct Located {
    int64_t offset = 0;  // of its record's first byte
    int64_t line = 0;    // 1-based, where the record starts
    uint64_t id_digest = 0;
    uint64_t content_digest = 0;  // of the JSONL line's bytes, or of the CSV record's fields
    uint32_t length = 0;          // the record's bytes, without its line end
  };
  InputRows(std::string path, bool csv) : path_(std::move(path)), csv_(csv) {}

  std::string path_;
  bool csv_;
  int fd_ = -1;                      // the file as checked, read by offset
  FileIdentity identity_;            // of fd_ once checked: another later means the file changed
  std::vector<std::string> header_;  // CSV: the header's column names
  // A deque, not a vector: growing it never holds the old and the new copy at once (60% more at the peak).
  std::deque<Located> rows_;
};

// The first value of `values` that repeats an earlier one: (its index, the earlier one's), in time linear in
// the values (a header of 100,000 columns took 33 s pairwise).
std::optional<std::pair<size_t, size_t>> FirstRepeat(const std::vector<std::string>& values);

// All rows of a .jsonl / .csv file, parsed (InputRows, read whole): for tests and small files.
absl::StatusOr<std::vector<BatchRow>> ReadRows(const std::string& path);

}  // namespace attribution::client::batch
