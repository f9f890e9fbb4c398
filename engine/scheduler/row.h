// SPDX-License-Identifier: Apache-2.0
// Rows: the unit of device work that requests hand to the batching engine, and their results.
//
//   score  - token ids or a point on an embedding path -> the row objective and every scored token's
//            log-prob (forward)
//   grad   - a point on an embedding path -> the row objective and its input gradient, reduced per
//            position as the path says (forward and backward)
//   score / grad rows of a prompt pair (component_work.h) -> the objective with a component patched,
//            its derivative along the patch, or every component's attribution-patching estimate
//   decode - tokens appended to a live sequence's KV cache -> the next-token logits
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/causal_lm.h"
#include "engine/model/kv_cache.h"
#include "engine/scheduler/component_work.h"
#include "engine/scheduler/embedding_path.h"

namespace attribution::engine {

enum class RowKind { kScore = 0, kGrad = 1, kDecode = 2 };
inline constexpr int kRowKinds = 3;
const char* RowKindName(RowKind kind);

enum class Priority { kLow = 0, kNormal = 1, kHigh = 2 };

// A live sequence for decode rows. A sequence has at most one decode row in flight: the executor
// thread updates its cache, the owner reads it only after that row's callback.
struct DecodeState {
  // `keeps_decoding`: a generation, whose rows come back step after step. Its keys and values stay in the
  // batch cache of the step it last ran in (`batch_cache`, row `batch_row`), so a next step of the same rows
  // in the same order appends there, copying nothing. Other sequences (a prefix that score rows continue) are
  // copied out into `cache` after their step. The batch cache is shared by the sequences in it, mutable, and
  // safe so: only the executor thread touches it (a sequence has one row in flight at a time).
  explicit DecodeState(int64_t num_layers, bool keeps_decoding = false)
      : cache(num_layers, 1), keeps_decoding(keeps_decoding) {}
  KvCache cache;  // batch 1; empty while the sequence lives in `batch_cache`
  const bool keeps_decoding;
  std::shared_ptr<KvCache> batch_cache;
  int64_t batch_row = 0;

  // The tokens already in the sequence's cache. Executor thread only (the engine's batch decisions run there).
  int64_t cached_tokens() const { return batch_cache ? batch_cache->lengths()[batch_row] : cache.lengths()[0]; }
};

struct Row {
  RowKind kind = RowKind::kScore;
  std::vector<int64_t> input_ids;             // score / decode rows (decode: the tokens to append)
  PathPoint point;                            // grad rows, and score rows given as a point instead of ids
  RowObjective objective;                     // score / grad rows: what is scored
  int64_t top_k = 0;                          // score rows: alternatives at each scored position
  std::shared_ptr<DecodeState> decode_state;  // decode rows
  // Score rows may continue a shared, already computed prefix: the first `prefix_length` positions are
  // read from `prefix`'s KV cache, `input_ids` hold the rest, and objective positions count from the
  // start of the whole sequence. Perturbations that leave a prompt's head unchanged skip its compute.
  std::shared_ptr<const DecodeState> prefix;
  int64_t prefix_length = 0;
  ComponentWork component;  // score / grad rows of a prompt pair (input_ids: the prompt run)

  int64_t length() const { return point.path ? point.path->length() : static_cast<int64_t>(input_ids.size()); }
  // Positions the row takes in a batch, which the token budget bounds: its tokens, and the cached prefix
  // it continues (stacked with the batch's other prefixes, so memory as its own tokens are).
  int64_t batch_length() const { return length() + (prefix ? prefix_length : 0); }
  // Host memory the queued row holds, its path counted in full (the engine counts a shared path once).
  int64_t QueuedBytes() const;
};

struct RowResult {
  absl::Status status;
  double value = 0;            // the row objective (score / grad rows)
  at::Tensor token_log_probs;  // [n scored] float32, score rows
  at::Tensor token_logits;     // [n scored] float32, score rows
  at::Tensor top_ids;          // [n scored, k] int64, score rows with top_k
  at::Tensor top_log_probs;    // [n scored, k] float32
  at::Tensor position_values;  // [S] float32 grad rows: the gradient reduced per position (see PathReduction)
  at::Tensor next_logits;      // [vocab] float32 decode rows: logits after the last appended token
  double alpha_gradient = 0;   // grad rows with a component patch: d value / d alpha
  // Grad rows asking for site estimates, per ComponentSite: [layers, S] float32 ([layers, S, heads]
  // for kHeads), on the CPU.
  std::vector<at::Tensor> site_estimates;
};

// The rows' ids right-padded into [B, S_max] (input_ids and lengths), without the first skipped[r]
// tokens of row r (empty: none).
ForwardBatch PadRowIds(const std::vector<const Row*>& rows, const std::vector<int64_t>& skipped = {});

// Called once per row, on the engine's executor thread (keep it short; never block on the engine).
using RowCallback = std::function<void(size_t row_index, RowResult result)>;

}  // namespace attribution::engine
