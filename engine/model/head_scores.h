// SPDX-License-Identifier: Apache-2.0
// Scores of chosen tokens from the LM head, computed a chunk of positions at a time so that no more than one
// chunk's vocabulary-sized logits exist at once, with or without a gradient.
//
//   HeadScores s = ScoreWithHead(lm_head, selected_hidden, entries, /*chunk_entries=*/512, /*top_k=*/0);
//   s.log_prob.sum().backward();  // d/d selected_hidden, recomputing each chunk's logits
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/model/linear.h"

namespace attribution::engine {

struct ScoredEntries {
  // Entry i scores tokens[i] from row i of the selected hidden states.
  std::vector<int64_t> tokens;
  // Entries [begin, end) take their log-probs over `choices` only (log_softmax of those logits): a row scored
  // over its answer choices. Spans do not overlap; entries outside every span take them over the vocabulary.
  struct ChoiceSpan {
    int64_t begin = 0;
    int64_t end = 0;
    std::vector<int64_t> choices;
  };
  std::vector<ChoiceSpan> choice_spans;
};

struct HeadScores {
  at::Tensor logit;          // [E] float32
  at::Tensor log_prob;       // [E] float32
  at::Tensor top_log_probs;  // [E, k] float32 on the CPU, when top_k > 0
  at::Tensor top_ids;        // [E, k] int64 on the CPU, when top_k > 0
};

// `selected` is [E, hidden] in the compute dtype. Where it requires a gradient (and grad mode is on), logit
// and log_prob are differentiable with respect to it, and the backward pass recomputes each chunk's logits
// from the head's dense weight instead of keeping them: a 4,000-token target of a 32,000-token vocabulary
// kept 0.5 GB of log-softmax per row for the backward and built two more of its size there. top_k needs no
// gradient.
HeadScores ScoreWithHead(const Linear& head, const at::Tensor& selected, const ScoredEntries& entries,
                         int64_t chunk_entries, int64_t top_k);

}  // namespace attribution::engine
