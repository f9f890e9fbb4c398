// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/methods.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "engine/attribution/coalition_designs.h"
#include "engine/common/enum_names.h"
#include "engine/common/exact_number.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

absl::Status NothingMore(const AttributionRequest&, int64_t, const AttributionLimits&) { return absl::OkStatus(); }

absl::Status CheckSamples(const AttributionRequest& r, int64_t, const AttributionLimits& limits) {
  return CheckWithinLimit(r.n_samples, 1, limits.max_samples, "n_samples", "max_samples");
}

// --- gradient methods -----------------------------------------------------------------------------

// A round of `points` points on a path queues a grad row per point, and with the token matrix one more per target
// token (a generated target counted at max_new_tokens), with `end_rows` score rows (in its first round: the input's,
// and for integrated gradients the baseline's), each row the whole sequence: refused before the plan builds any of
// them. A generated target's tokens are left to the engine, which counts them once generated (counted here at
// max_new_tokens, rows x tokens refused requests whose generation stops early). `points_are`: what `points`
// counts, where it is not `points_field` itself.
absl::Status CheckPathRound(const AttributionRequest& r, int64_t points, int64_t end_rows, const char* points_field,
                            const AttributionLimits& limits, const char* points_are = nullptr) {
  const int64_t targets =
      r.target_ids.empty() ? r.generation.max_new_tokens : static_cast<int64_t>(r.target_ids.size());
  // As GradientPlan queues them: a 1-token target's matrix row is its whole target's.
  const int64_t per_point = 1 + (r.want_token_matrix && targets > 1 ? targets : 0);
  const int64_t rows = points * per_point + end_rows;
  const int64_t tokens = r.target_ids.empty() ? 0 : rows * (static_cast<int64_t>(r.prompt_ids.size()) + targets);
  if (rows <= limits.max_rows && tokens <= limits.max_queued_tokens) return absl::OkStatus();
  const bool too_many_rows = rows > limits.max_rows;
  return absl::InvalidArgumentError(absl::StrCat(
      points_are != nullptr ? points_are : points_field, " x (1 + target tokens with want_token_matrix) = ", points,
      " x ", per_point, ": ", AttributionMethodName(r.method), " would queue ", rows, " rows",
      too_many_rows ? "" : absl::StrCat(" of ", tokens, " tokens"), " at once, over this model's ",
      too_many_rows ? absl::StrCat("limits.max_rows (", limits.max_rows, ")")
                    : absl::StrCat("limits.max_queued_tokens (", limits.max_queued_tokens, ")"),
      "; ask for fewer ", points_field, ", a shorter target, or want_token_matrix = false"));
}

absl::Status ValidateIntegratedGradients(const AttributionRequest& r, int64_t, const AttributionLimits& limits) {
  if (auto s = CheckWithinLimit(r.n_steps, MinIntegrationSteps(r.rule), limits.max_steps, "n_steps", "max_steps");
      !s.ok())
    return s;
  // With a tolerance n_steps is a budget over rounds that each queue a part of it, and the request may stop at
  // any round: the limits on rows and tokens queued at once apply to its first round (with the path's ends) and
  // its largest later one, checked here, before any runs (the engine refused a later round after the earlier
  // ones had run, their work lost).
  if (r.completeness_tolerance > 0) {
    RETURN_IF_ERROR(CheckPathRound(r, FirstAdaptiveOrder(r.rule, r.n_steps), 2, "n_steps", limits,
                                   "the points of the first order with a tolerance"));
    return CheckPathRound(r, LargestLaterAdaptiveRound(r.rule, r.n_steps), 0, "n_steps", limits,
                          "the points of n_steps' largest order with a tolerance");
  }
  return CheckPathRound(r, r.n_steps, 2, "n_steps", limits);
}

absl::Status ValidateGradientShap(const AttributionRequest& r, int64_t features, const AttributionLimits& limits) {
  if (!(r.stdev >= 0 && r.stdev <= 10))
    return absl::InvalidArgumentError(absl::StrCat("stdev = ", ExactNumber(r.stdev), " is outside [0, 10]"));
  if (auto s = CheckSamples(r, features, limits); !s.ok()) return s;
  return CheckPathRound(r, r.n_samples, 1, "n_samples", limits);
}

