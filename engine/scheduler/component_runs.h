// SPDX-License-Identifier: Apache-2.0
// The executor's side of prompt-pair rows (component_work.h): it runs each pair's clean and corrupted
// prompts once, keeping their activations at every site of every layer while any row or plan holds the
// pair, and runs a batch of pair rows as one forward (and backward) whose hooks apply every row's patch
// at once. Used by the executor thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

class ComponentRuns {
 public:
  explicit ComponentRuns(std::shared_ptr<const CausalLM> model) : model_(std::move(model)) {}

  // Score rows of pairs: each row's objective with its patch applied.
  absl::Status RunScore(const std::vector<const Row*>& rows, std::vector<RowResult>& results);
  // Grad rows of pairs: d objective / d alpha of patched rows; site estimates of the others.
  absl::Status RunGrad(const std::vector<const Row*>& rows, std::vector<RowResult>& results);
  // Forgets the activations of pairs that no row or plan holds any more.
  void ReleaseUnused();
  // Where gradient runs pause (ForwardBatch::pause_point).
  void SetPausePoint(std::function<void()> pause_point) { pause_point_ = std::move(pause_point); }
  // Where patched runs that do not pause check that their batch is still wanted (BatchExecutor::
  // SetAbandonPoint); a pair's capture runs to its end, as the activations it keeps must be whole.
  void SetAbandonPoint(std::function<void()> abandon_point) { abandon_point_ = std::move(abandon_point); }
  // Pairs whose activations are held now.
  size_t size() const { return pairs_.size(); }

 private:
  struct Captured {
    std::shared_ptr<const PromptPair> pair;  // keeps the key alive; use_count 1: only we hold it
    // Per site: [2, layers, S, ...] in the compute dtype; index 0 the clean run, 1 the corrupted.
    std::array<at::Tensor, kComponentSites> activations;
    // The keys and values of the tokens both prompts share before they first differ.
    int64_t shared_length = 0;
    std::unique_ptr<KvCache> shared_prefix;
    // Rows that recompute attention weights (AtP*): each layer's queries [2, layers, heads, S, D],
    // keys and values [2, layers, kv_heads, S, D], and the keys each query sees, [S, S]: one mask per kind
    // of layer (full or sliding-window attention; Qwen2 mixes them), the layer's in visible_of_layer.
    at::Tensor queries, keys, values;
    std::vector<at::Tensor> visible;
    std::vector<size_t> visible_of_layer;
  };
  // The pair of `row`, run now unless held (with its attention inputs when the row needs them).
  absl::StatusOr<const Captured*> Capture(const Row& row);
  // The activations at `site` of the first layers.size() rows, row r's of layer layers[r], [R, S_max, ...],
  // from their own run (`own`) or the other one, without row r's first skipped[r] positions (empty:
  // none), zero past each row's length.
  at::Tensor Gather(const std::vector<const Captured*>& captured, const std::vector<const Row*>& rows,
                    ComponentSite site, const std::vector<int64_t>& layers, bool own, int64_t longest,
                    const std::vector<int64_t>& skipped = {}) const;
  // Patched rows, with gradients d value / d alpha when `gradients` is set.
  absl::Status RunPatched(const std::vector<const Row*>& rows, std::vector<RowResult>& results, bool gradients);
  // The same, rows in order of the layer they join the forward at (JoiningLayer).
  absl::Status RunPatchedJoining(const std::vector<const Row*>& rows, std::vector<RowResult>& results, bool gradients);
  absl::Status RunSiteEstimates(const std::vector<const Row*>& rows, std::vector<RowResult>& results);

  std::shared_ptr<const CausalLM> model_;
  std::unordered_map<const PromptPair*, Captured> pairs_;
  std::function<void()> pause_point_, abandon_point_;
};

}  // namespace attribution::engine
