// SPDX-License-Identifier: Apache-2.0
// The straight path from a baseline to an input in embedding space, along which gradient methods take
// their gradients. A path is described by token ids only; the executor embeds it when its first row
// runs, builds each row's point `baseline + alpha * (end - baseline)` for the whole batch on the device,
// and reduces each row's input gradient there to one number per position, so neither queued rows nor
// their results hold [S, hidden] tensors.
//
//   auto path = std::make_shared<const EmbeddingPath>(EmbeddingPath{
//       .input_ids = ids, .baseline_ids = baseline_ids, .reduction = PathReduction::kTimesDirection});
//   Row row{.kind = RowKind::kGrad, .point = {.path = path, .alpha = 0.25}, .objective = objective};
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/model/propagation_rules.h"

namespace attribution::engine {

// What a grad row on a path returns at each position p: Σ_hidden of
enum class PathReduction {
  kTimesDirection,  // gradient · (end − baseline): integrated gradients, GradientShap
  kTimesInput,      // gradient · input: InputXGradient
  kAbsolute,        // |gradient|: Saliency (Captum's default)
  kSigned,          // gradient: Saliency without abs
};

struct EmbeddingPath {
  std::vector<int64_t> input_ids;      // [S] prompt and target
  std::vector<int64_t> baseline_ids;   // [S] the baseline's token at each position
  std::vector<uint8_t> zero_baseline;  // [S] or empty; 1: the baseline there is the zero embedding
  PathReduction reduction = PathReduction::kTimesDirection;
  PropagationRules rules = PropagationRules::kGradient;  // AttnLRP / CP-LRP shape the backward
  // GradientShap: sample s ends the path at input + noise_stdev · N(0, 1) at the `noised` positions (the
  // features: Captum's GradientShap moves every input it attributes, a token equal to its baseline too), the
  // noise drawn from a generator seeded by (noise_seed, s), so a sample's noise does not depend on which batch
  // its row lands in.
  double noise_stdev = 0;
  uint64_t noise_seed = 0;
  std::vector<uint8_t> noised;  // [S] or empty (no noise); 1: noise goes there

  int64_t length() const { return static_cast<int64_t>(input_ids.size()); }
  // Bytes the path holds once embedded (input and baseline), in a `dtype_bytes` compute dtype.
  int64_t EmbeddedBytes(int64_t hidden_size, int64_t dtype_bytes) const {
    return 2 * length() * hidden_size * dtype_bytes;
  }
};

// A row's point on a path.
struct PathPoint {
  std::shared_ptr<const EmbeddingPath> path;  // null: the row is given by token ids
  double alpha = 1.0;                         // 0: the baseline, 1: the path's end
  int64_t noise_sample = -1;                  // >= 0: GradientShap sample whose noise moves the end
};

}  // namespace attribution::engine
