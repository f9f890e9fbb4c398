// SPDX-License-Identifier: Apache-2.0
// Which code a cancelled call ends with: a cancellation at (or just before) the call's deadline is the
// deadline's, as the client saw it; an earlier one is the client's.
#include <gtest/gtest.h>

#include <chrono>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "server/call_reactors.h"

namespace attribution::server {
namespace {

CallLog LogOf(absl::Time received, absl::Duration timeout) {
  CallLog log;
  log.received = received;
  log.deadline = received + timeout;
  return log;
}

const absl::Status kCancelled = absl::CancelledError("request was cancelled");

TEST(EndStatus, ACancellationAtTheDeadlineIsTheDeadline) {
  const absl::Time start = absl::Now();
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(2)), start + absl::Seconds(2)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(2)), start + absl::Seconds(3)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST(EndStatus, ACancellationJustBeforeTheDeadlineIsTheDeadline) {
  const absl::Time start = absl::Now();
  // The client's timer fired first: 15.01 s went out as "15100m" (15.1 s), its reset came 90 ms early.
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(15.1)), start + absl::Seconds(15.01)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // 0.2 s, sent exactly: the reset and the server's timer race by the network's latency.
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(0.2)), start + absl::Seconds(0.19)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // 100.01 s went out as "101S": 0.99 s early, within the margin's 2% of the timeout.
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(101)), start + absl::Seconds(100.01)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST(EndStatus, AnEarlierCancellationIsTheClients) {
  const absl::Time start = absl::Now();
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(15)), start + absl::Seconds(14)).error_code(),
            grpc::StatusCode::CANCELLED);
  EXPECT_EQ(EndStatus(kCancelled, LogOf(start, absl::Seconds(0.5)), start + absl::Seconds(0.3)).error_code(),
            grpc::StatusCode::CANCELLED);
  CallLog without_deadline;
  without_deadline.received = start;
  EXPECT_EQ(EndStatus(kCancelled, without_deadline, start + absl::Hours(1000)).error_code(),
            grpc::StatusCode::CANCELLED);
  // A deadline past any clock reading (gRPC's "none" is the year 2262) is none.
  without_deadline.deadline = absl::FromChrono(std::chrono::system_clock::time_point::max());
  EXPECT_EQ(EndStatus(kCancelled, without_deadline, start + absl::Hours(1000)).error_code(),
            grpc::StatusCode::CANCELLED);
}

TEST(EndStatus, OtherCodesAreKeptWhenever) {
  const absl::Time start = absl::Now();
  const grpc::Status status =
      EndStatus(absl::InvalidArgumentError("n_steps"), LogOf(start, absl::Seconds(1)), start + absl::Seconds(5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "n_steps");
}

}  // namespace
}  // namespace attribution::server
