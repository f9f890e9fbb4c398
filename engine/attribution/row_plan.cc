// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/row_plan.h"

#include <ATen/ATen.h>

#include <cmath>

namespace attribution::engine {

RowPlan::RowPlan(AttributionRequest request) : request_(std::move(request)) {}

absl::StatusOr<std::unique_ptr<RowPlan>> RowPlan::Create(const CausalLM& model, AttributionRequest request) {
  if (request.target_ids.empty()) return absl::InvalidArgumentError("attribution needs a target");
  if (IsGradientMethod(request.method)) return MakeGradientPlan(model, std::move(request));
  return MakePerturbationPlan(std::move(request), model.config().num_layers);
}

RowObjective RowPlan::SequenceObjective(int64_t prompt_length) const {
  const int64_t t_count = target_length();
  const bool contrastive = !request_.foil_ids.empty();
  RowObjective o;
  // Single-token contrastive prob compares probabilities directly; otherwise a probability target is
  // the exponential of the summed log-probs (the probability of the whole target).
  const bool prob = request_.quantity == TokenQuantity::kProb;
  o.quantity = prob && !contrastive ? TokenQuantity::kLogProb : request_.quantity;
  o.exp_of_sum = prob && !contrastive;
  for (int64_t t = 0; t < t_count; ++t) {
    o.positions.push_back(prompt_length - 1 + t);
    o.tokens.push_back(request_.target_ids[t]);
    o.weights.push_back(1.0);
  }
  if (contrastive) {
    // The foil is scored at the same positions (after the same teacher-forced target prefix).
    for (int64_t t = 0; t < t_count; ++t) {
      o.positions.push_back(prompt_length - 1 + t);
      o.tokens.push_back(request_.foil_ids[t]);
      o.weights.push_back(-1.0);
    }
  }
  return o;
}

RowObjective RowPlan::TokenObjective(int64_t prompt_length, int64_t t) const {
  const bool contrastive = !request_.foil_ids.empty();
  RowObjective o{.positions = {prompt_length - 1 + t}, .tokens = {request_.target_ids[t]}, .weights = {1.0},
                 .quantity = request_.quantity};
  if (contrastive) {
    o.positions.push_back(prompt_length - 1 + t);
    o.tokens.push_back(request_.foil_ids[t]);
    o.weights.push_back(-1.0);
  }
  return o;
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

int64_t RowPlan::num_features() const {
  return request_.features.empty() ? prompt_length() : static_cast<int64_t>(request_.features.size());
}

std::pair<int64_t, int64_t> RowPlan::FeatureSpanOf(int64_t f) const {
  if (request_.features.empty()) return {f, f + 1};
  return {request_.features[f].begin, request_.features[f].end};
}

void RowPlan::FillTargetScores(const RowResult& at_input, AttributionResult& out) const {
  out.target_ids = request_.target_ids;
  out.objective = at_input.value;
  for (int64_t t = 0; t < target_length(); ++t) out.target_log_probs.push_back(at_input.token_log_probs[t].item<double>());
}

}  // namespace attribution::engine
