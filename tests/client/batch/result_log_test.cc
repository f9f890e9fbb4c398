// SPDX-License-Identifier: Apache-2.0
// Reopening a results file (client/batch/result_log.h) that holds hostile lines: refused naming the line,
// never a crash. Rewrites copy kept lines by offset, and say where they moved.
#include "client/batch/result_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "client/batch/batch_job.h"
#include "client/batch/line_files.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

// A value nested a million deep overflowed the stack where the line's fields were copied (exit 139).
// Component answers carried server_build before they carried settings_used: such a layer integrated gradients row
// (n_steps unset, lowered by a server's max_steps) reports nothing, so a job counts it as unchecked.
TEST(ReportsSettings, ByTheServerBuildOfAttributionRowsAndTheStepsOfLayerIntegratedGradients) {
  using nlohmann::json;
  EXPECT_TRUE(ReportsSettings(json{{"attribution", {0.5}}, {"server_build", "146fc405e291"}}));
  EXPECT_FALSE(ReportsSettings(json{{"attribution", {0.5}}}));
  const json layer_ig = {
      {"grid_values", json::array()}, {"method", "layer_integrated_gradients"}, {"server_build", "146fc405e291"}};
  EXPECT_FALSE(ReportsSettings(layer_ig));
  json with_steps = layer_ig;
  with_steps["n_steps_used"] = 16;
  EXPECT_TRUE(ReportsSettings(with_steps));
  EXPECT_TRUE(ReportsSettings(json{{"grid_values", json::array()}, {"method", "activation_patching"}}));
}

TEST(ResultLog, ADeeplyNestedLineIsRefusedNamingIt) {
  TempDir dir;
  const std::string path = dir.File("out.jsonl");
  std::ofstream(path) << R"({"id":"r0","status":"ok"})"
                      << "\n"
                      << R"({"id":"r1","status":)" << std::string(1000000, '[') << std::string(1000000, ']') << "}\n";
  EXPECT_THAT(
      ResultLog::Open(path).status(),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path + ":2: objects and arrays nested more than 64 deep")));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The log keeps where each line is, not its text: reopening drops a row left for a rerun and a last line
// cut short, and each rewrite (a retried row put back in its place, then another order) copies every kept
// line whole from where the file before it held it.
TEST(ResultLog, RewritesCopyKeptLinesFromWhereTheyAre) {
  TempDir dir;
  const std::string path = dir.File("out.jsonl");
  const std::string r0 = R"({"id":"r0","status":"ok","attribution":[0.5]})",
                    r1 = R"({"id":"r1","status":"error","error":{"code":"UNAVAILABLE","message":"down"}})",
                    r2 = R"({"id":"r2","status":"ok","attribution":[0.25,0.75]})";
  std::ofstream(path) << r0 << "\n"
                      << r1 << "\n"
                      << "\n"  // a blank line left by an edit holds no result: dropped
                      << r2 << "\n"
                      << R"({"id":"r3","sta)";
  absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(path);
  ASSERT_THAT(log, IsOk());
  EXPECT_EQ(ReadFile(path), r0 + "\n" + r2 + "\n");
  ASSERT_EQ((*log)->done().size(), 2u);
  const DoneRow& done0 = (*log)->done().at("r0");
  const DoneRow& done2 = (*log)->done().at("r2");
  EXPECT_EQ(done2.offset, static_cast<int64_t>(r0.size() + 1));
  const std::string r1_again = R"({"id":"r1","status":"ok","attribution":[1.0]})";
  ASSERT_THAT((*log)->Rewrite({{.done = &done0}, {.text = r1_again}, {.done = &done2}}), IsOk());
  EXPECT_EQ(ReadFile(path), r0 + "\n" + r1_again + "\n" + r2 + "\n");
  EXPECT_EQ(done2.offset, static_cast<int64_t>(r0.size() + r1_again.size() + 2));
  EXPECT_EQ(done2.line, 3);
  ASSERT_THAT((*log)->Rewrite({{.done = &done2}, {.done = &done0}}), IsOk());
  ASSERT_THAT((*log)->Append({r1_again}), IsOk());
  EXPECT_EQ(ReadFile(path), r2 + "\n" + r0 + "\n" + r1_again + "\n");
}

