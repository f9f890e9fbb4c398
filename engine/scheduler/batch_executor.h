// SPDX-License-Identifier: Apache-2.0
// What runs a formed batch. The engine owns one executor per model/device and calls it from its single
// executor thread; tests substitute fakes that count calls or fail on purpose.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

class BatchExecutor {
 public:
  virtual ~BatchExecutor() = default;
  // Runs `rows` (all of `kind`) as one batch, filling results[i] for rows[i]. A non-OK status fails
  // the batch as a whole (the engine then splits and retries); it may also throw (caught by the engine).
  virtual absl::Status Run(RowKind kind, const std::vector<const Row*>& rows, std::vector<RowResult>& results) = 0;
  // Device bytes per token of an embedding path once its rows run (its input and baseline embeddings),
  // which the engine counts against its queue memory.
  virtual int64_t EmbeddedBytesPerToken() const { return 0; }
  // Device bytes per token of a prompt pair once its rows run (both runs' activations at every
  // component site of every layer, and their attention inputs when its rows recompute attention
  // weights), counted the same way.
  virtual int64_t CapturedBytesPerToken(bool attention_inputs) const { return 0; }
  // Device bytes per token of a generation's keys and values, which the engine holds against its queue memory
  // from a generation's first step to its end (BatchingEngine::ReserveKvCache).
  virtual int64_t KvCacheBytesPerToken() const { return 0; }
  // Work to run at points spread through each batch of `kind` that can pause (a model's gradient
  // batches: between decoder layers, in the forward and in the backward), on the thread running that
  // part of the batch; the engine runs waiting short calls there. Set before the first Run.
  virtual void SetPausePoint(std::function<void()> pause_point) {}
  // At most into how many stretches of about equal device time those points cut a batch of `kind` (1:
  // it never pauses); the engine learns how many it sees.
  virtual int PausedStretches(RowKind kind) const { return 1; }
  // A check to run between decoder layers of the batches that do not pause (score and decode batches; a
  // long prompt's prefill is one row of seconds), on the thread running them: the engine throws from it
  // once no row of the batch is wanted, so a cancelled call stops at the next layer. Set before the first
  // Run.
  virtual void SetAbandonPoint(std::function<void()> abandon_point) {}
};

// Executes rows with a CausalLM: right-pads them into one batch per call.
std::unique_ptr<BatchExecutor> MakeModelExecutor(std::shared_ptr<const CausalLM> model);

}  // namespace attribution::engine
