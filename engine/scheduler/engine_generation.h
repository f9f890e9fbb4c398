// SPDX-License-Identifier: Apache-2.0
// Generation through the batching engine: a sequence advances by decode rows (prefill, then one row
// per new token), so the steps of many concurrent generations share batches with each other and with
// attribution work.
//
//   GenerateAsync(engine, request, model->config(), prompt, {.max_new_tokens = 25},
//                 [](absl::StatusOr<Generation> g) { ... });
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/generation.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {

// Starts generating a continuation of `prompt`. `done` is called exactly once, on the engine's
// executor thread (or at once when the first row is refused), with the generation or the status that
// ended it (e.g. CANCELLED after engine.Cancel(*request)). `on_token`, when given, sees every new
// token (id, log-prob) as it is picked, on the executor thread, before `done`. `should_stop`, when
// given, sees the tokens generated so far after each new one (after `on_token`); true ends the
// generation there as a stop token would (Generation::stopped), e.g. the server's stop strings.
using TokenCallback = std::function<void(int64_t token, float log_prob)>;
using StopCheck = std::function<bool(const std::vector<int64_t>& tokens)>;
void GenerateAsync(BatchingEngine& engine, std::shared_ptr<Request> request, const ModelConfig& config,
                   std::vector<int64_t> prompt, const GenerationOptions& options,
                   std::function<void(absl::StatusOr<Generation>)> done, TokenCallback on_token = nullptr,
                   StopCheck should_stop = nullptr);

}  // namespace attribution::engine
