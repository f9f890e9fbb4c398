// SPDX-License-Identifier: Apache-2.0
// Reading results files a line at a time and copying lines by offset (client/batch/line_files.h).
#include "client/batch/line_files.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<Line> ReadLines(const std::string& path) {
  absl::StatusOr<LineReader> reader = LineReader::Open(path);
  EXPECT_THAT(reader, IsOk());
  std::vector<Line> lines;
  if (!reader.ok()) return lines;
  for (Line line;;) {
    absl::StatusOr<bool> more = reader->Next(line);
    EXPECT_THAT(more, IsOk());
    if (!more.ok() || !*more) break;
    lines.push_back(line);
  }
  return lines;
}

// Lines longer than the reader's buffer, empty lines, and a last line cut short, each with its offset.
TEST(LineReader, GivesEachLineWithItsOffsetAndWhetherItEnded) {
  TempDir dir;
  const std::string path = dir.File("lines.jsonl");
  const std::string long_line(200000, 'x');  // three buffers' worth
  std::ofstream(path) << "a\n" << long_line << "\n\nlast";
  const std::vector<Line> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0].text, "a");
  EXPECT_EQ(lines[1].text, long_line);
  EXPECT_EQ(lines[1].offset, 2);
  EXPECT_EQ(lines[2].text, "");
  EXPECT_EQ(lines[2].offset, 200003);
  EXPECT_EQ(lines[3].text, "last");
  EXPECT_EQ(lines[3].number, 4);
  EXPECT_TRUE(lines[2].complete);
  EXPECT_FALSE(lines[3].complete);
  std::ofstream(dir.File("empty.jsonl")).flush();
  EXPECT_TRUE(ReadLines(dir.File("empty.jsonl")).empty());
}

TEST(LineReader, ADirectoryOrAMissingFileIsNamed) {
  TempDir dir;
  EXPECT_THAT(LineReader::Open(dir.File("missing")).status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("cannot read " + dir.File("missing"))));
  absl::StatusOr<LineReader> folder = LineReader::Open(dir.path());
  ASSERT_THAT(folder, IsOk());
  Line line;
  EXPECT_THAT(folder->Next(line).status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("cannot read " + dir.path() + ": Is a directory")));
}

// Copies by offset land whole in the new file, which replaces the old one only on Commit.
// Merge copies lines by the offsets it read earlier, so it checks that a shard is still the file it read: one
// renamed over it (a resumed shard job's rewrite) or appended to has another identity, an untouched one the same.
TEST(LineReader, TellsAFileReplacedOrAppendedToFromTheSameFile) {
  TempDir dir;
  const std::string path = dir.File("shard.jsonl"), other = dir.File("other.jsonl");
  std::ofstream(path) << "a\n";
  std::ofstream(other) << "b\n";
  absl::StatusOr<LineReader> reader = LineReader::Open(path);
  ASSERT_THAT(reader, IsOk());
  const absl::StatusOr<FileIdentity> read = reader->identity();
  ASSERT_THAT(read, IsOk());
  auto identity_now = [&path] {
    absl::StatusOr<LineReader> again = LineReader::Open(path);
    return again.ok() ? again->identity() : again.status();
  };
  EXPECT_EQ(*identity_now(), *read);
  ASSERT_EQ(std::rename(other.c_str(), path.c_str()), 0);
  EXPECT_NE(*identity_now(), *read);
  const absl::StatusOr<FileIdentity> replaced = identity_now();
  std::ofstream(path, std::ios::app) << "c\n";
  EXPECT_NE(*identity_now(), *replaced);
}

TEST(AtomicFileWriter, CopiesLinesByOffsetAndReplacesTheFileOnlyOnCommit) {
  TempDir dir;
  const std::string from = dir.File("from.jsonl"), to = dir.File("to.jsonl");
  std::ofstream(from) << "first\nsecond\n";
  std::ofstream(to) << "old\n";
  const int fd = ::open(from.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  {
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(to);
    ASSERT_THAT(out, IsOk());
    ASSERT_THAT((*out)->Copy(fd, from, 6, 7), IsOk());
    EXPECT_THAT((*out)->Copy(fd, from, 6, 100), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(from)));
  }  // no Commit: the old file stays
  EXPECT_EQ(ReadFile(to), "old\n");
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(to);
  ASSERT_THAT(out, IsOk());
  ASSERT_THAT((*out)->Copy(fd, from, 6, 7), IsOk());
  ASSERT_THAT((*out)->Write("new\n"), IsOk());
  ASSERT_THAT((*out)->Copy(fd, from, 0, 6), IsOk());
  ASSERT_THAT((*out)->Commit(), IsOk());
  EXPECT_EQ(ReadFile(to), "second\nnew\nfirst\n");
  ::close(fd);
}

