// SPDX-License-Identifier: Apache-2.0
// The batch report's files (client/batch/html_pages.h): a page per row whose name no other id shares, pages
// written whole while other writers race, an index that links only the pages there are.
#include "client/batch/html_pages.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/batch/batch_job.h"
#include "client/batch/line_files.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Ids sharing their first 64 characters were told apart by 32 bits of hash: among 110,000 of them two
// pages shared a name (these two), and one row's page silently replaced the other's.
TEST(RowPagePath, IdsSharingALongPrefixGetPagesOfTheirOwn) {
  const std::string prefix(70, 'q');
  EXPECT_NE(RowPagePath(prefix + "41a0"), RowPagePath(prefix + "1a312"));
  std::set<std::string> paths;
  for (int i = 0; i < 110000; ++i) paths.insert(RowPagePath(absl::StrCat(prefix, absl::Hex(i))));
  EXPECT_EQ(paths.size(), 110000u);
  EXPECT_EQ(RowPagePath("a b"), RowPagePath("a b"));
  EXPECT_NE(RowPagePath("a b"), RowPagePath("a_b"));
}

// Writers of one path (two jobs sharing an --html folder) shared one PATH.tmp: one's rename failed, or a
// page mixed both. Each now writes a temporary of its own and renames a whole file.
TEST(WriteAtomically, RacingWritersEachReplaceTheFileWhole) {
  TempDir dir;
  const std::string path = dir.File("page.html");
  std::vector<std::string> contents;
  for (int w = 0; w < 8; ++w) contents.push_back(std::string(100000 + w, static_cast<char>('a' + w)));
  std::vector<std::thread> writers;
  std::vector<int> failures(contents.size(), 0);
  for (size_t w = 0; w < contents.size(); ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; i < 50; ++i) failures[w] += !WriteAtomically(path, contents[w]).ok();
    });
  }
  for (std::thread& writer : writers) writer.join();
  EXPECT_THAT(failures, ::testing::Each(0));
  EXPECT_THAT(contents, ::testing::Contains(ReadFile(path)));
}

// --html added on a rerun of a finished job linked every answered row to a page no run had written: the
// index links the pages there are and says how many rows have none.
TEST(WriteIndex, LinksOnlyThePagesThereAre) {
  TempDir dir;
  const std::string results = dir.File("out.jsonl"), html = dir.File("html");
  std::ofstream(results) << R"({"id":"paged","status":"ok","request_id":"r1"})"
                         << "\n"
                         << R"({"id":"earlier","status":"ok","request_id":"r2"})"
                         << "\n"
                         << R"({"id":"foreign","status":"ok","request_id":"r3"})"
                         << "\n"
                         << R"({"id":"failed","status":"error","error":{"code":"INTERNAL","message":"m"}})"
                         << "\n";
  const Attribution attribution{.prompt_tokens = {{.text = "Is"}}, .features = {{0, 1, "Is"}}, .sequence = {0.5}};
  ASSERT_THAT(WriteRowPage(html, "paged", "r1", attribution), IsOk());
  // Another job's page of a row with the same id (another model, settings or input): not this result's.
  ASSERT_THAT(WriteRowPage(html, "foreign", "another-job", attribution), IsOk());
  absl::StatusOr<int64_t> without_page = WriteIndex(html, results);
  ASSERT_THAT(without_page, IsOk());
  EXPECT_EQ(*without_page, 2);
  EXPECT_THAT(ReadFile(html + "/index.html"), HasSubstr("<tr><td>foreign</td>"));
  const std::string index = ReadFile(html + "/index.html");
  EXPECT_THAT(index, HasSubstr(absl::StrCat("<a href=\"", RowPagePath("paged"), "\">paged</a>")));
  EXPECT_THAT(index, HasSubstr("<tr><td>earlier</td>"));
  EXPECT_THAT(index, ::testing::Not(HasSubstr(RowPagePath("earlier"))));
  EXPECT_THAT(index, HasSubstr("2 answered rows have no page here"));
}

// A component row's strongest components are named by site and indices ("heads L1 H0": layer 1, head 0), the
// largest |value| first; grids whose shape, axes or values do not fit each other are left out, not misread.
TEST(WriteIndex, ComponentRowsShowTheirStrongestComponents) {
  TempDir dir;
  const std::string results = dir.File("results.jsonl");
  std::ofstream(results)
      << R"({"id":"good","status":"ok","grid_sites":["heads","mlp_out"],"grid_axes":["layer,head","layer,position"],)"
      << R"("grid_shapes":[[2,3],[1,2]],"grid_values":[[0.1,0.2,0.3,-4.0,0.5,null],[2.0,-0.05]]})"
      << "\n"
      << R"({"id":"odd","status":"ok","grid_sites":["heads","heads","heads",7],"grid_axes":["layer,head","layer",)"
      << R"("layer,head","layer"],"grid_shapes":[[2,2],[2],[1e300,2],[1]],"grid_values":[[1,2,3],[9,9],[8,8],[7]]})"
      << "\n";
  ASSERT_THAT(WriteIndex(dir.path(), results), IsOk());
  const std::string index = ReadFile(dir.File("index.html"));
  const size_t first = index.find("heads L1 H0"), second = index.find("mlp_out L0 P0"),
               third = index.find("heads L1 H1");
  ASSERT_NE(first, std::string::npos) << index;
  ASSERT_NE(second, std::string::npos);
  ASSERT_NE(third, std::string::npos);
  EXPECT_LT(first, second);
  EXPECT_LT(second, third);
  // Of the odd row, only the grid whose shape fits its values: [2] along "layer" (9, 9).
  EXPECT_THAT(index, HasSubstr(">heads L0</code>"));
  EXPECT_THAT(index, ::testing::Not(HasSubstr("title=\"8\"")));
  EXPECT_THAT(index, ::testing::Not(HasSubstr("title=\"7\"")));
}

}  // namespace
}  // namespace attribution::client::batch
