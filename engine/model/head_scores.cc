// SPDX-License-Identifier: Apache-2.0
#include "engine/model/head_scores.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <functional>
#include <utility>

#include "engine/model/top_tokens.h"

namespace attribution::engine {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [end - begin, vocab] float32 logits of entries [begin, end).
using ChunkLogits = std::function<at::Tensor(int64_t begin, int64_t end)>;

struct Span {
  int64_t first;  // within the chunk
  int64_t count;
  const std::vector<int64_t>* choices;
};

// The parts of choice spans that fall in [begin, end).
std::vector<Span> SpansIn(const std::vector<ScoredEntries::ChoiceSpan>& spans, int64_t begin, int64_t end) {
  std::vector<Span> in;
  for (const auto& span : spans) {
    const int64_t first = std::max(span.begin, begin), last = std::min(span.end, end);
    if (first < last && !span.choices.empty()) in.push_back({first - begin, last - first, &span.choices});
  }
  return in;
}

at::Tensor ChoiceIndex(const Span& span, const at::Device& device) {
  return at::tensor(*span.choices, at::kLong).to(device);
}

HeadScores ScoreChunks(const ChunkLogits& logits_of, const at::Tensor& tokens, const ScoredEntries& entries,
                       int64_t chunk_entries, int64_t top_k) {
  const int64_t count = tokens.size(0);
  std::vector<at::Tensor> logit_parts, log_prob_parts, top_value_parts, top_id_parts;
  for (int64_t begin = 0; begin < count; begin += chunk_entries) {
    const int64_t end = std::min(count, begin + chunk_entries);
    const at::Tensor logits = logits_of(begin, end);
    const at::Tensor token_index = tokens.narrow(0, begin, end - begin).unsqueeze(1);
    const at::Tensor logit = logits.gather(1, token_index).squeeze(1);
    const at::Tensor all_log_probs = at::log_softmax(logits, -1);
    at::Tensor log_prob = all_log_probs.gather(1, token_index).squeeze(1);
    for (const Span& span : SpansIn(entries.choice_spans, begin, end)) {
      const at::Tensor normalizer =
          logits.narrow(0, span.first, span.count).index_select(1, ChoiceIndex(span, logits.device())).logsumexp(-1);
      log_prob.narrow(0, span.first, span.count).copy_(logit.narrow(0, span.first, span.count) - normalizer);
    }
    if (top_k > 0) {
      auto [values, ids] = TopTokensInIdOrderOfTies(all_log_probs, top_k);
      top_value_parts.push_back(values.cpu());
      top_id_parts.push_back(ids.cpu());
    }
    logit_parts.push_back(logit);
    log_prob_parts.push_back(log_prob);
  }
  HeadScores scores{.logit = at::cat(logit_parts), .log_prob = at::cat(log_prob_parts)};
  if (top_k > 0) {
    scores.top_log_probs = at::cat(top_value_parts);
    scores.top_ids = at::cat(top_id_parts);
  }
  return scores;
}

// d(logit, log_prob)/d logits of one chunk, written over `logits`: onehot(token) * (g_logit + g_log_prob)
// - g_log_prob * softmax (over the vocabulary, or over a span's choices, zero elsewhere).
void LogitGradientInPlace(at::Tensor& logits, const at::Tensor& token_index, const at::Tensor& grad_logit,
                          const at::Tensor& grad_log_prob, const std::vector<Span>& spans) {
  std::vector<at::Tensor> choice_softmax;
  for (const Span& span : spans) {
    choice_softmax.push_back(
        at::softmax(logits.narrow(0, span.first, span.count).index_select(1, ChoiceIndex(span, logits.device())), -1));
  }
  logits.sub_(logits.logsumexp(-1, /*keepdim=*/true)).exp_();
  for (size_t i = 0; i < spans.size(); ++i) {
    // index_add_: a choice listed twice counts twice in the forward's log-sum-exp.
    logits.narrow(0, spans[i].first, spans[i].count)
        .zero_()
        .index_add_(1, ChoiceIndex(spans[i], logits.device()), choice_softmax[i]);
  }
  logits.mul_(-grad_log_prob.unsqueeze(1));
  logits.scatter_add_(1, token_index, (grad_logit + grad_log_prob).unsqueeze(1));
}

class ChunkedHeadFunction : public torch::autograd::Function<ChunkedHeadFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& selected, const at::Tensor& weight,
                               const at::Tensor& tokens, const ScoredEntries& entries, int64_t chunk_entries) {
    ctx->save_for_backward({selected, weight, tokens});
    ctx->saved_data["chunk"] = chunk_entries;
    std::vector<int64_t> span_bounds, choices, choice_ends;
    for (const auto& span : entries.choice_spans) {
      span_bounds.insert(span_bounds.end(), {span.begin, span.end});
      choices.insert(choices.end(), span.choices.begin(), span.choices.end());
      choice_ends.push_back(static_cast<int64_t>(choices.size()));
    }
    ctx->saved_data["span_bounds"] = span_bounds;
    ctx->saved_data["choices"] = choices;
    ctx->saved_data["choice_ends"] = choice_ends;
    const HeadScores scores = ScoreChunks(DenseLogits(selected, weight), tokens, entries, chunk_entries, 0);
    return {scores.logit, scores.log_prob};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &selected = saved[0], &weight = saved[1], &tokens = saved[2];
    const int64_t chunk_entries = ctx->saved_data["chunk"].toInt();
    const ScoredEntries entries = RestoreSpans(ctx);
    const int64_t count = tokens.size(0);
    auto grad_or_zeros = [&](const at::Tensor& g) {
      return g.defined() ? g.to(at::kFloat) : at::zeros({count}, selected.options().dtype(at::kFloat));
    };
    const at::Tensor grad_logit = grad_or_zeros(grad_outputs[0]), grad_log_prob = grad_or_zeros(grad_outputs[1]);
    const ChunkLogits logits_of = DenseLogits(selected, weight);
    at::Tensor grad_selected = at::empty_like(selected);
    for (int64_t begin = 0; begin < count; begin += chunk_entries) {
      const int64_t end = std::min(count, begin + chunk_entries), n = end - begin;
      at::Tensor logits = logits_of(begin, end);
      LogitGradientInPlace(logits, tokens.narrow(0, begin, n).unsqueeze(1), grad_logit.narrow(0, begin, n),
                           grad_log_prob.narrow(0, begin, n), SpansIn(entries.choice_spans, begin, end));
      // As the head's own backward would: the float32 gradient rounded to the compute dtype, then the matmul.
      grad_selected.narrow(0, begin, n).copy_(at::matmul(logits.to(selected.scalar_type()), weight));
    }
    return {grad_selected, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  static ChunkLogits DenseLogits(const at::Tensor& selected, const at::Tensor& weight) {
    return [selected, weight](int64_t begin, int64_t end) {
      return at::matmul(selected.narrow(0, begin, end - begin), weight.t()).to(at::kFloat);
    };
  }

  static ScoredEntries RestoreSpans(AutogradContext* ctx) {
    const std::vector<int64_t> bounds = ctx->saved_data["span_bounds"].toIntVector();
    const std::vector<int64_t> choices = ctx->saved_data["choices"].toIntVector();
    const std::vector<int64_t> choice_ends = ctx->saved_data["choice_ends"].toIntVector();
    ScoredEntries entries;
    for (size_t i = 0, start = 0; i < choice_ends.size(); start = choice_ends[i++]) {
      entries.choice_spans.push_back({bounds[2 * i], bounds[2 * i + 1],
                                      std::vector<int64_t>(choices.begin() + start, choices.begin() + choice_ends[i])});
    }
    return entries;
  }
};

}  // namespace

HeadScores ScoreWithHead(const Linear& head, const at::Tensor& selected, const ScoredEntries& entries,
                         int64_t chunk_entries, int64_t top_k) {
  const at::Tensor tokens = at::tensor(entries.tokens, at::kLong).to(selected.device());
  chunk_entries = std::max<int64_t>(1, chunk_entries);
  if (c10::GradMode::is_enabled() && selected.requires_grad()) {
    // The loader keeps the head dense in every format, without a bias.
    variable_list out = ChunkedHeadFunction::apply(selected, head.dense_weight(), tokens, entries, chunk_entries);
    HeadScores scores{.logit = out[0], .log_prob = out[1]};
    if (top_k > 0) {
      const HeadScores detached = ScoreWithHead(head, selected.detach(), entries, chunk_entries, top_k);
      scores.top_log_probs = detached.top_log_probs;
      scores.top_ids = detached.top_ids;
    }
    return scores;
  }
  const ChunkLogits logits_of = [&](int64_t begin, int64_t end) {
    return head.Forward(selected.narrow(0, begin, end - begin)).to(at::kFloat);
  };
  return ScoreChunks(logits_of, tokens, entries, chunk_entries, top_k);
}

}  // namespace attribution::engine
