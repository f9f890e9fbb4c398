// SPDX-License-Identifier: Apache-2.0
// What a request fixes about its answer, checked before the answer becomes a result. Private to client/.
#pragma once
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "attribution/v1/attribution.pb.h"

namespace attribution::client {

// The parts of a request its answer must agree with. A response that contradicts them (a server answering
// another call: a version skew, a proxy mixing calls up, a hostile server) or that no model computes (a
// log-probability above 0) used to become a result the tools recorded as ok; it is DATA_LOSS naming the field.
// Not-a-number passes: a model served with --allow_nonfinite_weights computes it honestly.
struct AskedFor {
  ::attribution::v1::Method method = ::attribution::v1::METHOD_UNSPECIFIED;  // unset: the server's default
  std::vector<int64_t> target_ids;  // empty: a text target (any tokens) or a generated one
  int64_t top_k = 0;                // Logprobs: alternatives per position, at most
  int64_t max_new_tokens = 0;       // Generate: 0 is the server's default, not checked
};

AskedFor AskedBy(const ::attribution::v1::AttributeRequest& request);
AskedFor AskedBy(const ::attribution::v1::LogprobsRequest& request);
AskedFor AskedBy(const ::attribution::v1::GenerateRequest& request);

// Attribute: the method asked for, the target ids given (one or more target tokens otherwise), target
// log-probabilities <= 0.
absl::Status CheckAnswer(const AskedFor& asked, const ::attribution::v1::AttributeResponse& response);
// Logprobs: the target ids given (one or more otherwise), every log-probability <= 0 (total too), at most top_k
// alternatives.
absl::Status CheckAnswer(const AskedFor& asked, const ::attribution::v1::LogprobsResponse& response);
// Generate: at most max_new_tokens tokens, each log-probability <= 0.
absl::Status CheckAnswer(const AskedFor& asked, const ::attribution::v1::GenerateResponse& response);

}  // namespace attribution::client
