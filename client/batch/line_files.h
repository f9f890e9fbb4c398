// SPDX-License-Identifier: Apache-2.0
// Results files read and written in bounded memory: a job's results can outgrow its pod's memory many times
// over (a 1 GiB limit, files of gigabytes), so resume, merge and --parquet read them a line at a time, keep
// where each line is, and copy lines by offset instead of holding their text.
//
//   ASSIGN_OR_RETURN(LineReader reader, LineReader::Open("out.jsonl"));
//   Line line;
//   while (*reader.Next(line)) ...  // (a read error is the StatusOr's)
//   ASSIGN_OR_RETURN(auto out, AtomicFileWriter::Create("merged.jsonl"));
//   RETURN_IF_ERROR(out->Copy(shard_fd, "shard.jsonl", line.offset, line.text.size() + 1));
//   RETURN_IF_ERROR(out->Commit());
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attribution::client::batch {

struct Line {
  std::string text;       // without its newline
  int64_t offset = 0;     // of its first byte in the file
  int64_t number = 0;     // 1-based
  bool complete = false;  // false: the file ends before its newline (a write cut short by a kill)
  // A NUL byte in the line: `text` ends before it, and the rest of the line was skipped, not kept. No line this
  // tool writes holds one (JSON escapes it); a crash's zero-filled tail does, and can be gigabytes long.
  bool holds_nul = false;
  int64_t length = 0;  // its bytes in the file, without its newline (more than text's with holds_nul)
};

// Which file an open descriptor reads, and in what state: a file replaced (renamed over) or written to since
// has another identity. Merge checks it, since it copies lines by offset from files it read earlier.
struct FileIdentity {
  uint64_t device = 0, inode = 0;
  int64_t size = 0, modified_ns = 0;
  bool operator==(const FileIdentity&) const = default;
};
// INTERNAL naming `path` when fstat(2) fails.
absl::StatusOr<FileIdentity> IdentityOfOpenFile(int fd, const std::string& path);

// A file's lines through a fixed buffer: what it holds is one line and 64 KiB, whatever the file's size (of a
// line that holds a NUL byte, only what comes before the NUL).
class LineReader {
 public:
  // NOT_FOUND "cannot read PATH: why" when the file cannot be opened (its errno in *error when given).
  static absl::StatusOr<LineReader> Open(const std::string& path, int* error = nullptr);
  LineReader(LineReader&& other) noexcept;
  LineReader& operator=(LineReader&&) = delete;
  ~LineReader();

  // The next line into `line`; false at the end of the file. NOT_FOUND "cannot read PATH: why" on a read
  // error (a directory reads as EISDIR).
  absl::StatusOr<bool> Next(Line& line);
  // The identity of the file being read (IdentityOfOpenFile).
  absl::StatusOr<FileIdentity> identity() const { return IdentityOfOpenFile(fd_, path_); }

 private:
  LineReader(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  std::string path_;
  int fd_;
  std::string buffer_;  // bytes read past the lines returned, from buffer_begin_
  size_t buffer_begin_ = 0;
  int64_t offset_ = 0;  // of buffer_[buffer_begin_] in the file
  int64_t number_ = 0;
  bool end_ = false;
};

// DATA_LOSS naming `where` (FILE:LINE) for a line that holds a NUL byte (Line::holds_nul): damaged, not a
// result line.
absl::Status NulByteError(const std::string& where);

// Appends `length` bytes at `offset` of `from_fd` to `to_fd` (pread and write through a bounded buffer).
// INTERNAL naming the file when a read or write fails, DATA_LOSS when `from` is shorter than that.
absl::Status CopyFileBytes(int from_fd, const std::string& from, int64_t offset, int64_t length, int to_fd,
                           const std::string& to);

// A file written whole or not at all: bytes go to a temporary of this writer's own beside the file `path`
// names (RealFilePath: through links; PATH.XXXXXX.tmp, so writers of one path never write into each other's),
// which Commit renames over it. Destroyed without a Commit, it removes the temporary.
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  // For a file only its lock's holder writes (a results file): the temporary is PATH.tmp, which the next
  // holder overwrites, so a writer killed before its Commit leaves one stray file at most, not one per kill.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> CreateWhileLocked(const std::string& path);
  // For a file written at the end of a job (a Parquet table), by no lock's holder: the temporary is PATH.tmp too,
  // locked (flock) while this writer lives, so a writer killed before its Commit leaves one stray file at most,
  // which the next writer takes over; FAILED_PRECONDITION while another writer holds it.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> CreateAlone(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Write(absl::string_view bytes);

  // Appends `length` bytes at `offset` of the open file `from_fd` (`from` in messages).
  absl::Status Copy(int from_fd, const std::string& from, int64_t offset, int64_t length);
  int64_t size() const { return size_; }
  // Syncs and closes the temporary and renames it over the file; readers see the old file or the whole new
  // one, also after a crash of the machine.
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string temporary, int fd)
      : path_(std::move(path)), temporary_(std::move(temporary)), fd_(fd) {}

  std::string path_, temporary_;
  int fd_;  // -1 once closed
  int64_t size_ = 0;
};

// The file `path` names, for locking and replacing it: symbolic links followed to their last target (which
// need not exist yet), and that target's folder made absolute with its own links, "." and ".." resolved.
// Renaming over a link would replace the link instead of the file it names, and a lock beside the link
// would not exclude a job writing the file by its real name.
std::string RealFilePath(const std::string& path);

// Writes `bytes` to `path` (RealFilePath: through links) through a temporary of this call's own beside it
// (PATH.XXXXXX.tmp) and a rename, so readers see the old file or the whole new one, even with other writers
// of `path` racing. A FIFO or a device at `path` is written into as it is (it cannot be renamed over).
absl::Status WriteAtomically(const std::string& path, const std::string& bytes);

// INTERNAL "WHAT PATH: strerror(error)", the error of a file operation that failed with `error` (an errno).
absl::Status FileError(const std::string& what, const std::string& path, int error);
// The errno a FileError carries (0 for any other status): callers choose by the error, not by its text.
int FileErrorNumber(const absl::Status& status);

// Writes all of `bytes` to `fd` (`path` in messages), through short writes and EINTR.
absl::Status WriteAllBytes(int fd, absl::string_view bytes, const std::string& path);

}  // namespace attribution::client::batch
