// SPDX-License-Identifier: Apache-2.0
// What an attribution asks for and what it returns, in engine terms (token ids, not text). Semantics
// follow Captum's LLMAttribution / LLMGradientAttribution (see DESIGN.md 3.4):
//
//  * the target is teacher-forced after the prompt; the scored quantity is the log-prob (default),
//    probability or logit of the whole target, or its difference to a foil (contrastive);
//  * features are prompt tokens (default: every one) or spans of tokens, each with its own baseline;
//  * gradient methods interpolate the embeddings of feature positions between their baseline and
//    their actual value; other positions keep their actual embeddings.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/attribution/integration_rules.h"
#include "engine/model/causal_lm.h"
#include "engine/model/generation.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

enum class AttributionMethod {
  kIntegratedGradients,
  kGradientShap,
  kSaliency,
  kInputXGradient,
  kFeatureAblation,
  kShapleyValues,
  kShapleyValueSampling,
  kLime,
  kKernelShap,
  kAttnLrp,
  kCpLrp,
};
// By the method table (methods.h).
absl::StatusOr<AttributionMethod> ParseAttributionMethod(const std::string& name);
const char* AttributionMethodName(AttributionMethod method);
bool IsGradientMethod(AttributionMethod method);

// Prompt positions [begin, end) that act as one feature. Perturbation methods replace them by
// `baseline_ids` when given: any length, and empty deletes the span; gradient methods need one id per
// position. Not given: the request's baseline token once per position.
struct FeatureSpan {
  int64_t begin = 0;
  int64_t end = 0;
  std::optional<std::vector<int64_t>> baseline_ids;
};

struct AttributionRequest {
  std::vector<int64_t> prompt_ids;
  std::vector<int64_t> target_ids;  // empty: generated greedily with `generation`
  GenerationOptions generation;     // used only when target_ids is empty
  std::vector<int64_t> foil_ids;    // contrastive when given: same length as the target
  TokenQuantity quantity = TokenQuantity::kLogProb;
  // Answer choices, one token each (seed 001's option letters): when given, the target (one of them)
  // is scored by its probability renormalised over them, p(target) / Σ_c p(c), instead of over the
  // vocabulary (quantity log_prob or prob).
  std::vector<int64_t> choice_ids;
  std::vector<FeatureSpan> features;  // empty: one feature per prompt token

  AttributionMethod method = AttributionMethod::kIntegratedGradients;
  // Baseline of gradient methods at feature positions: the zero embedding, or the embedding of
  // `baseline_token_id` (also the default perturbation replacement).
  bool zero_embedding_baseline = false;
  int64_t baseline_token_id = 0;
  int64_t n_steps = 50;  // integrated gradients (with a tolerance: points over all orders)
  IntegrationRule rule = IntegrationRule::kGaussLegendre;
  // Integrated gradients: > 0 raises the order (fejer2: 7, 15, 31, ... nested; other rules 8, 16, 32, ...;
  // at most n_steps points in all) until |convergence delta| and the estimated error of the latest order
  // are both within completeness_tolerance · |f(x) - f(baseline)|; 0 runs n_steps points once.
  double completeness_tolerance = 0;
  int64_t n_samples = 25;  // Shapley value sampling, GradientShap, Lime, KernelShap
  double stdev = 0.0;      // GradientShap: noise added to the input embeddings
  uint64_t seed = 0;
  bool saliency_abs = true;        // Saliency: |gradient| (Captum's default) or signed
  bool want_token_matrix = false;  // per-output-token attributions (T x F)
  bool want_faithfulness = false;  // deletion / insertion curves of the sequence attribution

  Priority priority = Priority::kNormal;
  absl::Time deadline = absl::InfiniteFuture();
  // Set by the Attributor: whether nobody waits for the answer any more (cancelled, past its deadline, the
  // engine stopping). Long reductions (LIME's Lasso fits) stop at it.
  std::function<bool()> abandoned = [] { return false; };
};

