// SPDX-License-Identifier: Apache-2.0
// Component attribution: how much each model component (an attention head, an attention or MLP
// block's output, the residual stream entering a layer; per layer, head and position) carries a
// behaviour that a clean prompt shows and a corrupted one of the same length does not, measured by a
// metric of the last position's logits (e.g. the logit difference of the right and a wrong answer).
//
//   ACTIVATION_PATCHING         the metric with one component moved to its value in the other run,
//                               minus the metric of the run it was patched into (one score row each);
//   LAYER_INTEGRATED_GRADIENTS  the integral of d metric / d alpha along that move (n_steps grad rows
//                               each); it sums to the patching effect, the difference reported as the
//                               convergence delta;
//   ATTRIBUTION_PATCHING (AtP)  the first-order estimate (other − this) · d metric / d activation of
//                               every component from one forward + backward (Nanda 2023; Kramár et al.
//                               2024).
//   ATTRIBUTION_PATCHING_STAR   AtP* (Kramár et al. 2024): heads' attention weights recomputed exactly for
//                               the moved queries and keys, and GradDrop: per layer l a backward without
//                               the gradient through l's outputs, the estimate Σ_l |AtP_l| / (L − 1). A
//                               magnitude for ranking components (no sign), from L forward + backward.
//
// Denoising runs the corrupted prompt and patches in clean activations; noising the reverse. Every
// row of every pair goes to the batching engine; the executor runs each pair's two prompts once and
// shares their activations among its rows (engine/scheduler/component_work.h).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/attribution/integration_rules.h"
#include "engine/scheduler/batching_engine.h"

