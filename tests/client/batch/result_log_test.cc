// SPDX-License-Identifier: Apache-2.0
// Reopening a results file (client/batch/result_log.h) that holds hostile lines: refused naming the line,
// never a crash.
#include "client/batch/result_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

// A value nested a million deep overflowed the stack where the line's fields were copied (exit 139).
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

}  // namespace
}  // namespace attribution::client::batch
