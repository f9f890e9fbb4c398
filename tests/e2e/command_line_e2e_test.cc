// SPDX-License-Identifier: Apache-2.0
// The programs' command lines: --help lists each program's own flags (abseil's default lists only
// flags of files named after the program, which printed "No flags matched"), a repeated --model
// serves every model it names (abseil kept only the last), and the CLI's --html to a path it cannot
// write is an error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::testing::HasSubstr;
using ::testing::Not;

// Runs `command` through the shell; its exit status and everything it printed.
std::pair<int, std::string> RunCommand(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string output;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

struct Program {
  std::string binary;
  std::vector<std::string> flags;  // some of the program's own flags
};

void PrintTo(const Program& p, std::ostream* os) { *os << p.binary.substr(p.binary.rfind('/') + 1); }

class Help : public ::testing::TestWithParam<Program> {};

// abseil (Debian's 20220623) ends every usage request with exit status 1.
TEST_P(Help, ListsTheProgramsOwnFlags) {
  auto [code, output] = RunCommand(GetParam().binary + " --help");
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, Not(HasSubstr("No flags matched")));
  for (const std::string& flag : GetParam().flags) EXPECT_THAT(output, HasSubstr("--" + flag + " ")) << output;
  // Only its own: abseil's internal flags stay in --helpfull.
  EXPECT_THAT(output, Not(HasSubstr("--flagfile")));
}

INSTANTIATE_TEST_SUITE_P(EveryProgram, Help,
                         ::testing::Values(Program{ATTRIBUTION_SERVER_BINARY,
                                                   {"listen", "model", "dtype", "allow_nonfinite_weights",
                                                    "quantization_block_size", "double_quantization"}},
                                           Program{ATTRIBUTION_CLI_BINARY, {"server", "prompt", "target", "model"}},
                                           Program{ATTRIBUTION_BENCH_BINARY, {"server", "concurrency"}},
                                           Program{ATTRIBUTION_BATCH_BINARY,
                                                   {"input", "output", "window", "shard_index"}}),
                         [](const auto& info) {
                           std::string name = info.param.binary.substr(info.param.binary.rfind('/') + 1);
                           return name.substr(name.find('-') + 1);
                         });

TEST(ServerCommandLine, ARepeatedModelFlagServesEveryModel) {
  const std::string dir = test_support::DemoModelDir();
  auto server = test_support::ServerProcess::Start({"--model=a=" + dir + ",b=" + dir, "--model", "c=" + dir});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  absl::StatusOr<std::vector<client::ModelInfo>> models = (*client)->ListModels();
  ASSERT_THAT(models, IsOk());
  std::vector<std::string> names;
  for (const client::ModelInfo& model : *models) names.push_back(model.name);
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("a", "b", "c"));
}

// An --html report that cannot be written is an error naming the path (it exited 0 without a word).
TEST(CliCommandLine, AnHtmlReportThatCannotBeWrittenIsAnError) {
  auto server = test_support::ServerProcess::Start({});
  ASSERT_THAT(server, IsOk());
  test_support::TempDir dir;
  const std::string attribute = absl::StrCat(ATTRIBUTION_CLI_BINARY, " attribute --server=", (*server)->address(),
                                             " --prompt='The cup is red. Q: Is it warm? A:' --target=' Yes'"
                                             " --method=saliency --html=");
  for (const std::string& path : {dir.path(), dir.File("missing/report.html")}) {
    auto [code, output] = RunCommand(attribute + path);
    EXPECT_EQ(code, 1) << output;
    EXPECT_THAT(output, HasSubstr("--html: cannot write " + path)) << output;
  }
  auto [code, output] = RunCommand(attribute + dir.File("report.html"));
  EXPECT_EQ(code, 0) << output;
  const std::string components = absl::StrCat(
      ATTRIBUTION_CLI_BINARY, " components --server=", (*server)->address(),
      " --clean='When Mary and John went out, John gave a drink to'"
      " --corrupted='When Mary and John went out, Mary gave a drink to' --answer=' Mary' --wrong_answer=' John'"
      " --sites=attn_out --html=",
      dir.path());
  std::tie(code, output) = RunCommand(components);
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, HasSubstr("--html: cannot write " + dir.path())) << output;
}

}  // namespace
}  // namespace attribution
