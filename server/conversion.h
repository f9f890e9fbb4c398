// SPDX-License-Identifier: Apache-2.0
// The edge between the wire contract and the engine: one converter per RPC from the request proto to
// engine types (validating what only the wire knows, with messages naming proto fields) and one from
// the engine's result back to the response proto. Nothing else in the server touches both.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "attribution/v1/attribution.pb.h"
#include "engine/attribution/target_scores.h"
#include "engine/model/generation.h"
#include "engine/scheduler/engine_generation.h"
#include "server/model_registry.h"

namespace attribution::server {

namespace v1 = ::attribution::v1;

// A prompt, target or foil as ids, with the text they came from (empty for ids given directly).
struct ResolvedInput {
  std::string text;
  engine::Encoding encoding;  // spans are empty when the ids were given directly
  bool empty() const { return encoding.ids.empty(); }
};

struct AttributeCall {
  engine::AttributionRequest request;
  ResolvedInput prompt;
  ResolvedInput target;                      // empty when the target is generated
  ResolvedInput foil;                        // contrastive only
  std::vector<std::string> unread_settings;  // AttributeResponse.unread_settings
};
absl::StatusOr<AttributeCall> ToAttributeCall(const v1::AttributeRequest& proto, const ServedModel& model,
                                              absl::Time deadline);
void ToAttributeResponse(const engine::AttributionResult& result, const AttributeCall& call, const ServedModel& model,
                         v1::AttributeResponse* out);

struct GenerateCall {
  ResolvedInput prompt;
  engine::GenerationOptions options;
  engine::Priority priority = engine::Priority::kNormal;
  std::vector<std::string> stop;  // text stop sequences (GenerateRequest.stop)
};
// Where the earliest of `stop` begins in `text`; npos when none is there.
size_t FindStop(absl::string_view text, const std::vector<std::string>& stop);
inline constexpr int kMaxStopStrings = 8;
inline constexpr size_t kMaxStopStringBytes = 64;
absl::StatusOr<GenerateCall> ToGenerateCall(const v1::GenerateRequest& proto, const ServedModel& model);
// The engine's check of `call`'s stop strings after each new token (null when it has none). It decodes
// the continuation a token at a time as it grows (one decoding per token); `tokenizer` must outlive it.
engine::StopCheck ToStopCheck(std::shared_ptr<const GenerateCall> call, const engine::Tokenizer& tokenizer);
void ToGenerateResponse(const engine::Generation& generation, const GenerateCall& call, const ServedModel& model,
                        v1::GenerateResponse* out);
// One streamed token: id, text and log-prob (offsets come with the final response).
void ToStreamedToken(int64_t id, float log_prob, const ServedModel& model, v1::Token* out);

struct LogprobsCall {
  ResolvedInput prompt;
  ResolvedInput target;
  int64_t top_k = 0;
  engine::Priority priority = engine::Priority::kNormal;
};
absl::StatusOr<LogprobsCall> ToLogprobsCall(const v1::LogprobsRequest& proto, const ServedModel& model,
                                            int64_t max_top_k);
void ToLogprobsResponse(const engine::TargetScores& scores, const LogprobsCall& call, const ServedModel& model,
                        v1::LogprobsResponse* out);

void ToModelInfo(const ServedModel& model, int64_t max_top_k, v1::ModelInfo* out);

// Run statistics of an engine request; wall time from `received`.
void ToRunStats(const engine::Request::Stats& stats, absl::Time received, v1::RunStats* out);
// The wall time since `received` and the server's build, which every answer's stats carry.
void SetWallAndBuild(absl::Time received, v1::RunStats* out);

}  // namespace attribution::server
