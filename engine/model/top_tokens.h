// SPDX-License-Identifier: Apache-2.0
// The k most likely tokens of each row, in an order that does not depend on the device or the kernel.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace attribution::engine {

// The k best of each row of `log_probs` ([N, vocab], k <= vocab) as (values, ids), each [N, k]: best
// first, equal values in id order, NaN first (as at::topk ranks it). at::topk leaves ties in no set
// order (nor says which of several tied tokens makes the cut; its kernels differ by device and size),
// and in bfloat16 or float16 most top-20 lists hold ties: equal log-probs come out as a stable sort by
// id would put them. Linear in the vocabulary, however many tokens tie (a flat row ties all of them).
std::pair<at::Tensor, at::Tensor> TopTokensInIdOrderOfTies(const at::Tensor& log_probs, int64_t k);

}  // namespace attribution::engine
