// SPDX-License-Identifier: Apache-2.0
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/scheduler/batch_executor.h"
#include "engine/scheduler/component_runs.h"
#include "engine/scheduler/path_embeddings.h"
#include "engine/scheduler/row_groups.h"

namespace attribution::engine {
namespace {

class ModelExecutor : public BatchExecutor {
 public:
  explicit ModelExecutor(std::shared_ptr<const CausalLM> model)
      : model_(model), paths_(model), components_(std::move(model)) {}

  absl::Status Run(RowKind kind, const std::vector<const Row*>& rows, std::vector<RowResult>& results) override {
    paths_.ReleaseUnused();
    components_.ReleaseUnused();
    switch (kind) {
      case RowKind::kScore:
        return RunInGroups(
            rows, results, [](const Row& row) { return row.component.pair != nullptr; },
            [this](bool pair, const std::vector<const Row*>& some, std::vector<RowResult>& out) {
              return pair ? components_.RunScore(some, out) : RunScore(some, out);
            });
      case RowKind::kGrad:
        // Each propagation rule needs its own forward; the rows of one rule share it.
        return RunInGroups(
            rows, results,
            [](const Row& row) {
              return row.component.pair ? kPropagationRuleCount : static_cast<int>(row.point.path->rules);
            },
            [this](int group, const std::vector<const Row*>& some, std::vector<RowResult>& out) {
              return group == kPropagationRuleCount ? components_.RunGrad(some, out)
                                                    : RunGradUnder(static_cast<PropagationRules>(group), some, out);
            });
      case RowKind::kDecode:
        return RunDecode(rows, results);
    }
    return absl::InternalError("unknown row kind");
  }

  // On a CUDA device the host reaches a pause point while the device still runs the kernels queued
  // before it: short work run there would wait for them, and the time of each would be misread. So
  // batches pause on the CPU only, until measured on a GPU.
  void SetPausePoint(std::function<void()> pause_point) override {
    if (model_->device().is_cuda()) return;
    components_.SetPausePoint(pause_point);
    pause_point_ = std::move(pause_point);
  }

  // As pauses, on the CPU only: there the host is where the device is; on CUDA it runs ahead of the kernels.
  void SetAbandonPoint(std::function<void()> abandon_point) override {
    if (model_->device().is_cuda()) return;
    components_.SetAbandonPoint(abandon_point);
    abandon_point_ = std::move(abandon_point);
  }

  // Gradient batches pause as each layer begins and between its attention and MLP, forward and backward.
  // A layer's backward takes about twice its forward and its MLP about 2/3 of it at short lengths (the
  // attention's share grows with the length), so the longest stretch is about 4 / (9 x layers) of the
  // batch: at most 2 x layers stretches, or `layers` where attention and MLP run in parallel (rows
  // joining at a later layer pause less; the engine learns what it sees).
  int PausedStretches(RowKind kind) const override {
    if (kind != RowKind::kGrad || !pause_point_) return 1;
    const ModelConfig& config = model_->config();
    return config.parallel_attention ? config.num_layers : 2 * config.num_layers;
  }

  int64_t EmbeddedBytesPerToken() const override {
    return 2 * model_->config().hidden_size * static_cast<int64_t>(c10::elementSize(model_->dtype()));
  }

  int64_t KvCacheBytesPerToken() const override {
    const ModelConfig& c = model_->config();
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * static_cast<int64_t>(c10::elementSize(model_->dtype()));
  }

  int64_t CapturedBytesPerToken(bool attention_inputs) const override {
    const ModelConfig& c = model_->config();
    // Two runs; per layer the residual stream, attention and MLP outputs and every head's output, the
    // attention's queries, keys and values when asked (AtP*), and the shared prefix's keys and values.
    const int64_t queries = c.num_heads * c.head_dim, keys = c.num_kv_heads * c.head_dim;
    const int64_t attention = attention_inputs ? 2 * (queries + 2 * keys) : 0;
    return c.num_layers * (2 * (3 * c.hidden_size + queries) + attention + 2 * keys) *
           static_cast<int64_t>(c10::elementSize(model_->dtype()));
  }