struct AttributionLimits {
  int64_t max_steps = 1024;
  int64_t max_samples = 1024;
  int64_t max_features = 4096;
  int64_t max_exact_shapley_features = 12;  // 2^12 coalitions
  int64_t max_tokens = 4096;                // prompt + target
  int64_t max_new_tokens = 512;
  int64_t max_choices = 256;  // answer choices a target is renormalised over
  // Rows one request may queue: the Attributor takes its engine's max_rows_per_request.
  int64_t max_rows = 1 << 16;
  // Tokens those rows hold together: the Attributor takes its engine's max_tokens_per_request.
  int64_t max_queued_tokens = int64_t{1} << 24;
};

// How faithful an explanation is to the model: deletion and insertion curves over its top-ranked
// features, as ERASER's comprehensiveness and sufficiency (DeYoung et al., 2020). The scored quantity
// is the probability of the whole target (whatever the attribution scored), so numbers compare across
// requests and methods:
//
//   deletion[k]  = p(target | prompt with its top-k% features replaced by their baselines)
//   insertion[k] = p(target | prompt with only its top-k% features, the rest at their baselines)
//   comprehensiveness_aopc = mean_k (full - deletion[k])    (high: the top features were needed)
//   sufficiency_aopc       = mean_k (full - insertion[k])   (low: the top features were enough)
//
// Features are ranked by signed attribution (supporting the target first); k% of F features means
// ceil(k * F / 100) of them.
struct Faithfulness {
  std::vector<double> percents;      // the curve points: 1, 5, 10, 20, 50 (% of features)
  std::vector<int64_t> features_at;  // features removed / kept at each point
  double full = 0;                   // p(target | prompt)
  double empty = 0;                  // p(target | every feature at its baseline)
  std::vector<double> deletion;      // per point
  std::vector<double> insertion;     // per point
  double comprehensiveness_aopc = 0;
  double sufficiency_aopc = 0;
};

struct AttributionResult {
  std::vector<int64_t> target_ids;             // as given or generated
  std::vector<double> sequence;                // [F]
  std::vector<std::vector<double>> per_token;  // [T][F] when asked (and for perturbation methods)
  std::vector<double> target_log_probs;        // [T] log p(target_t | prompt, target_<t)
  std::vector<double> foil_log_probs;          // [T] contrastive: log p(foil_t | prompt, target_<t)
  double objective = 0;                        // the scored quantity at the input
  std::optional<double> convergence_delta;     // integrated gradients: sum(attr) - (f(x) - f(x'))
  int64_t integration_steps = 0;               // integrated gradients: points of the answer's order
  std::optional<bool> tolerance_met;           // with a completeness tolerance: whether it was reached
  std::optional<Faithfulness> faithfulness;    // when asked
  int64_t rows = 0, forward_passes = 0, backward_passes = 0;
  absl::Duration queue_time, device_time;
};

// INVALID_ARGUMENT "field = value is outside [low, high]" unless low <= value <= high.
absl::Status CheckRange(int64_t value, int64_t low, int64_t high, absl::string_view field);
// CheckRange for a bound that is one of the model's `limits` (a server's models each have their own, which
// ListModels reports): the message names it, "(16: this model's limits.max_steps)".
absl::Status CheckWithinLimit(int64_t value, int64_t low, int64_t high, absl::string_view field,
                              absl::string_view limit);
// INVALID_ARGUMENT "field[i] = id is outside the vocabulary [0, vocab)" for the first id out of range.
absl::Status CheckTokenIds(const std::vector<int64_t>& ids, absl::string_view field, int64_t vocab);

// Checks every field against the model and limits; INVALID_ARGUMENT names the field and range.
absl::Status ValidateAttributionRequest(const AttributionRequest& request, const ModelConfig& config,
                                        const AttributionLimits& limits);

}  // namespace attribution::engine
