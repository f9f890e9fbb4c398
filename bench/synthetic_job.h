// SPDX-License-Identifier: Apache-2.0
// The synthetic attribution job of method_bench and lrp_bench: a prompt and target spread over the
// vocabulary (bos first), and the matmul FLOP one forward over it needs. bench/python_captum_attribution.py
// builds the same ids (its "synthetic:N" arguments and its seed000 job).
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

// Seed 000's job on a synthetic prompt (as tools/captum_reference.py frames it): a 40-token prompt,
// the probability of the "No" token (the synthetic target's first token) minus that of "Yes" (its
// second, as the foil), integrated gradients with 15 steps from the pad-token (id 0) embedding.
inline engine::AttributionRequest Seed000Request(const engine::ModelConfig& c) {
  engine::AttributionRequest request = SyntheticRequest(c, 40, 2);
  request.foil_ids = {request.target_ids[1]};
  request.target_ids.resize(1);
  request.quantity = engine::TokenQuantity::kProb;
  request.method = engine::AttributionMethod::kIntegratedGradients;
  request.baseline_token_id = 0;
  request.n_steps = 15;
  return request;
}

// 2 · decoder linear parameters · tokens, plus the LM head at the target's positions; a backward with
// respect to the inputs costs two of these.
inline double RowForwardFlop(const engine::ModelConfig& c, int64_t prompt_tokens, int64_t target_tokens) {
  return 2.0 * DecoderLinearWeightsPerToken(c) * static_cast<double>(prompt_tokens + target_tokens) +
         2.0 * c.hidden_size * c.vocab_size * static_cast<double>(target_tokens);
}

}  // namespace attribution::bench
