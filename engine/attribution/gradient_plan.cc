// SPDX-License-Identifier: Apache-2.0
// Integrated gradients, GradientShap, Saliency and InputXGradient over the input embeddings, as grad rows.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "engine/attribution/row_plan.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

class GradientPlan : public RowPlan {
 public:
  explicit GradientPlan(AttributionRequest request) : RowPlan(std::move(request)) {}

  // Embeds the input and the baseline and describes the rows. Embedding can fail (device memory);
  // that is a status here, where dereferencing a failed StatusOr would abort the process.
  absl::Status Build(const CausalLM& model) {
    std::vector<int64_t> ids = request_.prompt_ids;
    ids.insert(ids.end(), request_.target_ids.begin(), request_.target_ids.end());
    ASSIGN_OR_RETURN(at::Tensor embedded, model.Embed(at::tensor(ids, at::kLong).unsqueeze(0)));
    input_ = embedded[0];  // [S, hidden]
    baseline_ = input_.clone();
    for (int64_t f = 0; f < num_features(); ++f) {
      const auto [begin, end] = FeatureSpanOf(f);
      at::Tensor span = baseline_.narrow(0, begin, end - begin);
      if (request_.zero_embedding_baseline) {
        span.zero_();
        continue;
      }
      std::vector<int64_t> baseline_ids = request_.features.empty() ? std::vector<int64_t>{}
                                                                     : request_.features[f].baseline_ids;
      if (baseline_ids.empty()) baseline_ids.assign(end - begin, request_.baseline_token_id);
      ASSIGN_OR_RETURN(at::Tensor baseline, model.Embed(at::tensor(baseline_ids, at::kLong).unsqueeze(0)));
      span.copy_(baseline[0]);
    }
    const at::Tensor difference = input_ - baseline_;
    if (request_.method == AttributionMethod::kIntegratedGradients) {
      ASSIGN_OR_RETURN(IntegrationPoints points, MakeIntegrationPoints(request_.rule, request_.n_steps));
      alphas_ = points.alphas;
      weights_ = points.weights;
      endpoints_.assign(alphas_.size(), difference);
    } else if (request_.method == AttributionMethod::kGradientShap) {
      // Each sample: Gaussian noise on the feature positions of the input, a uniform point on the
      // path from the baseline to the noisy input; attribution (noisy input - baseline) x gradient.
      at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(request_.seed);
      const at::Tensor feature_mask = (difference != 0).any(-1, /*keepdim=*/true).to(input_.scalar_type());
      for (int64_t s = 0; s < request_.n_samples; ++s) {
        alphas_.push_back(at::rand({1}, generator, at::kDouble).item<double>());
        weights_.push_back(1.0 / request_.n_samples);
        at::Tensor noise = at::randn(input_.sizes(), generator, at::kFloat).to(input_.options()) * request_.stdev;
        endpoints_.push_back(difference + noise * feature_mask);
      }
    } else {
      alphas_ = {1.0};
      weights_ = {1.0};
      endpoints_ = {difference};
    }
    const int64_t p = prompt_length();
    rows_.push_back(Row{.kind = RowKind::kScore, .inputs_embeds = input_, .objective = SequenceObjective(p)});
    rows_.push_back(Row{.kind = RowKind::kScore, .inputs_embeds = baseline_, .objective = SequenceObjective(p)});
    for (size_t i = 0; i < alphas_.size(); ++i) {
      const at::Tensor point = baseline_ + alphas_[i] * endpoints_[i];
      rows_.push_back(Row{.kind = RowKind::kGrad, .inputs_embeds = point, .objective = SequenceObjective(p)});
      if (!request_.want_token_matrix) continue;
      for (int64_t t = 0; t < target_length(); ++t) {
        rows_.push_back(Row{.kind = RowKind::kGrad, .inputs_embeds = point, .objective = TokenObjective(p, t)});
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<AttributionResult> Reduce(const std::vector<RowResult>& results) const override {
    AttributionResult out;
    FillTargetScores(results[0], out);
    const int64_t per_step = 1 + (request_.want_token_matrix ? target_length() : 0);
    out.sequence = Attribute(results, 0, per_step);
    if (request_.want_token_matrix) {
      for (int64_t t = 0; t < target_length(); ++t) out.per_token.push_back(Attribute(results, 1 + t, per_step));
    }
    if (request_.method == AttributionMethod::kIntegratedGradients) {
      double total = 0;
      for (double a : out.sequence) total += a;
      out.convergence_delta = total - (results[0].value - results[1].value);
    }
    out.rows = static_cast<int64_t>(results.size());
    out.forward_passes = out.rows;
    out.backward_passes = out.rows - 2;
    return out;
  }

 private:
  // Feature attributions from the grad rows at offset `which` of each step.
  std::vector<double> Attribute(const std::vector<RowResult>& results, int64_t which, int64_t per_step) const {
    at::Tensor accumulated = at::zeros(input_.sizes(), input_.options().dtype(at::kFloat));
    at::Tensor shap = at::zeros_like(accumulated);  // GradientShap: mean of endpoint x gradient
    for (size_t i = 0; i < alphas_.size(); ++i) {
      const at::Tensor g = results[2 + i * per_step + which].gradient.to(at::kFloat);
      accumulated += weights_[i] * g;
      if (request_.method == AttributionMethod::kGradientShap) shap += weights_[i] * endpoints_[i].to(at::kFloat) * g;
    }
    at::Tensor per_position;  // [S]
    switch (request_.method) {
      case AttributionMethod::kIntegratedGradients:
        per_position = ((input_ - baseline_).to(at::kFloat) * accumulated).sum(-1);
        break;
      case AttributionMethod::kGradientShap:
        per_position = shap.sum(-1);
        break;
      case AttributionMethod::kSaliency:
        per_position = (request_.saliency_abs ? accumulated.abs() : accumulated).sum(-1);
        break;
      default:  // InputXGradient
        per_position = (input_.to(at::kFloat) * accumulated).sum(-1);
        break;
    }
    per_position = per_position.cpu();
    std::vector<double> features;
    for (int64_t f = 0; f < num_features(); ++f) {
      const auto [begin, end] = FeatureSpanOf(f);
      features.push_back(per_position.narrow(0, begin, end - begin).sum().item<double>());
    }
    return features;
  }

  at::Tensor input_, baseline_;  // [S, hidden] compute dtype
  std::vector<double> alphas_, weights_;
  std::vector<at::Tensor> endpoints_;  // per point: the path's end minus the baseline, [S, hidden]
};

}  // namespace

absl::StatusOr<std::unique_ptr<RowPlan>> MakeGradientPlan(const CausalLM& model, AttributionRequest request) {
  auto plan = std::make_unique<GradientPlan>(std::move(request));
  RETURN_IF_ERROR(plan->Build(model));
  return plan;
}

}  // namespace attribution::engine
