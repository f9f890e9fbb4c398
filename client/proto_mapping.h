// SPDX-License-Identifier: Apache-2.0
// Between the client's typed options/results and the wire messages. Private to client/.
#pragma once
#include "absl/status/statusor.h"
#include "attribution/v1/attribution.pb.h"
#include "client/attribution_client.h"

namespace attribution::client {

namespace v1 = ::attribution::v1;

// INVALID_ARGUMENT naming the option when a name (method, quantity, rule, baseline, priority) is unknown.
// INVALID_ARGUMENT naming `field` unless `value` is printable ASCII of at most `max_bytes` (what gRPC
// metadata may carry: request ids, bearer tokens).
absl::Status CheckMetadataValue(absl::string_view field, absl::string_view value, size_t max_bytes);

absl::StatusOr<v1::AttributeRequest> ToProto(const AttributeOptions& options);
absl::StatusOr<v1::GenerateRequest> ToProto(const GenerateOptions& options);
absl::StatusOr<v1::LogprobsRequest> ToProto(const LogprobsOptions& options);
absl::StatusOr<v1::AttributeComponentsRequest> ToProto(const ComponentOptions& options);

// Copies a response into the client's types after checking the shapes that the renderers (heatmap,
// component tables, batch output) index by, so that a buggy or hostile server, or a version skew, cannot
// make them read out of bounds. DATA_LOSS naming the field and the numbers when a shape is broken:
//   Attribute: features are non-empty, disjoint, in-order spans of prompt_tokens; sequence_attribution
//     holds one value per feature; fixed_tokens index prompt_tokens; token_matrix is empty or [target
//     tokens][features]; faithfulness has one features_at / deletion / insertion value per percent, each
//     features_at in [0, features].
//   AttributeComponents: each grid's axes are [layer, head], [layer, position] or [layer, position, head],
//     shape has one size (>= 0) per axis, values their product, convergence_deltas none or one per value;
//     each pair has as many corrupted_tokens as clean_tokens.
//   Logprobs: every target entry has its token. ListModels: names are non-empty and unique.
//   Generate: nothing is indexed by its fields, so nothing is checked.
absl::StatusOr<Attribution> FromProto(const v1::AttributeResponse& response);
absl::StatusOr<Generation> FromProto(const v1::GenerateResponse& response);
absl::StatusOr<Logprobs> FromProto(const v1::LogprobsResponse& response);
absl::StatusOr<ComponentAttribution> FromProto(const v1::AttributeComponentsResponse& response);
absl::StatusOr<std::vector<ModelInfo>> FromProto(const v1::ListModelsResponse& response);
// Infallible: no consumer slices text by a token's offsets.
Token FromProto(const v1::Token& token);

}  // namespace attribution::client
