// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/target_objective.h"

namespace attribution::engine {

RowObjective TargetObjective(int64_t prompt_length, const std::vector<int64_t>& target_ids,
                             const std::vector<int64_t>& foil_ids, TokenQuantity quantity,
                             std::optional<int64_t> only_token) {
  const bool contrastive = !foil_ids.empty();
  const int64_t begin = only_token.value_or(0);
  const int64_t end = only_token ? *only_token + 1 : static_cast<int64_t>(target_ids.size());
  // p(whole target) = exp(sum of log-probs): summing per-token probabilities would mean nothing.
  const bool whole_target_prob = !only_token && quantity == TokenQuantity::kProb && !contrastive;
  RowObjective o{.quantity = whole_target_prob ? TokenQuantity::kLogProb : quantity, .exp_of_sum = whole_target_prob};
  auto add = [&](const std::vector<int64_t>& ids, double weight) {
    for (int64_t t = begin; t < end; ++t) {
      o.positions.push_back(prompt_length - 1 + t);
      o.tokens.push_back(ids[t]);
      o.weights.push_back(weight);
    }
  };
  add(target_ids, 1.0);
  if (contrastive) add(foil_ids, -1.0);
  return o;
}

}  // namespace attribution::engine