 private:
  // Right-pads the rows into [B, S] ids, or [B, S, hidden] embeddings when any row is a point on an
  // embedding path (whose rows `paths` then receives).
  absl::StatusOr<ForwardBatch> Pad(const std::vector<const Row*>& rows,
                                   std::vector<PathEmbeddings::PathRows>* paths = nullptr) {
    if (std::none_of(rows.begin(), rows.end(), [](const Row* row) { return row->point.path != nullptr; })) {
      return PadRowIds(rows);
    }
    ForwardBatch batch;
    int64_t longest = 0;
    for (const Row* row : rows) {
      batch.lengths.push_back(row->length());
      longest = std::max(longest, row->length());
    }
    const int64_t hidden = model_->config().hidden_size;
    batch.inputs_embeds = at::zeros({static_cast<int64_t>(rows.size()), longest, hidden},
                                    at::TensorOptions().dtype(model_->dtype()).device(model_->device()));
    ASSIGN_OR_RETURN(std::vector<PathEmbeddings::PathRows> filled, paths_.Fill(rows, batch.inputs_embeds));
    if (paths != nullptr) *paths = std::move(filled);
    return batch;
  }

  absl::Status RunScore(const std::vector<const Row*>& rows, std::vector<RowResult>& results) {
    c10::InferenceMode inference;
    ASSIGN_OR_RETURN(ForwardBatch batch, Pad(rows));
    batch.pause_point = abandon_point_;
    std::vector<RowObjective> objectives;
    int64_t top_k = 0;
    std::vector<KvRow> prefixes;
    std::vector<int64_t> prefix_lengths;
    bool any_prefix = false;
    for (const Row* row : rows) {
      objectives.push_back(row->objective);
      top_k = std::max(top_k, row->top_k);
      // Positions count from the whole sequence's start; this batch holds only what follows the prefix.
      for (int64_t& position : objectives.back().positions) position -= row->prefix_length;
      prefixes.push_back({row->prefix ? &row->prefix->cache : nullptr});
      prefix_lengths.push_back(row->prefix ? row->prefix_length : 0);
      any_prefix = any_prefix || row->prefix != nullptr;
    }
    KvCache stacked(0, 0);
    if (any_prefix) {
      stacked =
          KvCache::Stack(prefixes, prefix_lengths,
                         /*room=*/batch.input_ids.defined() ? batch.input_ids.size(1) : batch.inputs_embeds.size(1));
      batch.cache = &stacked;
    }
    ObjectiveDetails details;
    ASSIGN_OR_RETURN(at::Tensor values, model_->ObjectiveValues(batch, objectives, &details, top_k));
    values = values.cpu();
    int64_t offset = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      const int64_t n = static_cast<int64_t>(rows[r]->objective.tokens.size());
      RowResult& out = results[r];
      out.value = values[r].item<double>();
      out.token_log_probs = details.log_probs.narrow(0, offset, n);
      out.token_logits = details.logits.narrow(0, offset, n);
      if (rows[r]->top_k > 0) {
        out.top_ids = details.top_ids.narrow(0, offset, n).narrow(1, 0, rows[r]->top_k);
        out.top_log_probs = details.top_log_probs.narrow(0, offset, n).narrow(1, 0, rows[r]->top_k);
      }
      offset += n;
    }
    return absl::OkStatus();
  }

  absl::Status RunGradUnder(PropagationRules rules, const std::vector<const Row*>& rows,
                            std::vector<RowResult>& results) {
    std::vector<PathEmbeddings::PathRows> paths;
    ASSIGN_OR_RETURN(ForwardBatch batch, Pad(rows, &paths));
    batch.rules = rules;
    batch.pause_point = pause_point_ ? pause_point_ : abandon_point_;
    std::vector<RowObjective> objectives;
    for (const Row* row : rows) objectives.push_back(row->objective);
    ASSIGN_OR_RETURN(InputGradients grads, model_->ObjectiveGradients(batch, objectives));
    at::Tensor values = grads.values.cpu();
    for (size_t r = 0; r < rows.size(); ++r) results[r].value = values[r].item<double>();
    paths_.Reduce(paths, grads.gradients, results);
    return absl::OkStatus();
  }

