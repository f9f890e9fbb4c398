// SPDX-License-Identifier: Apache-2.0
// The status of a request that does not parse: the request type, and the field protobuf's complaint
// names only when it is a field of the request (a complaint can be an earlier parse's on the thread).
#include "server/unparsable_request.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace attribution::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAttribute[] = "/attribution.v1.AttributionService/Attribute";

std::string Complaint(const std::string& field) {
  return "String field '" + field +
         "' contains invalid UTF-8 data when parsing a protocol buffer. Use the 'bytes' type if you intend to send "
         "raw bytes. ";
}

TEST(UnparsableRequest, NamesTheRequestTypeAndTheFieldItsParserNamed) {
  const grpc::Status status = UnparsableRequestStatus(kAttribute, Complaint("attribution.v1.AttributeRequest.model"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("does not parse as attribution.v1.AttributeRequest: string field "
                                                "attribution.v1.AttributeRequest.model is not valid UTF-8"));
}

TEST(UnparsableRequest, AComplaintAboutAnotherMessagesFieldIsNotRepeated) {
  for (const std::string& stale :
       {Complaint("grpc.health.v1.HealthCheckRequest.service"), Complaint("attribution.v1.AttributeResponse.model"),
        Complaint("no.such.field"), std::string("some other protobuf log line")}) {
    const grpc::Status status = UnparsableRequestStatus(kAttribute, stale);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(),
                HasSubstr("attribution.v1.AttributeRequest: its protobuf encoding is malformed"));
    EXPECT_THAT(status.error_message(), Not(HasSubstr("UTF-8")));
  }
}

TEST(UnparsableRequest, AnUnknownMethodStillGetsAClearMessage) {
  const grpc::Status status = UnparsableRequestStatus("/no.Such/Method", "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("does not parse as the request message: its protobuf encoding"));
}

}  // namespace
}  // namespace attribution::server
