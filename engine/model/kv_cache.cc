// SPDX-License-Identifier: Apache-2.0
#include "engine/model/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace attribution::engine {
namespace {

// Grows a [B, H, capacity, D] buffer along the slot dimension by half at least, to amortise copies (a decode
// step's batch cache is kept: doubling left it half padding).
at::Tensor Reserve(const at::Tensor& buffer, int64_t rows, const at::Tensor& like, int64_t needed) {
  const int64_t have = buffer.defined() ? buffer.size(2) : 0;
  if (have >= needed) return buffer;
  const int64_t capacity = std::max(needed, have + have / 2);
  at::Tensor grown = at::zeros({rows, like.size(1), capacity, like.size(3)}, like.options());
  if (have > 0) grown.narrow(2, 0, have).copy_(buffer);
  return grown;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> KvCache::Append(int64_t layer, const at::Tensor& keys, const at::Tensor& values) {
  const int64_t new_slots = keys.size(2), rows = keys.size(0);
  const int64_t end = *std::max_element(lengths_.begin(), lengths_.end()) + new_slots;
  keys_[layer] = Reserve(keys_[layer], batch(), keys, end);
  values_[layer] = Reserve(values_[layer], batch(), values, end);
  // slot[r, s] = lengths[r] + s: one scatter per buffer writes every row at its own offset.
  const std::vector<int64_t> row_lengths(lengths_.begin(), lengths_.begin() + rows);
  at::Tensor offsets = at::tensor(row_lengths, at::TensorOptions().dtype(at::kLong)).to(keys.device());
  at::Tensor slots = offsets.unsqueeze(1) + at::arange(new_slots, offsets.options()).unsqueeze(0);
  at::Tensor index = slots.view({rows, 1, new_slots, 1}).expand_as(keys);
  at::Tensor row_keys = keys_[layer].narrow(0, 0, rows), row_values = values_[layer].narrow(0, 0, rows);
  // Writes into the cache buffers happen outside autograd: the cache holds no graph.
  row_keys.scatter_(2, index, keys.detach());
  row_values.scatter_(2, index, values.detach());
  at::Tensor past_keys = row_keys.narrow(2, 0, end);
  at::Tensor past_values = row_values.narrow(2, 0, end);
  if (!keys.requires_grad() && !values.requires_grad()) return {past_keys, past_values};
  // Gradients must flow to the new slots: rebuild them out of place from the differentiable inputs.
  at::Tensor slot_index = index.narrow(2, 0, new_slots);
  return {past_keys.scatter(2, slot_index, keys), past_values.scatter(2, slot_index, values)};
}

KvCache KvCache::Stack(const std::vector<KvRow>& parts, std::vector<int64_t> lengths, int64_t room) {
  int64_t layers = 0;
  for (const KvRow& part : parts) {
    if (part.cache != nullptr) layers = static_cast<int64_t>(part.cache->keys_.size());
  }
  KvCache batch(layers, static_cast<int64_t>(parts.size()));
  for (size_t r = 0; r < parts.size(); ++r) {
    const int64_t held = parts[r].cache != nullptr ? parts[r].cache->lengths_[parts[r].row] : 0;
    batch.lengths_[r] = lengths.empty() ? held : std::min(held, lengths[r]);
  }
  const int64_t longest = *std::max_element(batch.lengths_.begin(), batch.lengths_.end());
  for (int64_t l = 0; l < layers; ++l) {
    for (auto [buffers, stacked] :
         {std::pair{&KvCache::keys_, &batch.keys_}, std::pair{&KvCache::values_, &batch.values_}}) {
      at::Tensor like;  // any filled part gives the [-, heads, -, head_dim] shape
      for (const KvRow& part : parts) {
        if (part.cache != nullptr && (part.cache->*buffers)[l].defined()) like = (part.cache->*buffers)[l];
      }
      if (!like.defined() || longest == 0) continue;  // every sequence is empty: Append allocates
      at::Tensor buffer =
          at::zeros({static_cast<int64_t>(parts.size()), like.size(1), longest + room, like.size(3)}, like.options());
      for (size_t r = 0; r < parts.size(); ++r) {
        const int64_t len = batch.lengths_[r];
        if (len > 0) buffer[r].narrow(1, 0, len).copy_((parts[r].cache->*buffers)[l][parts[r].row].narrow(1, 0, len));
      }
      (*stacked)[l] = buffer;
    }
  }
  return batch;
}

void KvCache::ExtractRow(int64_t row, KvCache& part) const {
  part.lengths_[0] = lengths_[row];
  for (size_t l = 0; l < keys_.size(); ++l) {
    if (!keys_[l].defined()) continue;
    part.keys_[l] = keys_[l].narrow(0, row, 1).narrow(2, 0, lengths_[row]).clone();
    part.values_[l] = values_[l].narrow(0, row, 1).narrow(2, 0, lengths_[row]).clone();
  }
}

void KvCache::Advance(const std::vector<int64_t>& new_lengths) {
  for (size_t r = 0; r < lengths_.size(); ++r) lengths_[r] += new_lengths[r];
}

int64_t KvCache::Bytes() const {
  int64_t bytes = 0;
  for (const auto* buffers : {&keys_, &values_}) {
    for (const at::Tensor& t : *buffers) {
      if (t.defined()) bytes += t.numel() * t.element_size();
    }
  }
  return bytes;
}

}  // namespace attribution::engine
