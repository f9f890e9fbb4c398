// SPDX-License-Identifier: Apache-2.0
// AttributeComponents at the edge: the request proto to the engine's ComponentRequest (prompts
// tokenized, answers checked to be one token, enums mapped) and the engine's result back.
#pragma once
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attribution/v1/attribution.pb.h"
#include "engine/attribution/component_attribution.h"
#include "server/conversion.h"

namespace attribution::server {

struct ComponentsCall {
  engine::ComponentRequest request;
  engine::ComponentLimits limits;
  std::vector<ResolvedInput> clean, corrupted;  // per pair
  ResolvedInput answer, wrong_answer;           // wrong_answer empty unless the metric compares
  std::vector<std::string> unread_settings;     // set, and not read by the method (the answer names them)
};
// `max_response_bytes`: a request whose pairs read so far already make a response larger is refused before the
// next is read (the service measures the whole response, with every number at 0, after conversion).
// `interrupted`, asked before each pair: OK to read on, else what the call ends with (its client gone, a drain's
// grace period over).
absl::StatusOr<ComponentsCall> ToComponentsCall(
    const v1::AttributeComponentsRequest& proto, const ServedModel& model, absl::Time deadline,
    int64_t max_response_bytes, const std::function<absl::Status()>& interrupted = [] { return absl::OkStatus(); });
void ToComponentsResponse(const engine::ComponentResult& result, const ComponentsCall& call, const ServedModel& model,
                          v1::AttributeComponentsResponse* out);

}  // namespace attribution::server
