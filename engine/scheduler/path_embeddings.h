// SPDX-License-Identifier: Apache-2.0
// The executor's side of embedding paths (embedding_path.h): it embeds each path once, when the first
// of its rows runs, keeps the embeddings while any of the path's rows is still held elsewhere, builds a
// batch's points on the device and reduces its rows' input gradients per position. Used by the
// executor thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

class PathEmbeddings {
 public:
  explicit PathEmbeddings(std::shared_ptr<const CausalLM> model) : model_(std::move(model)) {}

  struct Embedded {                             // one path's embeddings
    std::shared_ptr<const EmbeddingPath> path;  // keeps the key alive; use_count 1: only we hold it
    at::Tensor input;                           // [S, hidden] compute dtype
    at::Tensor baseline;                        // [S, hidden]
    at::Tensor direction;                       // [S, hidden] float32: input - baseline
    at::Tensor noised;  // [S, 1] float32: 1 where GradientShap's noise goes (EmbeddingPath::noised); undefined: none
  };
  // The rows of one path in a batch, and the direction each row's point moved along.
  struct PathRows {
    const Embedded* embedded = nullptr;
    std::vector<int64_t> rows;  // indices into the batch
    at::Tensor directions;      // [b, S, hidden] float32: each row's path end minus the baseline
  };

  // Writes row r's embeddings into embeds[r, :length] ([B, S_max, hidden], compute dtype, zero
  // padded): a path row's point, or an id row's token embeddings. Returns the batch's path rows.
  absl::StatusOr<std::vector<PathRows>> Fill(const std::vector<const Row*>& rows, at::Tensor& embeds);
  // Each path row's input gradient (`gradients`, [B, S_max, hidden]) reduced per position as its path
  // says, into results[r].position_values ([S] float32, on the CPU).
  void Reduce(const std::vector<PathRows>& paths, const at::Tensor& gradients, std::vector<RowResult>& results) const;
  // Forgets the embeddings of paths that no row or plan holds any more.
  void ReleaseUnused();
  // Paths embedded and held now.
  size_t size() const { return paths_.size(); }

 private:
  absl::StatusOr<const Embedded*> Embed(const std::shared_ptr<const EmbeddingPath>& path);
  absl::StatusOr<std::vector<PathRows>> Group(const std::vector<const Row*>& rows);
  // [S, hidden] float32: the GradientShap noise of one sample at the path's noised positions, zero elsewhere.
  at::Tensor Noise(const Embedded& embedded, int64_t sample) const;

  std::shared_ptr<const CausalLM> model_;
  std::unordered_map<const EmbeddingPath*, Embedded> paths_;
};

}  // namespace attribution::engine
