// SPDX-License-Identifier: Apache-2.0
// Between the client's typed options/results and the wire messages. Private to client/.
#pragma once
#include "absl/status/statusor.h"
#include "attribution/v1/attribution.pb.h"
#include "client/attribution_client.h"

namespace attribution::client {

namespace v1 = ::attribution::v1;

// INVALID_ARGUMENT naming the option when a name (method, quantity, rule, baseline, priority) is unknown.
absl::StatusOr<v1::AttributeRequest> ToProto(const AttributeOptions& options);
absl::StatusOr<v1::GenerateRequest> ToProto(const GenerateOptions& options);
absl::StatusOr<v1::LogprobsRequest> ToProto(const LogprobsOptions& options);
absl::StatusOr<v1::AttributeComponentsRequest> ToProto(const ComponentOptions& options);

Attribution FromProto(const v1::AttributeResponse& response);
Generation FromProto(const v1::GenerateResponse& response);
Logprobs FromProto(const v1::LogprobsResponse& response);
ComponentAttribution FromProto(const v1::AttributeComponentsResponse& response);
std::vector<ModelInfo> FromProto(const v1::ListModelsResponse& response);
Token FromProto(const v1::Token& token);

}  // namespace attribution::client
