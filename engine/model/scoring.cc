// SPDX-License-Identifier: Apache-2.0
// CausalLM's scoring entry points: token scores (forward only) and row objectives with their input
// gradients. The LM head runs only at the queried positions.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/causal_lm.h"
#include "engine/model/head_scores.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

absl::Status CheckQuery(int64_t row, int64_t position, int64_t token, const std::vector<int64_t>& lengths,
                        int64_t vocab) {
  if (row < 0 || row >= static_cast<int64_t>(lengths.size())) {
    return absl::InvalidArgumentError(absl::StrCat("query row ", row, " outside [0, ", lengths.size(), ")"));
  }
  if (position < 0 || position >= lengths[row]) {
    return absl::InvalidArgumentError(
        absl::StrCat("query position ", position, " outside row ", row, "'s ", lengths[row], " tokens"));
  }
  if (token < 0 || token >= vocab) {
    return absl::InvalidArgumentError(absl::StrCat("query token ", token, " outside [0, ", vocab, ")"));
  }
  return absl::OkStatus();
}

// The batch's row lengths; a batch without a [batch, seq, ...] input is an error (Hidden checks the
// rest), not the exception its sizes would throw.
absl::StatusOr<std::vector<int64_t>> RowLengths(const ForwardBatch& batch) {
  if (!batch.lengths.empty()) return batch.lengths;
  const at::Tensor& t = batch.input_ids.defined() ? batch.input_ids : batch.inputs_embeds;
  if (!t.defined() || t.dim() < 2) {
    return absl::InvalidArgumentError("give input_ids [batch, seq] or inputs_embeds [batch, seq, hidden]");
  }
  return std::vector<int64_t>(t.size(0), t.size(1));
}

}  // namespace

absl::StatusOr<TokenScores> CausalLM::ScoreTokens(const ForwardBatch& batch, const TokenQueries& queries,
                                                  int64_t top_k) const {
  const size_t n = queries.rows.size();
  if (queries.positions.size() != n || queries.tokens.size() != n) {
    return absl::InvalidArgumentError("queries: rows, positions and tokens differ in length");
  }
  // Group the queries by row (ObjectiveValues reports them in row order), remembering where each
  // query lands so the scores come back in query order.
  ASSIGN_OR_RETURN(const std::vector<int64_t> lengths, RowLengths(batch));
  std::vector<RowObjective> objectives(lengths.size());
  std::vector<std::pair<int64_t, int64_t>> slot_of_query;  // (row, index within row)
  for (size_t i = 0; i < n; ++i) {
    const int64_t row = queries.rows[i];
    if (row < 0 || row >= static_cast<int64_t>(objectives.size())) {
      return absl::InvalidArgumentError(absl::StrCat("query row ", row, " outside [0, ", objectives.size(), ")"));
    }
    slot_of_query.emplace_back(row, static_cast<int64_t>(objectives[row].tokens.size()));
    objectives[row].positions.push_back(queries.positions[i]);
    objectives[row].tokens.push_back(queries.tokens[i]);
  }
  std::vector<int64_t> row_start(objectives.size() + 1, 0);
  for (size_t r = 0; r < objectives.size(); ++r) row_start[r + 1] = row_start[r] + objectives[r].tokens.size();
  c10::InferenceMode inference;
  ObjectiveDetails details;
  RETURN_IF_ERROR(ObjectiveValues(batch, objectives, &details, top_k).status());
  if (n == 0) return TokenScores{};
  std::vector<int64_t> order;
  for (const auto& [row, index] : slot_of_query) order.push_back(row_start[row] + index);
  try {
    const at::Tensor index = at::tensor(order, at::kLong);
    TokenScores scores{.logits = details.logits.index_select(0, index),
                       .log_probs = details.log_probs.index_select(0, index)};
    if (top_k > 0) {
      scores.top_ids = details.top_ids.index_select(0, index);
      scores.top_log_probs = details.top_log_probs.index_select(0, index);
    }
    return scores;
  } catch (const std::exception& e) {
    return StatusFromException(e, "scoring");
  }
}

