// SPDX-License-Identifier: Apache-2.0
// Every attribution method, once: its name, its family and what it adds to validation, to row building
// and to the reduction of its rows. Plans read their method's part from here (gradient_plan.cc,
// perturbation_plan.cc); adding an AttributionMethod fails to compile until MethodOf handles it.
//
//   const Method& method = MethodOf(request.method);
//   RETURN_IF_ERROR(method.validate(request, features, limits));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/attribution/attribution_request.h"
#include "engine/attribution/surrogate_models.h"
#include "engine/scheduler/embedding_path.h"

namespace attribution::engine {

enum class MethodFamily {
  kGradient,      // rows on an embedding path (grad rows), see embedding_path.h
  kPerturbation,  // one score row per coalition of present features
};

// The points of one round of a gradient method on its path, and the weights that sum their rows.
struct PathSamples {
  std::vector<double> alphas;
  std::vector<double> weights;
  bool noisy = false;  // GradientShap: row i ends the path at its own noisy input (noise sample i)
};

// The coalitions a perturbation method scores and how their values become attributions.
class CoalitionDesign {
 public:
  virtual ~CoalitionDesign() = default;
  // Every coalition whose value the method needs (repeats allowed; the plan scores each once).
  virtual std::vector<Coalition> Coalitions() const = 0;
  // Feature attributions from the value of each coalition.
  virtual std::vector<double> Attribute(const std::function<double(const Coalition&)>& value) const = 0;
  // Whether Attribute fits a model long enough (LIME's Lasso: seconds per target token at a thousand features)
  // to run away from the engine's executor thread.
  virtual bool fits_long() const { return false; }
};

// The request settings a method reads, as bits; a request's others change nothing, and its answer says so.
enum MethodSetting : uint32_t {
  kReadsSteps = 1 << 0,           // n_steps
  kReadsRule = 1 << 1,            // rule
  kReadsSamples = 1 << 2,         // n_samples
  kReadsStdev = 1 << 3,           // stdev
  kReadsSeed = 1 << 4,            // seed
  kReadsSignedSaliency = 1 << 5,  // signed_saliency
  kReadsBaseline = 1 << 6,        // baseline (gradient methods' path start, perturbations' replacement)
  kReadsTolerance = 1 << 7,       // completeness_tolerance
};

struct Method {
  AttributionMethod method;
  const char* name;  // as requests and responses spell it
  MethodFamily family;
  // The method's own checks; the ones every request gets ran before. `features`: the request's count.
  absl::Status (*validate)(const AttributionRequest& request, int64_t features, const AttributionLimits& limits);
  // Gradient methods: how grad rows reduce their gradient per position, and one round's points (for
  // integrated gradients the rule's points at `order`).
  PathReduction (*reduction)(const AttributionRequest& request);
  PathSamples (*samples)(const AttributionRequest& request, int64_t order);
  // Perturbation methods: the coalitions and their reduction.
  std::unique_ptr<CoalitionDesign> (*coalitions)(const AttributionRequest& request, int64_t features);
  // Gradient methods: what the backward of their rows propagates (LRP methods shape it).
  PropagationRules rules = PropagationRules::kGradient;
  uint32_t reads = 0;  // MethodSetting bits
};

const Method& MethodOf(AttributionMethod method);

// Whether a request puts features at their baselines (the request's, or its groups' own): its method reads them,
// or faithfulness curves do, whatever the method. Otherwise baselines are unread settings.
inline bool ReadsBaselines(AttributionMethod method, bool want_faithfulness) {
  return (MethodOf(method).reads & kReadsBaseline) != 0 || want_faithfulness;
}
inline constexpr AttributionMethod kAllMethods[] = {
    AttributionMethod::kIntegratedGradients,
    AttributionMethod::kGradientShap,
    AttributionMethod::kSaliency,
    AttributionMethod::kInputXGradient,
    AttributionMethod::kFeatureAblation,
    AttributionMethod::kShapleyValues,
    AttributionMethod::kShapleyValueSampling,
    AttributionMethod::kLime,
    AttributionMethod::kKernelShap,
    AttributionMethod::kAttnLrp,
    AttributionMethod::kCpLrp,
};

}  // namespace attribution::engine
