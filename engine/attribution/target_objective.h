// SPDX-License-Identifier: Apache-2.0
// The one place that says how a teacher-forced target is scored: the prompt and the target run as
// one sequence, and target token t is scored at position prompt_length - 1 + t (the logits after
// the token before it). Attribution plans, faithfulness curves and Logprobs all build their
// objectives here.
//
//   Row row{.kind = RowKind::kScore, .input_ids = prompt_then_target,
//           .objective = TargetObjective(prompt.size(), target, {}, TokenQuantity::kLogProb)};
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/model/causal_lm.h"

namespace attribution::engine {

// The objective of `target_ids` after a prompt of `prompt_length` tokens, or of its token
// `only_token` alone. With `foil_ids` (contrastive; as long as the target) the foil is scored at
// the same positions, after the same target prefix, and subtracted.
//
// Whole target: the sum over its tokens of `quantity`, except that a probability without a foil is
// the probability of the whole target (the exponential of the summed log-probs), not a sum of
// per-token probabilities. A contrastive probability compares per-token probabilities (the engine
// allows it for single-token targets only). One token: `quantity` of that token (minus the foil's).
//
// Entries are the target's tokens in order, then the foil's, each with an explicit weight (+1, -1).
RowObjective TargetObjective(int64_t prompt_length, const std::vector<int64_t>& target_ids,
                             const std::vector<int64_t>& foil_ids, TokenQuantity quantity,
                             std::optional<int64_t> only_token = std::nullopt);

}  // namespace attribution::engine