PathReduction TimesDirection(const AttributionRequest&) { return PathReduction::kTimesDirection; }
PathReduction TimesInput(const AttributionRequest&) { return PathReduction::kTimesInput; }
PathReduction SaliencyReduction(const AttributionRequest& r) {
  return r.saliency_abs ? PathReduction::kAbsolute : PathReduction::kSigned;
}

// The rule's points at `order` (validation keeps every order the plan asks for within the rule's range).
PathSamples IntegrationSamples(const AttributionRequest& r, int64_t order) {
  absl::StatusOr<IntegrationPoints> points = MakeIntegrationPoints(r.rule, order);
  return points.ok() ? PathSamples{std::move(points->alphas), std::move(points->weights)} : PathSamples{};
}

// n_samples uniform alphas from the seed, each sample at its own noisy input.
PathSamples GradientShapSamples(const AttributionRequest& r, int64_t) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  const at::Tensor alphas = at::rand({r.n_samples}, generator, at::kDouble).contiguous();  // [n]
  PathSamples samples{.noisy = true};
  samples.alphas.assign(alphas.data_ptr<double>(), alphas.data_ptr<double>() + r.n_samples);
  samples.weights.assign(r.n_samples, 1.0 / static_cast<double>(r.n_samples));
  return samples;
}

// Saliency, InputXGradient and the LRP methods: the gradient at the input itself.
PathSamples AtInput(const AttributionRequest&, int64_t) { return PathSamples{{1.0}, {1.0}}; }

// --- perturbation methods -------------------------------------------------------------------------

absl::Status ValidateShapleyValues(const AttributionRequest&, int64_t features, const AttributionLimits& limits) {
  absl::Status s =
      CheckRange(features, 1, limits.max_exact_shapley_features, "number of features for exact shapley_values");
  if (s.ok()) return s;
  // Every prompt word is a feature by default, so a plain question is already over the cap: say what fits.
  return absl::InvalidArgumentError(absl::StrCat(s.message(),
                                                 " (it scores every subset of the features: narrow feature_range, "
                                                 "join tokens with feature_groups, or use shapley_value_sampling)"));
}

// Each sampled permutation adds a coalition per feature, so the rows are known (and refused) before any is built.
absl::Status ValidateShapleyValueSampling(const AttributionRequest& r, int64_t features,
                                          const AttributionLimits& limits) {
  if (absl::Status s = CheckSamples(r, features, limits); !s.ok()) return s;
  const int64_t rows = r.n_samples * features + 1;
  if (rows <= limits.max_rows) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("n_samples x features = ", r.n_samples, " x ", features,
                   ": shapley_value_sampling would score up to ", rows, " rows, over this model's limits.max_rows (",
                   limits.max_rows, "); ask for fewer n_samples, or fewer features (feature_range, feature_groups)"));
}

absl::Status ValidateKernelShap(const AttributionRequest& r, int64_t features, const AttributionLimits& limits) {
  if (auto s = CheckWithinLimit(features, 2, limits.max_features, "number of features for kernel_shap", "max_features");
      !s.ok())
    return s;
  return CheckWithinLimit(r.n_samples, 2, limits.max_samples, "n_samples", "max_samples");
}

constexpr uint32_t kSampled = kReadsSamples | kReadsSeed | kReadsBaseline;
constexpr Method kIntegratedGradients{.method = AttributionMethod::kIntegratedGradients,
                                      .name = "integrated_gradients",
                                      .family = MethodFamily::kGradient,
                                      .validate = ValidateIntegratedGradients,
                                      .reduction = TimesDirection,
                                      .samples = IntegrationSamples,
                                      .reads = kReadsSteps | kReadsRule | kReadsBaseline | kReadsTolerance};
constexpr Method kGradientShap{.method = AttributionMethod::kGradientShap,
                               .name = "gradient_shap",
                               .family = MethodFamily::kGradient,
                               .validate = ValidateGradientShap,
                               .reduction = TimesDirection,
                               .samples = GradientShapSamples,
                               .reads = kSampled | kReadsStdev};