// A crash's zero-filled tail is a last line cut short: dropped as one, reading it in bounded memory (LineReader);
// zeros inside the file, before a newline, are damage named by its line, not "not valid JSON".
TEST(ResultLog, ATailOfZerosIsDroppedAndZerosInsideAreNamed) {
  TempDir dir;
  const std::string path = dir.File("out.jsonl");
  const std::string line = R"({"id":"a","status":"ok"})";
  std::ofstream(path, std::ios::binary) << line << "\n" << std::string(200000, '\0');
  {
    absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(path);
    ASSERT_THAT(log, IsOk());
    EXPECT_EQ((*log)->done().size(), 1u);
  }
  EXPECT_EQ(ReadFile(path), line + "\n");
  std::ofstream(path, std::ios::binary) << line << std::string(10, '\0') << "\n";
  EXPECT_THAT(ResultLog::Open(path).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("out.jsonl:1: the line holds a NUL byte")));
}

// A last line cut short by a full disk is cut off in place: resuming needed free space for a copy of the whole
// file on the volume that had just filled up. The file stays the same file, with its mode; a rewrite that drops
// lines elsewhere gives its replacement the mode and group of the file it replaces (a private 0600 file came
// back 0644), and a new file takes the umask.
TEST(ResultLog, ATornTailIsCutInPlaceAndReplacementsKeepTheFilesMode) {
  TempDir dir;
  const std::string path = dir.File("out.jsonl");
  const std::string r0 = R"({"id":"r0","status":"ok"})", r1 = R"({"id":"r1","status":"ok"})";
  std::ofstream(path) << r0 << "\n"
                      << r1 << "\n"
                      << R"({"id":"r2","st)";
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  struct stat before, after;
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  {
    absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(path);
    ASSERT_THAT(log, IsOk());
    EXPECT_EQ((*log)->done().size(), 2u);
  }
  EXPECT_EQ(ReadFile(path), r0 + "\n" + r1 + "\n");
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino) << "the file was copied, not cut";
  std::ofstream(path, std::ios::app) << "\n"
                                     << R"({"id":"r3","status":"ok"})"
                                     << "\n";  // a blank line inside
  ASSERT_THAT(ResultLog::Open(path).status(), IsOk());
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_NE(after.st_ino, before.st_ino) << "dropping a line inside rewrites the file";
  EXPECT_EQ(after.st_mode & 07777, 0600u);
  const mode_t old_mask = ::umask(002);
  ASSERT_THAT(ResultLog::Open(dir.File("new.jsonl")).status(), IsOk());
  ASSERT_THAT(WriteAtomically(dir.File("new.html"), "<html>"), IsOk());  // a replacement with nothing to replace
  ::umask(old_mask);
  for (const char* name : {"new.jsonl", "new.html"}) {
    ASSERT_EQ(::stat(dir.File(name).c_str(), &after), 0);
    EXPECT_EQ(after.st_mode & 07777, 0664u) << name;
  }
}

// A directory or a device is no results file: it says so, where before a directory "had 2 names (hard
// links)" and /dev/zero was read without end.
TEST(CheckResultsFile, ADirectoryOrADeviceIsRefusedSayingWhatItIs) {
  TempDir dir;
  EXPECT_THAT(CheckResultsFile(dir.path(), "--output"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(dir.path() + ": --output is a directory")));
  EXPECT_THAT(ResultLog::Open(dir.path()).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("the results file is a directory")));
  EXPECT_THAT(CheckResultsFile("/dev/zero", "--output"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("/dev/zero: --output is not a regular file")));
  EXPECT_THAT(CheckResultsFile(dir.File("new.jsonl"), "--output"), IsOk());
}

}  // namespace
}  // namespace attribution::client::batch
