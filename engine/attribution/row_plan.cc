// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/row_plan.h"

#include <ATen/ATen.h>

#include <cmath>

#include "engine/attribution/target_objective.h"

namespace attribution::engine {

RowPlan::RowPlan(AttributionRequest request) : request_(std::move(request)) {}

absl::StatusOr<std::unique_ptr<RowPlan>> RowPlan::Create(const ModelConfig& config, AttributionRequest request) {
  if (request.target_ids.empty()) return absl::InvalidArgumentError("attribution needs a target");
  if (IsGradientMethod(request.method)) return MakeGradientPlan(std::move(request));
  return MakePerturbationPlan(std::move(request), config.num_layers);
}

RowObjective RowPlan::SequenceObjective(int64_t prompt_length) const {
  RowObjective objective = TargetObjective(prompt_length, request_.target_ids, request_.foil_ids, request_.quantity);
  objective.choice_tokens = request_.choice_ids;
  return objective;
}

RowObjective RowPlan::TokenObjective(int64_t prompt_length, int64_t t) const {
  RowObjective objective = TargetObjective(prompt_length, request_.target_ids, request_.foil_ids, request_.quantity, t);
  objective.choice_tokens = request_.choice_ids;
  return objective;
}

double RowPlan::TokenValue(const RowResult& score, int64_t t) const {
  auto value = [&](int64_t i) {
    switch (request_.quantity) {
      case TokenQuantity::kLogProb:
        return score.token_log_probs[i].item<double>();
      case TokenQuantity::kProb:
        return std::exp(score.token_log_probs[i].item<double>());
      case TokenQuantity::kLogit:
        return score.token_logits[i].item<double>();
    }
    return 0.0;
  };
  return request_.foil_ids.empty() ? value(t) : value(t) - value(target_length() + t);
}

int64_t NumFeatures(const AttributionRequest& request) {
  return request.features.empty() ? static_cast<int64_t>(request.prompt_ids.size())
                                  : static_cast<int64_t>(request.features.size());
}

std::pair<int64_t, int64_t> FeatureSpan(const AttributionRequest& request, int64_t f) {
  if (request.features.empty()) return {f, f + 1};
  return {request.features[f].begin, request.features[f].end};
}

std::vector<int64_t> PerturbedPrompt(const AttributionRequest& request, const std::vector<bool>& present) {
  const auto& prompt = request.prompt_ids;
  std::vector<int64_t> ids;
  int64_t position = 0;
  for (int64_t f = 0; f < NumFeatures(request); ++f) {
    const auto [begin, end] = FeatureSpan(request, f);
    ids.insert(ids.end(), prompt.begin() + position, prompt.begin() + begin);
    if (present[f]) {
      ids.insert(ids.end(), prompt.begin() + begin, prompt.begin() + end);
    } else if (!request.features.empty() && request.features[f].baseline_ids) {
      const std::vector<int64_t>& baseline = *request.features[f].baseline_ids;  // empty: the span is deleted
      ids.insert(ids.end(), baseline.begin(), baseline.end());
    } else {
      ids.insert(ids.end(), end - begin, request.baseline_token_id);
    }
    position = end;
  }
  ids.insert(ids.end(), prompt.begin() + position, prompt.end());
  return ids;
}

int64_t RowPlan::num_features() const { return NumFeatures(request_); }

std::pair<int64_t, int64_t> RowPlan::FeatureSpanOf(int64_t f) const { return FeatureSpan(request_, f); }

void RowPlan::FillTargetScores(const RowResult& at_input, AttributionResult& out) const {
  out.target_ids = request_.target_ids;
  out.objective = at_input.value;
  for (int64_t t = 0; t < target_length(); ++t)
    out.target_log_probs.push_back(at_input.token_log_probs[t].item<double>());
  // The objective's entries: the target's tokens, then the foil's at the same positions.
  for (int64_t t = 0; t < static_cast<int64_t>(request_.foil_ids.size()); ++t)
    out.foil_log_probs.push_back(at_input.token_log_probs[target_length() + t].item<double>());
}

}  // namespace attribution::engine