constexpr Method kSaliency{.method = AttributionMethod::kSaliency,
                           .name = "saliency",
                           .family = MethodFamily::kGradient,
                           .validate = NothingMore,
                           .reduction = SaliencyReduction,
                           .samples = AtInput,
                           .reads = kReadsSignedSaliency};
constexpr Method kInputXGradient{.method = AttributionMethod::kInputXGradient,
                                 .name = "input_x_gradient",
                                 .family = MethodFamily::kGradient,
                                 .validate = NothingMore,
                                 .reduction = TimesInput,
                                 .samples = AtInput};
constexpr Method kFeatureAblation{.method = AttributionMethod::kFeatureAblation,
                                  .name = "feature_ablation",
                                  .family = MethodFamily::kPerturbation,
                                  .validate = NothingMore,
                                  .coalitions = FeatureAblationCoalitions,
                                  .reads = kReadsBaseline};
constexpr Method kShapleyValues{.method = AttributionMethod::kShapleyValues,
                                .name = "shapley_values",
                                .family = MethodFamily::kPerturbation,
                                .validate = ValidateShapleyValues,
                                .coalitions = ShapleyValuesCoalitions,
                                .reads = kReadsBaseline};
constexpr Method kShapleyValueSampling{.method = AttributionMethod::kShapleyValueSampling,
                                       .name = "shapley_value_sampling",
                                       .family = MethodFamily::kPerturbation,
                                       .validate = ValidateShapleyValueSampling,
                                       .coalitions = ShapleyValueSamplingCoalitions,
                                       .reads = kSampled};
constexpr Method kLime{.method = AttributionMethod::kLime,
                       .name = "lime",
                       .family = MethodFamily::kPerturbation,
                       .validate = CheckSamples,
                       .coalitions = LimeCoalitions,
                       .reads = kSampled};
constexpr Method kKernelShap{.method = AttributionMethod::kKernelShap,
                             .name = "kernel_shap",
                             .family = MethodFamily::kPerturbation,
                             .validate = ValidateKernelShap,
                             .coalitions = KernelShapCoalitions,
                             .reads = kSampled};
// LRP: one grad row at the input whose backward applies the rules; relevance = input · gradient.
constexpr Method kAttnLrp{.method = AttributionMethod::kAttnLrp,
                          .name = "attn_lrp",
                          .family = MethodFamily::kGradient,
                          .validate = NothingMore,
                          .reduction = TimesInput,
                          .samples = AtInput,
                          .rules = PropagationRules::kAttnLrp};
constexpr Method kCpLrp{.method = AttributionMethod::kCpLrp,
                        .name = "cp_lrp",
                        .family = MethodFamily::kGradient,
                        .validate = NothingMore,
                        .reduction = TimesInput,
                        .samples = AtInput,
                        .rules = PropagationRules::kCpLrp};

}  // namespace

const Method& MethodOf(AttributionMethod method) {
  switch (method) {  // no default: a new method fails to compile (-Werror=switch) until it is here
    case AttributionMethod::kIntegratedGradients:
      return kIntegratedGradients;
    case AttributionMethod::kGradientShap:
      return kGradientShap;
    case AttributionMethod::kSaliency:
      return kSaliency;
    case AttributionMethod::kInputXGradient:
      return kInputXGradient;
    case AttributionMethod::kFeatureAblation:
      return kFeatureAblation;
    case AttributionMethod::kShapleyValues:
      return kShapleyValues;
    case AttributionMethod::kShapleyValueSampling:
      return kShapleyValueSampling;
    case AttributionMethod::kLime:
      return kLime;
    case AttributionMethod::kKernelShap:
      return kKernelShap;
    case AttributionMethod::kAttnLrp:
      return kAttnLrp;
    case AttributionMethod::kCpLrp:
      return kCpLrp;
  }
  return kIntegratedGradients;  // unreachable for a valid enum value
}

absl::StatusOr<AttributionMethod> ParseAttributionMethod(const std::string& name) {
  return ParseByName("method", name, kAllMethods, &AttributionMethodName);
}

const char* AttributionMethodName(AttributionMethod method) { return MethodOf(method).name; }

bool IsGradientMethod(AttributionMethod method) { return MethodOf(method).family == MethodFamily::kGradient; }

}  // namespace attribution::engine
