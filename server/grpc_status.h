// SPDX-License-Identifier: Apache-2.0
// The one place where engine statuses become gRPC statuses.
#pragma once
#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace attribution::server {

inline constexpr size_t kMaxStatusMessageBytes = 2048;

// Same canonical code (absl and gRPC share google.rpc.Code), same message up to kMaxStatusMessageBytes.
grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "INVALID_ARGUMENT", ...: the code's canonical name, for logs and metric labels.
const char* StatusCodeName(grpc::StatusCode code);

}  // namespace attribution::server
