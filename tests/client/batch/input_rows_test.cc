// SPDX-License-Identifier: Apache-2.0
// A job's rows read in bounded memory (client/batch/input_rows.h): each row read again by offset is the row
// checked (CSV records across lines, byte order marks, shards), errors come as when files were read whole,
// and a file changed since it was checked is refused, never mixed.
#include "client/batch/input_rows.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Write(const TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.File(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::vector<std::string> Ids(const JobRows& rows) {
  std::vector<std::string> ids;
  for (size_t i = 0; i < rows.size(); ++i) {
    absl::StatusOr<BatchRow> row = rows.Row(i);
    ids.push_back(row.ok() ? row->id : std::string(row.status().message()));
  }
  return ids;
}

// Offsets follow the CSV parser's records, not lines: a quoted field across lines, "\r\n" ends and blank
// lines between records read back as the records they were, each shard taking every other row.
// A repeated column or choice is named by its first repeat and the value it repeats.
TEST(FirstRepeat, NamesTheFirstValueSeenBeforeAndWhere) {
  EXPECT_EQ(FirstRepeat({}), std::nullopt);
  EXPECT_EQ(FirstRepeat({"a", "b", "c"}), std::nullopt);
  EXPECT_EQ(FirstRepeat({"a", "b", "b", "a"}), std::make_pair(size_t{2}, size_t{1}));
  EXPECT_EQ(FirstRepeat({"x", "A", "a", "x"}), std::make_pair(size_t{3}, size_t{0}));
}

TEST(InputRows, CsvRecordsAcrossLinesReadBackByOffset) {
  TempDir dir;
  const std::string csv = Write(dir, "rows.csv",
                                "\xEF\xBB\xBFid,prompt,target\r\n"
                                "a,\"two\nlines, \"\"quoted\"\"\", Yes\r\n"
                                "\n"
                                "b,Is a 5\" screen big?, No\n"
                                "c,\"three\n\nlines\", Yes");
  absl::StatusOr<std::unique_ptr<InputRows>> all = InputRows::Open(csv);
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ((*all)->size(), 3u);
  absl::StatusOr<BatchRow> a = (*all)->Row(0), b = (*all)->Row(1), c = (*all)->Row(2);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(a->prompt, "two\nlines, \"quoted\"");
  EXPECT_EQ(a->target, " Yes");
  EXPECT_EQ(a->line, 2);
  EXPECT_EQ(b->prompt, "Is a 5\" screen big?");
  EXPECT_EQ(b->line, 5);
  EXPECT_EQ(c->prompt, "three\n\nlines");
  EXPECT_EQ(c->line, 6);
  absl::StatusOr<std::unique_ptr<InputRows>> odd = InputRows::Open(csv, 1, 2);
  ASSERT_THAT(odd, IsOk());
  EXPECT_THAT(Ids(**odd), ElementsAre("b"));
  const std::string jsonl = Write(dir, "rows.jsonl",
                                  "\xEF\xBB\xBF{\"id\": \"a\", \"prompt\": \"p\"}\n\n"
                                  "{\"id\": 7, \"prompt\": \"q\", \"settings\": {\"model\": \"other\"}}\r\n"
                                  "{\"id\": \"c\", \"prompt\": \"r\", \"settings\": {\"model\": \"other\"}}");
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(jsonl);
  ASSERT_THAT(rows, IsOk());
  EXPECT_THAT(Ids(**rows), ElementsAre("a", "7", "c"));
  EXPECT_EQ((*rows)->Row(2)->line, 4);
  EXPECT_THAT((*rows)->models(), ElementsAre("other"));
}

// A repeated id is found across shards (each pod reads the whole file), naming both lines; a bad row is
// reported before it, and an unclosed quote before a bad row (as when the whole file was parsed first).
TEST(InputRows, ErrorsComeAsWhenTheFileWasReadWhole) {
  TempDir dir;
  const std::string repeated = Write(dir, "repeated.jsonl",
                                     "{\"id\": \"a\", \"prompt\": \"p\"}\n"
                                     "{\"id\": \"b\", \"prompt\": \"p\"}\n"
                                     "{\"id\": \"c\", \"prompt\": \"p\"}\n"
                                     "{\"id\": \"b\", \"prompt\": \"p\"}\n"
                                     "{\"id\": \"a\", \"prompt\": \"p\"}\n");
  for (int shard = 0; shard < 2; ++shard) {
    EXPECT_THAT(InputRows::Open(repeated, shard, 2).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("repeated.jsonl:4: id \"b\" repeats line 2")));
  }
  const std::string bad_then_repeated = Write(dir, "bad.jsonl",
                                              "{\"id\": \"a\", \"prompt\": \"p\"}\n"
                                              "{\"id\": \"a\", \"prompt\": \"p\"}\n"
                                              "{\"id\": \"b\", \"prompt\": 3}\n");
  EXPECT_THAT(InputRows::Open(bad_then_repeated).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.jsonl:3: \"prompt\" must be a string")));
  const std::string unclosed = Write(dir, "unclosed.csv", "id,prompt\na,p,extra\nb,\"never closed\n");
  EXPECT_THAT(InputRows::Open(unclosed).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unclosed.csv:3: unclosed quote")));
  const std::string text = Write(dir, "rows.txt", "id,prompt\n");
  EXPECT_THAT(InputRows::Open(text).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows.txt: rows come as .jsonl or .csv")));
  EXPECT_THAT(InputRows::Open(dir.File("missing.csv")).status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("cannot read")));
}

