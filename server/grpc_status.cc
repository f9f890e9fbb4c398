// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace attribution::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  // Both enumerate google.rpc.Code; anything outside it is an error of ours.
  static_assert(static_cast<int>(absl::StatusCode::kUnauthenticated) == grpc::StatusCode::UNAUTHENTICATED);
  static_assert(static_cast<int>(absl::StatusCode::kResourceExhausted) == grpc::StatusCode::RESOURCE_EXHAUSTED);
  const grpc::StatusCode grpc_code = code >= 1 && code <= grpc::StatusCode::UNAUTHENTICATED
                                         ? static_cast<grpc::StatusCode>(code)
                                         : grpc::StatusCode::UNKNOWN;
  // gRPC sends the message in trailing metadata: past 8 KiB of it the caller gets RESOURCE_EXHAUSTED
  // instead of this status. Cut at a character boundary, so the message stays valid UTF-8.
  absl::string_view message = status.message();
  if (message.size() <= kMaxStatusMessageBytes) return grpc::Status(grpc_code, std::string(message));
  size_t cut = kMaxStatusMessageBytes;
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
  return grpc::Status(grpc_code, absl::StrCat(message.substr(0, cut), " ... (", message.size(), " bytes in all)"));
}

const char* StatusCodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index <= grpc::StatusCode::UNAUTHENTICATED ? kNames[index] : "UNKNOWN";
}

}  // namespace attribution::server