namespace attribution::engine {

enum class ComponentMethod {
  kActivationPatching,
  kLayerIntegratedGradients,
  kAttributionPatching,
  kAttributionPatchingStar,
};
enum class PatchDirection { kDenoising, kNoising };
enum class ComponentMetric {
  kLogitDifference,            // logit(answer) − logit(wrong_answer)
  kNormalizedLogitDifference,  // (LD − LD_corrupted) / (LD_clean − LD_corrupted)
  kLogProb,                    // log p(answer)
  kProb,                       // p(answer)
  kProbDifference,             // p(answer) − p(wrong_answer)
};
// The axes of a grid: a component is a (layer, head) at every position, a (layer, position) with
// every head (hidden-size sites: the whole vector), or a (layer, position, head).
enum class ComponentGranularity { kLayerHead, kLayerPosition, kLayerPositionHead };

inline constexpr ComponentMethod kAllComponentMethods[] = {
    ComponentMethod::kActivationPatching, ComponentMethod::kLayerIntegratedGradients,
    ComponentMethod::kAttributionPatching, ComponentMethod::kAttributionPatchingStar};
inline constexpr ComponentMetric kAllComponentMetrics[] = {
    ComponentMetric::kLogitDifference, ComponentMetric::kNormalizedLogitDifference, ComponentMetric::kLogProb,
    ComponentMetric::kProb, ComponentMetric::kProbDifference};
inline constexpr PatchDirection kAllPatchDirections[] = {PatchDirection::kDenoising, PatchDirection::kNoising};
inline constexpr ComponentGranularity kAllComponentGranularities[] = {
    ComponentGranularity::kLayerHead, ComponentGranularity::kLayerPosition, ComponentGranularity::kLayerPositionHead};

// Names as the API spells the values, in lower case ("answer_log_prob" for ANSWER_LOG_PROB), so the server
// maps proto values to these enums by name and messages use the names the caller sent.
const char* ComponentMethodName(ComponentMethod method);
const char* ComponentMetricName(ComponentMetric metric);
const char* PatchDirectionName(PatchDirection direction);
const char* ComponentGranularityName(ComponentGranularity granularity);
absl::StatusOr<ComponentMethod> ParseComponentMethod(const std::string& name);
absl::StatusOr<ComponentMetric> ParseComponentMetric(const std::string& name);
absl::StatusOr<PatchDirection> ParsePatchDirection(const std::string& name);
absl::StatusOr<ComponentGranularity> ParseComponentGranularity(const std::string& name);
// The metrics that compare the answer with a wrong answer (they need wrong_answer).
bool IsDifference(ComponentMetric metric);
// Heads default to (layer, head); the other sites have (layer, position) only.
ComponentGranularity DefaultGranularity(ComponentSite site);
bool SiteHasGranularity(ComponentSite site, ComponentGranularity granularity);

struct ComponentRequest {
  std::vector<PromptPair> pairs;  // each clean and corrupted of equal length; results averaged
  int64_t answer = -1;            // token scored after the last position
  int64_t wrong_answer = -1;      // the difference metrics' other token
  ComponentMetric metric = ComponentMetric::kLogitDifference;
  ComponentMethod method = ComponentMethod::kActivationPatching;
  PatchDirection direction = PatchDirection::kDenoising;
  std::vector<ComponentSite> sites = {ComponentSite::kHeads};
  std::optional<ComponentGranularity> granularity;  // every site's default when unset
  int64_t n_steps = 16;                             // layer integrated gradients
  IntegrationRule rule = IntegrationRule::kGaussLegendre;
  Priority priority = Priority::kNormal;
  absl::Time deadline = absl::InfiniteFuture();
};

struct ComponentLimits {
  int64_t max_pairs = 64;
  int64_t max_tokens = 4096;  // per prompt
  int64_t max_steps = 1024;
  int64_t max_rows = 1 << 16;  // per request, all pairs and sites
  // Tokens of those rows together (each row runs one prompt of its pair): the engine's limit per request,
  // checked before the rows are built.
  int64_t max_queued_tokens = int64_t{1} << 24;
};

struct ComponentGrid {
  ComponentSite site = ComponentSite::kHeads;
  ComponentGranularity granularity = ComponentGranularity::kLayerHead;
  std::vector<int64_t> shape;              // [layers, heads], [layers, positions] or [layers, positions, heads]
  std::vector<double> values;              // row-major
  std::vector<double> convergence_deltas;  // layer integrated gradients: value − patching effect
};

struct PairComponents {
  double clean_metric = 0;      // the metric of each prompt (normalised logit difference: the raw
  double corrupted_metric = 0;  // logit differences that normalise it)
  std::vector<ComponentGrid> grids;
};

struct ComponentResult {
  std::vector<ComponentGrid> grids;  // per site, averaged over pairs
  std::vector<PairComponents> pairs;
  int64_t rows = 0, forward_passes = 0, backward_passes = 0;
};

// INVALID_ARGUMENT naming pairs[k] where the pair cannot run: lengths, ids, the metric's needs. A server checks each
// pair as it reads it, before tokenizing the next.
absl::Status CheckPromptPair(const PromptPair& pair, size_t k, ComponentMetric metric, const ModelConfig& config,
                             const ComponentLimits& limits);
// INVALID_ARGUMENT naming the field for anything the model or limits cannot run.
absl::Status ValidateComponentRequest(const ComponentRequest& request, const ModelConfig& config,
                                      const ComponentLimits& limits);

// The values the result's grids hold: each pair's grids and the grids averaged over pairs (layer integrated
// gradients: as many convergence deltas again). Known before any row runs, so a result too large to send is
// refused up front.
int64_t CountGridValues(const ComponentRequest& request, const ModelConfig& config);

// The result `request` will have, every number 0 (its grids at their shapes): a server measures a lower bound on
// the response it would send before any row runs.
ComponentResult ComponentResultOfZeros(const ComponentRequest& request, const ModelConfig& config);

using ComponentDone = std::function<void(absl::StatusOr<ComponentResult>)>;
// Rows answered so far and their total, on the executor thread.
using ComponentProgress = std::function<void(int64_t rows_done, int64_t rows_total)>;
// Validates, then runs the request's rows on `engine` under `handle`; calls `done` exactly once (at
// once for an invalid request, else on the executor thread).
void AttributeComponents(BatchingEngine& engine, std::shared_ptr<Request> handle, const ModelConfig& config,
                         const ComponentLimits& limits, ComponentRequest request, ComponentDone done,
                         ComponentProgress progress = nullptr);

}  // namespace attribution::engine
