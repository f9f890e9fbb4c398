// SPDX-License-Identifier: Apache-2.0
// What a component-attribution row asks of the executor: run one prompt of a clean/corrupted pair
// with one component moved towards its value in the other prompt's run, and return the objective, its
// derivative along that move, or (attribution patching) every site's first-order patching estimate.
// The executor runs each pair's two prompts once, keeps their activations at every site while any of
// the pair's rows is held elsewhere, and applies every row's patch inside one batched forward.
//
//   auto pair = std::make_shared<const PromptPair>(PromptPair{.clean_ids = clean, .corrupted_ids = corrupted});
//   Row row{.kind = RowKind::kScore, .input_ids = corrupted, .objective = logit_difference,
//           .component = {.pair = pair, .run = PairRun::kCorrupted,
//                         .patch = ComponentSelection{.site = ComponentSite::kHeads, .layer = 3, .head = 5}}};
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "engine/model/causal_lm.h"

namespace attribution::engine {

// Two prompts of equal length that differ where the studied behaviour is decided.
struct PromptPair {
  std::vector<int64_t> clean_ids;
  std::vector<int64_t> corrupted_ids;
  int64_t length() const { return static_cast<int64_t>(clean_ids.size()); }
  const std::vector<int64_t>& ids(bool clean) const { return clean ? clean_ids : corrupted_ids; }
  // The tokens both prompts share before they first differ: a causal model computes the same values
  // there in both runs.
  int64_t shared_length() const {
    return std::mismatch(clean_ids.begin(), clean_ids.end(), corrupted_ids.begin(), corrupted_ids.end()).first -
           clean_ids.begin();
  }
};

enum class PairRun { kClean, kCorrupted };

// One component at one site of one layer; -1 selects every position / head.
struct ComponentSelection {
  ComponentSite site = ComponentSite::kHeads;
  int64_t layer = 0;
  int64_t position = -1;
  int64_t head = -1;  // kHeads only
};

struct ComponentWork {
  std::shared_ptr<const PromptPair> pair;  // null: not a component row
  PairRun run = PairRun::kClean;           // the prompt the row reads (its input_ids)
  // Score / grad rows: the selected activation becomes `run's + alpha · (other run's − run's)`. Grad
  // rows return d objective / d alpha (layer integrated gradients).
  std::optional<ComponentSelection> patch;
  double alpha = 1.0;
  // Grad rows without a patch: at every site, Σ over the last dimension of (other run's − run's
  // activation) · d objective / d activation (attribution patching), per layer and position (heads:
  // and head).
  bool site_estimates = false;
  // AtP*'s two corrections of those estimates (Kramár et al. 2024). Heads: the effect of moving the
  // head's query, key and value at each position to the other run's, with the attention weights the
  // moved query or key gives recomputed exactly (a saturated softmax has a vanishing gradient) and
  // only what follows them linearised: Σ_s (a'[t,s] − a[t,s]) · d objective / d a[t,s], plus the value's
  // first-order term.
  bool exact_attention_weights = false;
  // >= 0: the backward drops the gradient through this layer's attention and MLP outputs (GradDrop),
  // so estimates that cancel through the layer's paths are seen apart.
  int64_t gradient_dropped_layer = -1;
};

}  // namespace attribution::engine