  absl::Status RunDecode(const std::vector<const Row*>& rows, std::vector<RowResult>& results) {
    c10::InferenceMode inference;
    for (const Row* row : rows) {
      if (!row->decode_state) return absl::InvalidArgumentError("decode rows need a decode state");
    }
    ASSIGN_OR_RETURN(ForwardBatch batch, Pad(rows));
    const std::shared_ptr<KvCache> cache = BatchCacheFor(rows, batch.input_ids.size(1));
    // A step that fails (out of memory, every call abandoned) leaves each sequence as it was, for the
    // engine's split retry, which would otherwise append this step twice.
    absl::Cleanup forget_step = [&cache, lengths = cache->lengths()] { cache->Truncate(lengths); };
    batch.cache = cache.get();
    batch.pause_point = abandon_point_;
    ASSIGN_OR_RETURN(at::Tensor hidden, model_->Hidden(batch));
    std::vector<int64_t> indices, last;
    for (size_t r = 0; r < rows.size(); ++r) {
      indices.push_back(static_cast<int64_t>(r));
      last.push_back(batch.lengths[r] - 1);
    }
    at::Tensor logits = model_->LogitsAt(hidden, indices, last).cpu();  // [B, vocab]
    // Sequences that will not decode again leave the batch cache now. The others stay, however much of it is
    // padding: taken out of a cache that was mostly padding, they were stacked into one again at their next step, as
    // padded, and so at every step (15 short generations beside a 3000-token context: 28x their time alone).
    std::vector<KvCache> extracted(rows.size(), KvCache(0, 0));
    for (size_t r = 0; r < rows.size(); ++r) {
      if (rows[r]->decode_state->keeps_decoding) continue;
      extracted[r] = KvCache(model_->config().num_layers, 1);
      cache->ExtractRow(static_cast<int64_t>(r), extracted[r]);
    }
    std::move(forget_step).Cancel();
    for (size_t r = 0; r < rows.size(); ++r) {
      DecodeState& state = *rows[r]->decode_state;
      if (extracted[r].batch() == 1) {
        state.cache = std::move(extracted[r]);
        state.batch_cache.reset();
      }
      results[r].next_logits = logits[r];
    }
    return absl::OkStatus();
  }

  // The batch cache the rows' step appends `width` tokens to: the one of their last step when they are its
  // rows in its order (steady decoding: nothing copied), otherwise a new one holding copies of each sequence
  // from where it lives now. A batch cache that a sequence leaves keeps its memory until its other sequences
  // leave it as well or end: each leaves at its next step in another batch.
  std::shared_ptr<KvCache> BatchCacheFor(const std::vector<const Row*>& rows, int64_t width) {
    const std::shared_ptr<KvCache>& last = rows[0]->decode_state->batch_cache;
    bool same = last != nullptr && last->batch() == static_cast<int64_t>(rows.size());
    for (size_t r = 0; r < rows.size() && same; ++r) {
      const DecodeState& state = *rows[r]->decode_state;
      same = state.batch_cache == last && state.batch_row == static_cast<int64_t>(r);
    }
    if (same) return last;
    std::vector<KvRow> sources;
    int64_t longest = 0;
    for (const Row* row : rows) {
      const DecodeState& state = *row->decode_state;
      sources.push_back(state.batch_cache ? KvRow{state.batch_cache.get(), state.batch_row} : KvRow{&state.cache, 0});
      longest = std::max(longest, sources.back().cache->lengths()[sources.back().row]);
    }
    // Room for this step and the next ones: with only this step's, the next step regrew every buffer at once.
    const int64_t room = width + std::max<int64_t>(16, longest / 4);
    auto cache = std::make_shared<KvCache>(KvCache::Stack(sources, {}, room));
    for (size_t r = 0; r < rows.size(); ++r) {
      DecodeState& state = *rows[r]->decode_state;
      state.batch_cache = cache;
      state.batch_row = static_cast<int64_t>(r);
      state.cache = KvCache(model_->config().num_layers, 1);
    }
    return cache;
  }

  std::shared_ptr<const CausalLM> model_;
  std::function<void()> pause_point_;
  std::function<void()> abandon_point_;
  PathEmbeddings paths_;      // embedded once per path, while its rows run
  ComponentRuns components_;  // each prompt pair's activations, while its rows run
};

}  // namespace

std::unique_ptr<BatchExecutor> MakeModelExecutor(std::shared_ptr<const CausalLM> model) {
  return std::make_unique<ModelExecutor>(std::move(model));
}

ForwardBatch PadRowIds(const std::vector<const Row*>& rows, const std::vector<int64_t>& skipped) {
  ForwardBatch batch;
  int64_t longest = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    batch.lengths.push_back(rows[r]->length() - (skipped.empty() ? 0 : skipped[r]));
    longest = std::max(longest, batch.lengths.back());
  }
  batch.input_ids = at::zeros({static_cast<int64_t>(rows.size()), longest}, at::kLong);
  for (size_t r = 0; r < rows.size(); ++r) {
    const std::vector<int64_t>& ids = rows[r]->input_ids;
    batch.input_ids[static_cast<int64_t>(r)]
        .narrow(0, 0, batch.lengths[r])
        .copy_(at::tensor(c10::ArrayRef<int64_t>(ids).slice(ids.size() - batch.lengths[r])));
  }
  return batch;
}

const char* RowKindName(RowKind kind) {
  switch (kind) {
    case RowKind::kScore:
      return "score";
    case RowKind::kGrad:
      return "grad";
    case RowKind::kDecode:
      return "decode";
  }
  return "unknown";
}

}  // namespace attribution::engine
