// SPDX-License-Identifier: Apache-2.0
// Batched text generation with a KV cache: greedy, or temperature / top-k / top-p sampling from a seeded
// generator, stopping at end-of-sequence ids or after max_new_tokens.
//
//   GenerationOptions options{.max_new_tokens = 25};
//   ASSIGN_OR_RETURN(auto outputs, Generate(*model, {prompt_ids}, options));
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"

namespace attribution::engine {

struct GenerationOptions {
  int64_t max_new_tokens = 25;
  double temperature = 0.0;  // 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
  // Sample only from the top_k most likely tokens (ties with the k-th kept, as transformers'
  // TopKLogitsWarper); 0: off; above the vocabulary: no cut. Applied after temperature, before top_p.
  int64_t top_k = 0;
  double top_p = 1.0;  // sample only from the smallest set of tokens whose mass reaches top_p
  uint64_t seed = 0;
  std::vector<int64_t> stop_token_ids;  // empty: the model's eos ids; at most kMaxStopTokenIds
  bool ignore_stop_tokens = false;      // run to max_new_tokens whatever is produced
};

// Every generated token is looked up among the stop ids on the executor thread, so their count is bounded.
inline constexpr int64_t kMaxStopTokenIds = 256;

struct Generation {
  std::vector<int64_t> tokens;   // generated ids, the stop token included when one was produced
  std::vector<float> log_probs;  // log-prob of each generated token under the unscaled model
  bool stopped = false;          // true when a stop token (or GenerateAsync's should_stop) ended it
};

// Picks the next token of every row from [B, vocab] float32 CPU logits: argmax when temperature is 0,
// else a sample drawn with `generator` from softmax(logits / temperature), cut to the top_k tokens,
// renormalized and cut to top_p (transformers' warper order).
at::Tensor PickNextTokens(const at::Tensor& logits, const GenerationOptions& options, at::Generator& generator);

// The ids that end a generation: options.stop_token_ids, else the model's eos ids; none when
// options.ignore_stop_tokens.
std::vector<int64_t> StopTokens(const ModelConfig& config, const GenerationOptions& options);

// Checks max_new_tokens, temperature, top_k and top_p (INVALID_ARGUMENT naming the field).
absl::Status CheckGenerationOptions(const GenerationOptions& options);

// Generates a continuation of every prompt (each a non-empty id list) in one batch.
absl::StatusOr<std::vector<Generation>> Generate(const CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerationOptions& options);

}  // namespace attribution::engine