// A file rewritten in place after its rows were checked (a job started on a file still being written) would
// have the job send rows of two files: the rows are refused. A file renamed over the path is another file;
// the job reads on the one it checked.
TEST(InputRows, AFileChangedSinceItWasCheckedIsRefused) {
  TempDir dir;
  const std::string original = "id,prompt,target\na,first, Yes\nb,second, Yes\n";
  const std::string csv = Write(dir, "rows.csv", original);
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(csv);
  ASSERT_THAT(rows, IsOk());
  ASSERT_THAT((*rows)->Row(1), IsOk());
  std::ofstream(csv, std::ios::binary | std::ios::app) << "c,third, Yes\n";  // the same file, grown
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_THAT((*rows)->Row(i).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         HasSubstr("rows.csv: the input changed while the job read it (is it being written?)")));
  }
}

// The same size and modification time (a kernel without fine-grained timestamps stamps writes within one tick
// alike): the file's identity is unchanged, and the row whose bytes changed is refused by its content digest.
TEST(InputRows, ARowRewrittenInPlaceIsRefusedByItsContent) {
  TempDir dir;
  const std::string csv = Write(dir, "rows.csv", "id,prompt,target\na,first, Yes\nb,second, Yes\n");
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(csv);
  ASSERT_THAT(rows, IsOk());
  struct stat before {};
  ASSERT_EQ(::stat(csv.c_str(), &before), 0);
  std::ofstream(csv, std::ios::binary | std::ios::trunc) << "id,prompt,target\na,first, Yes\nb,SECOND, Yes\n";
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, csv.c_str(), times, 0), 0);
  EXPECT_THAT((*rows)->Row(0), IsOk());
  EXPECT_THAT((*rows)->Row(1).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rows.csv: the input changed")));
}

TEST(InputRows, AFileRenamedOverThePathIsReadOnAsChecked) {
  TempDir dir;
  const std::string csv = Write(dir, "renamed.csv", "id,prompt,target\na,first, Yes\nb,second, Yes\n");
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(csv);
  ASSERT_THAT(rows, IsOk());
  ASSERT_EQ(std::rename(Write(dir, "new.csv", "id,prompt,target\nx,other, No\n").c_str(), csv.c_str()), 0);
  EXPECT_THAT(Ids(**rows), ElementsAre("a", "b"));
}

// A pipe cannot be read twice (pread failed with "Illegal seek", which named no cause); a directory is the
// error it always was.
TEST(InputRows, AnInputThatIsNoRegularFileIsRefusedNamingWhy) {
  TempDir dir;
  const std::string fifo = dir.File("rows.jsonl");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const int writer = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC);  // so that opening it to read does not wait
  ASSERT_GE(writer, 0);
  EXPECT_THAT(InputRows::Open(fifo).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("rows.jsonl: the input must be a regular file (it is read twice, by offset)")));
  ::close(writer);
  EXPECT_THAT(InputRows::Open(dir.path()).status(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("Is a directory")));
}

// A quote left open swallowed the rest of the file into one field, held whole before the error: a row past
// what a request may carry is refused as it is read. A bad header is reported after an unclosed quote, as
// when the whole file was parsed first.
TEST(InputRows, ARowPastWhatARequestCarriesIsRefusedAsItIsRead) {
  TempDir dir;
  const std::string open_quote =
      Write(dir, "open.csv", "id,prompt\na,\"5 inch\n" + std::string((int64_t{64} << 20) + 10, 'x') + "\n");
  EXPECT_THAT(InputRows::Open(open_quote).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("open.csv:2: the row is over 64 MiB")));
  const std::string long_line =
      Write(dir, "long.jsonl", "{\"id\": \"a\", \"prompt\": \"" + std::string((int64_t{64} << 20) + 10, 'x'));
  EXPECT_THAT(InputRows::Open(long_line).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("long.jsonl:1: the row is over 64 MiB")));
  const std::string header = Write(dir, "header.csv", "id,prompt,prompt\na,\"never closed\n");
  EXPECT_THAT(InputRows::Open(header).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("header.csv:2: unclosed quote")));
}