// A crash of the machine can leave a results file with a tail of zeros gigabytes long: a line is kept only up to
// its first NUL byte (no result line holds one), the rest skipped, so resume, merge and --parquet read such a
// tail in a buffer's memory. Before, the whole tail was held as one line (1.65 GB to resume an 800 MB tail).
TEST(LineReader, KeepsALineOnlyUpToItsFirstNulByte) {
  TempDir dir;
  const std::string path = dir.File("zeros.jsonl");
  const std::string zeros(300000, '\0');  // several buffers' worth
  std::ofstream(path, std::ios::binary) << "a\nb" << zeros << "c\nd" << zeros;
  const std::vector<Line> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_FALSE(lines[0].holds_nul);
  EXPECT_EQ(lines[1].text, "b");
  EXPECT_TRUE(lines[1].holds_nul);
  EXPECT_TRUE(lines[1].complete);
  EXPECT_EQ(lines[1].length, 300002);
  EXPECT_EQ(lines[2].offset, 300005);
  EXPECT_EQ(lines[2].text, "d");
  EXPECT_TRUE(lines[2].holds_nul);
  EXPECT_FALSE(lines[2].complete);
  EXPECT_EQ(lines[2].length, 300001);
}

// The Parquet table's writer writes through PATH.tmp, locked while it writes: what a writer killed before its
// Commit left there is taken over, and a second writer while one writes is refused. Before, each kill left a
// PATH.XXXXXX.tmp of its own that no later run removed.
TEST(AtomicFileWriter, AWriterAloneTakesOverTheTemporaryALeftOneLeft) {
  TempDir dir;
  const std::string path = dir.File("table.parquet");
  std::ofstream(path + ".tmp") << "left by a writer killed before its Commit";
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::CreateAlone(path);
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(AtomicFileWriter::CreateAlone(path).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("another job is writing this file now")));
  ASSERT_THAT((*out)->Write("new"), IsOk());
  ASSERT_THAT((*out)->Commit(), IsOk());
  EXPECT_EQ(ReadFile(path), "new");
  EXPECT_FALSE(std::ifstream(path + ".tmp").good());
}

// A fixed temporary that is a symbolic link wrote the results (or emptied the table's) into its target, then
// renamed the link into place; a FIFO there hung the job; a hard link's other name was emptied.
TEST(AtomicFileWriter, AFixedTemporaryIsAFileOfItsOwnOrRefused) {
  TempDir dir;
  const std::string victim = dir.File("victim.txt");
  std::ofstream(victim) << "precious data";
  const std::string path = dir.File("results.jsonl"), temporary = path + ".tmp";
  // Both writers refuse what lies at `temporary`, which is then removed.
  const auto expect_refused = [&](const char* kind) {
    EXPECT_THAT(AtomicFileWriter::CreateWhileLocked(path).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a file of its own")))
        << kind;
    EXPECT_THAT(AtomicFileWriter::CreateAlone(path).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a file of its own")))
        << kind;
    ::unlink(temporary.c_str());
  };
  ASSERT_EQ(::symlink(victim.c_str(), temporary.c_str()), 0);
  expect_refused("a symbolic link");
  ASSERT_EQ(::link(victim.c_str(), temporary.c_str()), 0);
  expect_refused("a hard link");
  ASSERT_EQ(::mkfifo(temporary.c_str(), 0600), 0);
  expect_refused("a FIFO");
  EXPECT_EQ(ReadFile(victim), "precious data");
  // A regular one a killed writer left is taken over.
  std::ofstream(temporary) << "left over";
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::CreateWhileLocked(path);
  ASSERT_THAT(out, IsOk());
  ASSERT_THAT((*out)->Write("new"), IsOk());
  ASSERT_THAT((*out)->Commit(), IsOk());
  EXPECT_EQ(ReadFile(path), "new");
}

// A FIFO (or a device) cannot be renamed over: it receives the bytes, and stays what it was; a directory is
// refused naming it.
TEST(WriteAtomically, WritesIntoAFifoAndRefusesADirectory) {
  TempDir dir;
  const std::string fifo = dir.File("report.html");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string read;
  std::thread reader([&] { read = ReadFile(fifo); });
  EXPECT_THAT(WriteAtomically(fifo, "<html>report</html>"), IsOk());
  reader.join();
  EXPECT_EQ(read, "<html>report</html>");
  struct stat after;
  ASSERT_EQ(::stat(fifo.c_str(), &after), 0);
  EXPECT_TRUE(S_ISFIFO(after.st_mode));
  EXPECT_THAT(WriteAtomically("/dev/null", "discarded"), IsOk());
  const std::string folder = dir.File("folder");
  ASSERT_EQ(::mkdir(folder.c_str(), 0700), 0);
  EXPECT_THAT(WriteAtomically(folder, "x"),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("cannot replace " + folder + ": Is a directory")));
}

// The errno a file operation failed with is carried with its status, for callers that choose by it.
TEST(FileErrorNumber, IsTheErrnoOfAFileErrorAndZeroOtherwise) {
  EXPECT_EQ(FileErrorNumber(FileError("cannot write", "/tmp/x", ENOSPC)), ENOSPC);
  EXPECT_EQ(FileErrorNumber(FileError("cannot rename over", "/tmp/x", EDQUOT)), EDQUOT);
  EXPECT_EQ(FileErrorNumber(absl::InternalError("cannot write /tmp/x: No space left on device")), 0);
  EXPECT_EQ(FileErrorNumber(absl::OkStatus()), 0);
}

}  // namespace
}  // namespace attribution::client::batch
