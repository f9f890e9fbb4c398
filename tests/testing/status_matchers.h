// SPDX-License-Identifier: Apache-2.0
// GoogleMock matchers for absl::Status and absl::StatusOr<T>, so a failing check prints the status
// it got (code and message) instead of "false". Debian's abseil (20220623) ships no such matchers.
//
//   EXPECT_THAT(ParseQuantization("fp8"), StatusIs(absl::StatusCode::kInvalidArgument));
//   EXPECT_THAT(Validate(request), StatusIs(absl::StatusCode::kInvalidArgument,
//   HasSubstr("n_steps"))); ASSERT_THAT(model, IsOk());  // model is an absl::StatusOr<...>
#pragma once

#include <gmock/gmock.h>

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attribution::test_support {
namespace status_matchers_internal {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// Polymorphic: one matcher object serves absl::Status and every absl::StatusOr<T>. Explains a
// mismatch with the whole status, since StatusOr<T> has no printer in this abseil.
class StatusIsMatcher {
 public:
  StatusIsMatcher(absl::StatusCode code, ::testing::Matcher<const std::string&> message)
      : code_(code), message_(std::move(message)) {}

  template <typename StatusLike>
  bool MatchAndExplain(const StatusLike& value, ::testing::MatchResultListener* listener) const {
    const absl::Status& status = GetStatus(value);
    *listener << "whose status is " << status;
    if (status.code() != code_) return false;
    ::testing::StringMatchResultListener message_listener;
    const bool matches = message_.MatchAndExplain(std::string(status.message()), &message_listener);
    if (!message_listener.str().empty()) *listener << ", and whose message " << message_listener.str();
    return matches;
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has status code " << absl::StatusCodeToString(code_) << " and a message that ";
    message_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "has a status code other than " << absl::StatusCodeToString(code_) << " or a message that ";
    message_.DescribeNegationTo(os);
  }

 private:
  absl::StatusCode code_;
  ::testing::Matcher<const std::string&> message_;
};

class IsOkMatcher {
 public:
  template <typename StatusLike>
  bool MatchAndExplain(const StatusLike& value, ::testing::MatchResultListener* listener) const {
    const absl::Status& status = GetStatus(value);
    if (!status.ok()) *listener << "whose status is " << status;
    return status.ok();
  }
  void DescribeTo(std::ostream* os) const { *os << "is OK"; }
  void DescribeNegationTo(std::ostream* os) const { *os << "is not OK"; }
};

}  // namespace status_matchers_internal

// Matches a status (or a StatusOr's status) with `code` and a message matching `message` (a string
// for equality, or a matcher such as HasSubstr("n_steps")).
inline ::testing::PolymorphicMatcher<status_matchers_internal::StatusIsMatcher> StatusIs(
    absl::StatusCode code, ::testing::Matcher<const std::string&> message = ::testing::_) {
  return ::testing::MakePolymorphicMatcher(status_matchers_internal::StatusIsMatcher(code, std::move(message)));
}

// Matches an OK status, or a StatusOr holding a value.
inline ::testing::PolymorphicMatcher<status_matchers_internal::IsOkMatcher> IsOk() {
  return ::testing::MakePolymorphicMatcher(status_matchers_internal::IsOkMatcher());
}

}  // namespace attribution::test_support
