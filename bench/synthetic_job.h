// SPDX-License-Identifier: Apache-2.0
// The synthetic attribution job of method_bench and lrp_bench: a prompt and target spread over the
// vocabulary (bos first), and the matmul FLOP one forward over it needs.
#pragma once

#include <cstdint>

#include "bench/bench_util.h"
#include "engine/attribution/attribution_request.h"
#include "engine/model/model_config.h"

namespace attribution::bench {

inline engine::AttributionRequest SyntheticRequest(const engine::ModelConfig& c, int64_t prompt_tokens,
                                                   int64_t target_tokens) {
  engine::AttributionRequest request;
  for (int64_t i = 0; i < prompt_tokens; ++i)
    request.prompt_ids.push_back(i == 0 ? 1 : 3 + (i * 7919) % (c.vocab_size - 3));
  for (int64_t i = 0; i < target_tokens; ++i) request.target_ids.push_back(3 + (i * 104729) % (c.vocab_size - 3));
  return request;
}

// 2 · decoder linear parameters · tokens, plus the LM head at the target's positions; a backward with
// respect to the inputs costs two of these.
inline double RowForwardFlop(const engine::ModelConfig& c, int64_t prompt_tokens, int64_t target_tokens) {
  return 2.0 * DecoderLinearWeightsPerToken(c) * static_cast<double>(prompt_tokens + target_tokens) +
         2.0 * c.hidden_size * c.vocab_size * static_cast<double>(target_tokens);
}

}  // namespace attribution::bench