absl::StatusOr<at::Tensor> CausalLM::ObjectiveValues(const ForwardBatch& batch,
                                                     const std::vector<RowObjective>& objectives,
                                                     ObjectiveDetails* details, int64_t top_k) const {
  ASSIGN_OR_RETURN(const std::vector<int64_t> lengths, RowLengths(batch));
  if (top_k < 0 || top_k > config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", top_k, " outside [0, ", config().vocab_size, "]"));
  }
  if (objectives.size() != lengths.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(objectives.size(), " objectives for a batch of ", lengths.size(), " rows"));
  }
  std::vector<int64_t> rows, positions, tokens, kinds;
  std::vector<double> weights;
  std::vector<uint8_t> exp_rows;
  for (size_t r = 0; r < objectives.size(); ++r) {
    const RowObjective& o = objectives[r];
    for (int64_t choice : o.choice_tokens) {
      if (choice < 0 || choice >= config().vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("objective of row ", r, ": choice token ", choice, " outside the vocabulary"));
      }
    }
    if (o.tokens.size() != o.positions.size() || (!o.weights.empty() && o.weights.size() != o.tokens.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("objective of row ", r, ": positions, tokens and weights differ in length"));
    }
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      RETURN_IF_ERROR(CheckQuery(static_cast<int64_t>(r), o.positions[i], o.tokens[i], lengths, config().vocab_size));
      rows.push_back(static_cast<int64_t>(r));
      positions.push_back(o.positions[i]);
      tokens.push_back(o.tokens[i]);
      kinds.push_back(static_cast<int64_t>(o.quantity));
      weights.push_back(o.weights.empty() ? 1.0 : o.weights[i]);
    }
    exp_rows.push_back(o.exp_of_sum ? 1 : 0);
  }
  ASSIGN_OR_RETURN(at::Tensor hidden, Hidden(batch));
  try {
    const at::Device dev = hidden.device();
    at::Tensor values = at::zeros({static_cast<int64_t>(lengths.size())}, at::TensorOptions().device(dev));
    if (rows.empty()) return values;
    at::Tensor weight_tensor = at::tensor(weights, at::kDouble).to(at::kFloat).to(dev);
    at::Tensor exp_mask = at::tensor(exp_rows, at::kByte).to(dev).to(at::kBool);
    auto sum_rows = [&](const at::Tensor& quantity) {
      values = values.index_add(0, at::tensor(rows, at::kLong).to(dev), quantity * weight_tensor);
      // exp only where asked: a row's summed logits past 88.7 overflow exp to inf, and where()'s backward
      // multiplies the unused branch's inf by 0, a NaN gradient for a finite objective.
      return at::where(exp_mask, at::where(exp_mask, values, at::zeros_like(values)).exp(), values);
    };
    const bool only_logits =
        details == nullptr && std::all_of(objectives.begin(), objectives.end(), [](const auto& o) {
          return o.tokens.empty() || (o.quantity == TokenQuantity::kLogit && o.choice_tokens.empty());
        });
    if (only_logits) return sum_rows(TokenLogitsAt(hidden, rows, positions, tokens));
    ScoredEntries entries{.tokens = tokens};
    for (size_t i = 0, r = 0; r < objectives.size(); i += objectives[r].tokens.size(), ++r) {
      if (objectives[r].choice_tokens.empty()) continue;
      entries.choice_spans.push_back({.begin = static_cast<int64_t>(i),
                                      .end = static_cast<int64_t>(i + objectives[r].tokens.size()),
                                      .choices = objectives[r].choice_tokens});
    }
    // Vocabulary-sized tensors exist a chunk of entries at a time, forward and backward: 4,000 scored positions
    // of a 32,000-token vocabulary held logits, log-softmax and top-k's temporaries at once, 3.4 GB for one
    // Logprobs call that admission counted as none.
    const HeadScores scores = ScoresAt(hidden, rows, positions, entries, details != nullptr ? top_k : 0);
    const at::Tensor &logit = scores.logit, &log_prob = scores.log_prob;
    if (details != nullptr) {
      details->log_probs = log_prob.detach().cpu();
      details->logits = logit.detach().cpu();
      details->top_log_probs = scores.top_log_probs;
      details->top_ids = scores.top_ids;
    }
    at::Tensor kind = at::tensor(kinds, at::kLong).to(dev);
    at::Tensor quantity =
        at::where(kind == static_cast<int64_t>(TokenQuantity::kLogit), logit,
                  at::where(kind == static_cast<int64_t>(TokenQuantity::kProb), log_prob.exp(), log_prob));
    return sum_rows(quantity);
  } catch (const std::exception& e) {
    return StatusFromException(e, "scoring");
  }
}

absl::StatusOr<InputGradients> CausalLM::ObjectiveGradients(const ForwardBatch& batch,
                                                            const std::vector<RowObjective>& objectives) const {
  if (!batch.inputs_embeds.defined()) {
    return absl::InvalidArgumentError("input gradients need inputs_embeds");
  }
  if (c10::InferenceMode::is_enabled()) {
    return absl::FailedPreconditionError("input gradients cannot be taken inside an InferenceMode scope");
  }
  // LibTorch throws when a non-float tensor is made to require grad; Hidden checks the rest.
  if (!batch.inputs_embeds.is_floating_point()) {
    return absl::InvalidArgumentError("inputs_embeds must be a floating-point tensor");
  }
  c10::AutoGradMode grad_mode(true);
  ForwardBatch leaf_batch = batch;
  leaf_batch.inputs_embeds = batch.inputs_embeds.detach().requires_grad_(true);
  ASSIGN_OR_RETURN(at::Tensor values, ObjectiveValues(leaf_batch, objectives));
  try {
    InputGradients out;
    // Rows never mix, so the gradient of the sum holds each row's own gradient in its slice.
    out.gradients = torch::autograd::grad({values.sum()}, {leaf_batch.inputs_embeds},
                                          /*grad_outputs=*/{}, /*retain_graph=*/false,
                                          /*create_graph=*/false, /*allow_unused=*/true)[0];
    if (!out.gradients.defined()) out.gradients = at::zeros_like(leaf_batch.inputs_embeds);
    out.values = values.detach();
    return out;
  } catch (const std::exception& e) {
    return StatusFromException(e, "scoring");
  }
}

}  // namespace attribution::engine
