// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/attribution_request.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

absl::Status CheckRange(int64_t value, int64_t low, int64_t high, const char* field) {
  if (value < low || value > high) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " is outside [", low, ", ", high, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTokenIds(const std::vector<int64_t>& ids, absl::string_view field, int64_t vocab) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<AttributionMethod> ParseAttributionMethod(const std::string& name) {
  if (name == "integrated_gradients") return AttributionMethod::kIntegratedGradients;
  if (name == "gradient_shap") return AttributionMethod::kGradientShap;
  if (name == "saliency") return AttributionMethod::kSaliency;
  if (name == "input_x_gradient") return AttributionMethod::kInputXGradient;
  if (name == "feature_ablation") return AttributionMethod::kFeatureAblation;
  if (name == "shapley_values") return AttributionMethod::kShapleyValues;
  if (name == "shapley_value_sampling") return AttributionMethod::kShapleyValueSampling;
  if (name == "lime") return AttributionMethod::kLime;
  if (name == "kernel_shap") return AttributionMethod::kKernelShap;
  return absl::InvalidArgumentError(absl::StrCat(
      "method \"", name, "\" is not supported (integrated_gradients, gradient_shap, saliency, input_x_gradient, feature_ablation, "
      "shapley_values, shapley_value_sampling, lime, kernel_shap)"));
}

const char* AttributionMethodName(AttributionMethod method) {
  switch (method) {
    case AttributionMethod::kIntegratedGradients:
      return "integrated_gradients";
    case AttributionMethod::kGradientShap:
      return "gradient_shap";
    case AttributionMethod::kSaliency:
      return "saliency";
    case AttributionMethod::kInputXGradient:
      return "input_x_gradient";
    case AttributionMethod::kFeatureAblation:
      return "feature_ablation";
    case AttributionMethod::kShapleyValues:
      return "shapley_values";
    case AttributionMethod::kShapleyValueSampling:
      return "shapley_value_sampling";
    case AttributionMethod::kLime:
      return "lime";
    case AttributionMethod::kKernelShap:
      return "kernel_shap";
  }
  return "unknown";
}

bool IsGradientMethod(AttributionMethod method) {
  return method == AttributionMethod::kIntegratedGradients || method == AttributionMethod::kGradientShap ||
         method == AttributionMethod::kSaliency ||
         method == AttributionMethod::kInputXGradient;
}

absl::Status ValidateAttributionRequest(const AttributionRequest& r, const ModelConfig& config,
                                        const AttributionLimits& limits) {
  const int64_t vocab = config.vocab_size;
  const int64_t prompt = static_cast<int64_t>(r.prompt_ids.size());
  if (prompt == 0) return absl::InvalidArgumentError("prompt_ids must not be empty");
  if (auto s = CheckTokenIds(r.prompt_ids, "prompt_ids", vocab); !s.ok()) return s;
  if (auto s = CheckTokenIds(r.target_ids, "target_ids", vocab); !s.ok()) return s;
  if (auto s = CheckTokenIds(r.foil_ids, "foil_ids", vocab); !s.ok()) return s;
  const int64_t target = r.target_ids.empty() ? r.generation.max_new_tokens : static_cast<int64_t>(r.target_ids.size());
  if (r.target_ids.empty()) {
    if (auto s = CheckRange(r.generation.max_new_tokens, 1, limits.max_new_tokens, "max_new_tokens"); !s.ok()) return s;
    if (auto s = CheckGenerationOptions(r.generation); !s.ok()) return s;
  }
  if (auto s = CheckRange(prompt + target, 2, limits.max_tokens, "prompt + target tokens"); !s.ok()) return s;
  if (!r.foil_ids.empty()) {
    if (r.target_ids.empty() || r.foil_ids.size() != r.target_ids.size()) {
      return absl::InvalidArgumentError("foil_ids must have as many tokens as target_ids (contrastive needs a given target)");
    }
    if (r.quantity == TokenQuantity::kProb && r.target_ids.size() > 1) {
      return absl::InvalidArgumentError("contrastive prob is defined for single-token targets; use log_prob or logit");
    }
  }
  if (auto s = CheckTokenIds({r.baseline_token_id}, "baseline_token_id", vocab); !s.ok()) return s;
  const int64_t features = r.features.empty() ? prompt : static_cast<int64_t>(r.features.size());
  if (auto s = CheckRange(features, 1, limits.max_features, "number of features"); !s.ok()) return s;
  std::vector<bool> covered(prompt, false);
  for (size_t f = 0; f < r.features.size(); ++f) {
    const FeatureSpan& span = r.features[f];
    if (span.begin < 0 || span.end > prompt || span.begin >= span.end) {
      return absl::InvalidArgumentError(absl::StrCat("features[", f, "] = [", span.begin, ", ", span.end,
                                                     ") is not a non-empty span of the ", prompt, " prompt tokens"));
    }
    for (int64_t p = span.begin; p < span.end; ++p) {
      if (covered[p]) return absl::InvalidArgumentError(absl::StrCat("features[", f, "] overlaps an earlier feature at token ", p));
      covered[p] = true;
    }
    if (auto s = CheckTokenIds(span.baseline_ids, "features[].baseline_ids", vocab); !s.ok()) return s;
    if (IsGradientMethod(r.method) && !span.baseline_ids.empty() &&
        static_cast<int64_t>(span.baseline_ids.size()) != span.end - span.begin) {
      return absl::InvalidArgumentError(absl::StrCat("features[", f, "].baseline_ids: gradient methods need one baseline token per position"));
    }
  }
  switch (r.method) {
    case AttributionMethod::kIntegratedGradients:
      return CheckRange(r.n_steps, MinIntegrationSteps(r.rule), limits.max_steps, "n_steps");
    case AttributionMethod::kShapleyValues:
      return CheckRange(features, 1, limits.max_exact_shapley_features, "number of features for exact shapley_values");
    case AttributionMethod::kShapleyValueSampling:
    case AttributionMethod::kLime:
      return CheckRange(r.n_samples, 1, limits.max_samples, "n_samples");
    case AttributionMethod::kKernelShap:
      if (auto s = CheckRange(features, 2, limits.max_features, "number of features for kernel_shap"); !s.ok()) return s;
      return CheckRange(r.n_samples, 2, limits.max_samples, "n_samples");
    case AttributionMethod::kGradientShap:
      if (!(r.stdev >= 0 && r.stdev <= 10)) return absl::InvalidArgumentError(absl::StrCat("stdev = ", r.stdev, " is outside [0, 10]"));
      return CheckRange(r.n_samples, 1, limits.max_samples, "n_samples");
    default:
      return absl::OkStatus();
  }
}

}  // namespace attribution::engine
