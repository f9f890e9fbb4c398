// SPDX-License-Identifier: Apache-2.0
// Log-probs of a given target after a prompt (the Logprobs RPC, and Captum's remote-provider use):
// one teacher-forced score row through the batching engine, so it batches with every other
// request's rows. The result is plain numbers; callers never see tensors.
//
//   ScoreTarget(engine, engine.NewRequest(), prompt_ids, target_ids, /*top_k=*/5,
//               [](absl::StatusOr<TargetScores> scores) { ... });
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {

// Per target token t: its score after the prompt and target tokens before it.
struct TargetScores {
  std::vector<double> log_probs;                   // [T] log p(target_t | prompt, target_<t)
  std::vector<double> logits;                      // [T] the logit of target_t there
  std::vector<std::vector<int64_t>> top_ids;       // [T][top_k] the likeliest tokens there, likeliest first
  std::vector<std::vector<double>> top_log_probs;  // [T][top_k] their log-probs
};

// Scores `target_ids` teacher-forced after `prompt_ids` (both non-empty, ids inside the model's
// vocabulary) with one score row under `handle`, with the `top_k` (>= 0) likeliest alternatives at
// each target position. `done` is called exactly once: on the engine's executor thread, or at once
// when the arguments are invalid (INVALID_ARGUMENT) or the engine refuses the row.
void ScoreTarget(BatchingEngine& engine, const std::shared_ptr<Request>& handle, const std::vector<int64_t>& prompt_ids,
                 const std::vector<int64_t>& target_ids, int64_t top_k,
                 std::function<void(absl::StatusOr<TargetScores>)> done);

}  // namespace attribution::engine
