// SPDX-License-Identifier: Apache-2.0
// Keys and values of past positions for incremental decoding. Rows hold sequences of different
// lengths (right-aligned padding is never stored: row r's keys are slots [0, lengths[r])).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace attribution::engine {

class KvCache;

// One sequence's keys and values: row `row` of `cache` (a null cache: an empty sequence).
struct KvRow {
  const KvCache* cache = nullptr;
  int64_t row = 0;
};

// Owned by one caller at a time; not thread-safe.
class KvCache {
 public:
  KvCache(int64_t num_layers, int64_t batch) : keys_(num_layers), values_(num_layers), lengths_(batch, 0) {}

  int64_t batch() const { return static_cast<int64_t>(lengths_.size()); }
  const std::vector<int64_t>& lengths() const { return lengths_; }

  // Stores `keys`/`values` ([B, kv_heads, S, head_dim]) of layer `layer` so that row r's new slot s
  // lands at lengths()[r] + s, growing the buffers as needed, and returns the keys and values of all
  // slots [0, max_r lengths()[r] + S) of that layer. B may be fewer than batch(): the first B rows
  // (rows that join a forward at a later layer, ForwardBatch::first_layers).
  std::pair<at::Tensor, at::Tensor> Append(int64_t layer, const at::Tensor& keys, const at::Tensor& values);

  // Records that row r gained new_lengths[r] tokens; call once after all layers appended.
  void Advance(const std::vector<int64_t>& new_lengths);

  // Forgets what a step that failed appended: row r keeps its first lengths[r] slots (lengths() as
  // they were before the step; the slots after them are overwritten by the next Append).
  void Truncate(std::vector<int64_t> lengths) { lengths_ = std::move(lengths); }

  // A batch cache holding copies of sequences from other caches, so live sequences of different
  // requests can take one decode step together. With `lengths`, row r keeps only the first lengths[r]
  // slots of its part (a shared prefix). `room` extra slots are allocated for the tokens about to be
  // appended (saves a regrowth copy).
  static KvCache Stack(const std::vector<KvRow>& parts, std::vector<int64_t> lengths = {}, int64_t room = 0);

  // Replaces the contents of `part` (batch 1) with row `row` of this cache.
  void ExtractRow(int64_t row, KvCache& part) const;

  // Total bytes held by the key and value buffers.
  int64_t Bytes() const;

 private:
  std::vector<at::Tensor> keys_;    // per layer [B, kv_heads, capacity, head_dim]
  std::vector<at::Tensor> values_;  // same
  std::vector<int64_t> lengths_;
};

}  // namespace attribution::engine
