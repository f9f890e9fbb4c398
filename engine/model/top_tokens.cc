// SPDX-License-Identifier: Apache-2.0
#include "engine/model/top_tokens.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace attribution::engine {

std::pair<at::Tensor, at::Tensor> TopTokensInIdOrderOfTies(const at::Tensor& log_probs, int64_t k) {
  // Most rows tie nowhere in their best k + 1 (float32 log-probs): then at::topk's list is the only
  // answer, and one top-k with one check costs a seventh of the selection below (512 x 32,000: 18
  // against 131 ms; a Logprobs call's 5 x 4,000: 0.07 against 0.28 ms). A NaN fails the check.
  const int64_t vocab = log_probs.size(-1);
  auto [best, best_ids] = log_probs.topk(std::min(k + 1, vocab), -1);  // best first, NaN first
  if (k < vocab && best.narrow(1, 0, k).gt(best.narrow(1, 1, k)).all().item<bool>()) {
    return {best.narrow(1, 0, k), best_ids.narrow(1, 0, k)};
  }
  // The k-th best value decides the cut: every token better than it is in, and of the tokens equal to
  // it, the ones with the lowest ids fill what is left. A NaN counts as better than any number, and
  // NaNs as equal to one another.
  const at::Tensor kth_best = best.narrow(1, k - 1, 1);  // [N, 1]
  const at::Tensor is_nan = log_probs.isnan(), kth_is_nan = kth_best.isnan();
  const at::Tensor better = (log_probs > kth_best).logical_or_(is_nan.logical_and(kth_is_nan.logical_not()));
  const at::Tensor tied = (log_probs == kth_best).logical_or_(is_nan.logical_and(kth_is_nan));
  // One selection key: better tokens above all tied ones, tied ones by lowest id, the rest below. Fewer
  // than k tokens are better than the k-th, so its top k are those and the first ties. Float keys hold
  // ids exactly up to 2^24, beyond any vocabulary.
  const at::Tensor ids = at::arange(log_probs.size(-1), log_probs.options().dtype(at::kFloat));
  const at::Tensor key =
      at::where(better, at::scalar_tensor(1.0f, ids.options()),
                at::where(tied, -ids, at::scalar_tensor(-std::numeric_limits<float>::infinity(), ids.options())));
  const at::Tensor chosen = std::get<0>(std::get<1>(key.topk(k, -1)).sort(-1));  // [N, k], ids ascending
  const at::Tensor values = log_probs.gather(1, chosen);
  auto [best_first, by_value] = values.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  return {best_first, chosen.gather(1, by_value)};
}

}  // namespace attribution::engine