// A component row (clean, corrupted, answer, wrong_answer) is read as one, from JSONL or CSV (an empty
// wrong_answer cell: not given); a row mixing its keys with an attribution row's, or missing one it needs,
// is refused naming the line and the key, where it would otherwise be sent as the other kind.
TEST(InputRows, ComponentRowsAndRowsOfBothKindsAtOnce) {
  TempDir dir;
  absl::StatusOr<std::vector<BatchRow>> rows =
      ReadRows(Write(dir, "pairs.jsonl",
                     R"({"id":"a","clean":"The cup is red.","corrupted":"The cup is blue.","answer":" Yes",)"
                     R"("wrong_answer":" No"})"
                     "\n"
                     R"({"id":"b","prompt":"The cup is red.","target":" Yes"})"
                     "\n"));
  ASSERT_THAT(rows, IsOk());
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_TRUE((*rows)[0].components());
  EXPECT_EQ((*rows)[0].prompt, "The cup is red.");
  EXPECT_EQ((*rows)[0].corrupted, "The cup is blue.");
  EXPECT_EQ((*rows)[0].answer, " Yes");
  EXPECT_EQ((*rows)[0].wrong_answer, " No");
  EXPECT_FALSE((*rows)[1].components());

  rows = ReadRows(Write(dir, "pairs.csv",
                        "id,clean,corrupted,answer,wrong_answer\n"
                        "a,The cup is red.,The cup is blue.,\" Yes\",\n"));
  ASSERT_THAT(rows, IsOk());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].corrupted, "The cup is blue.");
  EXPECT_EQ((*rows)[0].answer, " Yes");
  EXPECT_EQ((*rows)[0].wrong_answer, std::nullopt);

  const std::pair<std::string, std::string> refused[] = {
      {R"({"id":"a","clean":"x","corrupted":"y","answer":" A","target":" B"})",
       "rows.jsonl:1: \"target\" is not read by a component row"},
      {R"({"id":"a","prompt":"x","clean":"x","corrupted":"y","answer":" A"})",
       "rows.jsonl:1: \"prompt\" is not read by a component row"},
      {R"({"id":"a","prompt":"x","answer":" A"})", "rows.jsonl:1: \"answer\" belongs to a component row"},
      {R"({"id":"a","clean":"x","answer":" A"})", "rows.jsonl:1: a component row needs \"corrupted\""},
      {R"({"id":"a","clean":"x","corrupted":"y"})", "rows.jsonl:1: a component row needs \"answer\""},
      {R"({"id":"a","clean":"x","corrupted":["y"],"answer":" A"})", "rows.jsonl:1: \"corrupted\" must be a string"},
      {R"({"id":"a","clean":"","corrupted":"y","answer":" A"})", "rows.jsonl:1: \"clean\" is empty"},
      {R"({"id":"a","clean":"x","corrupted":"y","answer":""})", "rows.jsonl:1: \"answer\" is empty"},
      {R"({"id":"a","clean":"x","corrupted":"y","answer":" A","wrong_answer":""})",
       "rows.jsonl:1: \"wrong_answer\" is empty"},
  };
  for (const auto& [row, message] : refused) {
    EXPECT_THAT(ReadRows(Write(dir, "rows.jsonl", row + "\n")).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(message)))
        << row;
  }
}

// Every header name must be a column rows have: refused at line 1 naming it, with no rows too. Before, "ID" failed
// at the first row as an unknown "key" on line 2, and a file without rows passed with 0 rows.
TEST(InputRows, AHeaderNameThatIsNoColumnIsRefusedAtTheHeader) {
  TempDir dir;
  for (const auto& [header, column] :
       std::vector<std::pair<std::string, std::string>>{{"ID,Prompt,Target\n", "column 1 of the header, \"ID\","},
                                                        {"id, prompt\n", "column 2 of the header, \" prompt\","},
                                                        {"id,prompt,\n", "column 3 of the header, \"\","},
                                                        {"id,,prompt\n", "column 2 of the header, \"\","}}) {
    const std::string path = Write(dir, "rows.csv", header);
    EXPECT_THAT(InputRows::Open(path).status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("rows.csv:1: " + column + " is not a column rows have (id, prompt")))
        << header;
    EXPECT_THAT(InputRows::Open(Write(dir, "rows.csv", header + "a,b,c\n")).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows.csv:1: ")));
  }
}

}  // namespace
}  // namespace attribution::client::batch
