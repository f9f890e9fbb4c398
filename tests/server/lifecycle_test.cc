// SPDX-License-Identifier: Apache-2.0
#include "server/lifecycle.h"

#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace attribution::server {
namespace {

// The child's wait status, or -1 if it did not end within `timeout` (then it is killed).
int WaitStatusWithin(pid_t child, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < deadline) {
    if (::waitpid(child, &status, WNOHANG) == child) return status;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  return -1;
}

// An exit stuck after the drain (gRPC's shutdown waiting for a thread it was refused) ends all the same, with the
// status the stop chose and a line that says so, timed as the log's other lines.
TEST(LifecycleExitWithin, AnExitStuckPastTheBoundEndsWithTheStopsStatus) {
  int output[2];
  ASSERT_EQ(::pipe(output), 0);
  const absl::Time start = absl::Now();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(output[1], STDERR_FILENO);
    Lifecycle::ExitWithin(absl::Seconds(1), 7);
    for (;;) ::pause();
  }
  ::close(output[1]);
  const int status = WaitStatusWithin(child, absl::Seconds(20));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 7);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));

  std::string written(4096, '\0');
  const ssize_t size = ::read(output[0], written.data(), written.size());
  ::close(output[0]);
  ASSERT_GT(size, 0);
  written.resize(static_cast<size_t>(size));
  ASSERT_EQ(written.back(), '\n');
  const nlohmann::json line = nlohmann::json::parse(written);
  EXPECT_EQ(line.at("event"), "exit_overdue");
  EXPECT_EQ(line.at("severity"), "WARNING");
  EXPECT_THAT(line.at("detail").get<std::string>(), ::testing::HasSubstr("status 7"));
  absl::Time logged;
  std::string error;
  ASSERT_TRUE(
      absl::ParseTime("%Y-%m-%dT%H:%M:%E3SZ", line.at("time").get<std::string>(), absl::UTCTimeZone(), &logged, &error))
      << line.dump() << " " << error;
  EXPECT_LT(absl::AbsDuration(logged - absl::Now()), absl::Seconds(5)) << line.dump();
}

TEST(LifecycleExitWithin, AnExitWithinTheBoundKeepsItsOwnStatus) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Lifecycle::ExitWithin(absl::Seconds(1), 7);
    ::_exit(0);
  }
  const int status = WaitStatusWithin(child, absl::Seconds(20));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace attribution::server
