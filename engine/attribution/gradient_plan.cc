// SPDX-License-Identifier: Apache-2.0
// Integrated gradients, GradientShap, Saliency and InputXGradient over the input embeddings, as rows
// on one embedding path (embedding_path.h): the plan holds token ids and per-row alphas and weights;
// the executor embeds, interpolates and reduces each row's gradient to one value per position.
//
// With a completeness tolerance, integrated gradients refines its rule until both the convergence delta and
// the estimated error of the latest order (from the changes between orders, see EstimatedError) are within
// tolerance · |f(x) - f(baseline)|, with n_steps points in all at most. Fejér's second rule runs 7, 15, 31,
// ... points, each order adding only the n + 1 nodes between and beside the last one's n (its nodes nest);
// the other rules run orders 8, 16, 32, ..., each a fresh round of grad rows (Gauss-Legendre nodes of
// different orders do not nest). The score rows at the path's ends run once.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/attribution/methods.h"
#include "engine/attribution/row_plan.h"

namespace attribution::engine {
namespace {

class GradientPlan : public RowPlan {
 public:
  explicit GradientPlan(AttributionRequest request) : RowPlan(std::move(request)) {
    path_ = std::make_shared<EmbeddingPath>(MakePath());
    const int64_t p = prompt_length();
    // The input's score row gives the response its target tokens' log-probs; the baseline's is needed
    // only by integrated gradients (convergence delta, tolerance).
    rows_.push_back(
        Row{.kind = RowKind::kScore, .point = {.path = path_, .alpha = 1.0}, .objective = SequenceObjective(p)});
    if (integrated_gradients()) {
      rows_.push_back(
          Row{.kind = RowKind::kScore, .point = {.path = path_, .alpha = 0.0}, .objective = SequenceObjective(p)});
    }
    StartOrder(FirstOrder());
  }

  int64_t expected_rows() const override { return end_rows() + rows_done_ + rows_pending_; }

  absl::Status Absorb(std::vector<RowResult>& results) override {
    size_t first_grad = 0;
    if (!ends_scored_) {
      at_input_ = std::move(results[0]);
      if (integrated_gradients()) at_baseline_ = std::move(results[1]);
      ends_scored_ = true;
      first_grad = static_cast<size_t>(end_rows());
    }
    rows_done_ += static_cast<int64_t>(results.size() - first_grad);
    rows_pending_ = 0;
    AddRound(results, first_grad);
    previous_ = std::move(current_);
    current_ = Attribute();
    previous_change_ = change_;
    if (!previous_.sequence.empty()) change_ = MaxChange(previous_.sequence, current_.sequence);
    if (!adaptive()) return absl::OkStatus();
    const double allowed = request_.completeness_tolerance * std::abs(at_input_.value - at_baseline_.value);
    // An infinite objective allows any error: such a path runs to n_steps instead.
    tolerance_met_ = std::isfinite(allowed) && !previous_.sequence.empty() &&
                     std::abs(ConvergenceDelta(current_)) <= allowed && EstimatedError() <= allowed;
    // n_steps is the budget of points over all orders: adaptive never costs more than fixed n_steps.
    points_used_ += order_;
    const int64_t next = NextAdaptiveOrder(request_.rule, order_, points_used_, request_.n_steps);
    if (!tolerance_met_ && next > 0) StartOrder(next);
    return absl::OkStatus();
  }

  absl::StatusOr<AttributionResult> Result() const override {
    AttributionResult out;
    FillTargetScores(at_input_, out);
    out.sequence = current_.sequence;
    out.per_token = current_.per_token;
    if (integrated_gradients()) {
      out.convergence_delta = ConvergenceDelta(current_);
      out.integration_steps = order_;
      if (adaptive()) out.tolerance_met = tolerance_met_;
    }
    out.rows = end_rows() + rows_done_;
    out.forward_passes = out.rows;
    out.backward_passes = rows_done_;
    return out;
  }

 private:
  struct Attribution {
    std::vector<double> sequence;                // [F]
    std::vector<std::vector<double>> per_token;  // [T][F] when asked
  };

  bool integrated_gradients() const { return request_.method == AttributionMethod::kIntegratedGradients; }
  bool adaptive() const { return integrated_gradients() && request_.completeness_tolerance > 0; }
  bool nested() const { return adaptive() && NestsOrders(request_.rule); }

  int64_t FirstOrder() const {
    return adaptive() ? FirstAdaptiveOrder(request_.rule, request_.n_steps) : request_.n_steps;
  }
  // Score rows at the path's ends: the input, and for integrated gradients the baseline.
  int64_t end_rows() const { return integrated_gradients() ? 2 : 1; }
  // A token matrix takes a row per target token and point beside the whole target's, unless the target is one token:
  // then its row is the whole target's (a second one doubled the rows of every 1-token matrix for the same numbers).
  bool token_rows() const { return request_.want_token_matrix && target_length() > 1; }
  int64_t RowsPerPoint() const { return 1 + (token_rows() ? target_length() : 0); }

  // Token ids of the path's ends; which positions' baselines are the zero embedding.
  EmbeddingPath MakePath() const {
    EmbeddingPath path;
    path.input_ids = request_.prompt_ids;
    path.input_ids.insert(path.input_ids.end(), request_.target_ids.begin(), request_.target_ids.end());
    path.baseline_ids = path.input_ids;
    if (request_.zero_embedding_baseline) path.zero_baseline.assign(path.input_ids.size(), 0);
    const bool noise = request_.method == AttributionMethod::kGradientShap && request_.stdev > 0;
    if (noise) path.noised.assign(path.input_ids.size(), 0);
    // Validation holds a given baseline to one id per position where baselines are read; elsewhere (saliency, an
    // LRP method) it may have any length, changes nothing, and is not looked at.
    const bool baselines_read = ReadsBaselines(request_.method, request_.want_faithfulness);
    for (int64_t f = 0; f < num_features(); ++f) {
      const auto [begin, end] = FeatureSpanOf(f);
      const std::optional<std::vector<int64_t>>* given =
          request_.features.empty() || !baselines_read ? nullptr : &request_.features[f].baseline_ids;
      for (int64_t p = begin; p < end; ++p) {
        path.baseline_ids[p] = given && *given ? (**given)[p - begin] : request_.baseline_token_id;
        if (request_.zero_embedding_baseline) path.zero_baseline[p] = 1;
        if (noise) path.noised[p] = 1;
      }
    }
    path.reduction = MethodOf(request_.method).reduction(request_);
    path.rules = MethodOf(request_.method).rules;
    path.noise_stdev = request_.method == AttributionMethod::kGradientShap ? request_.stdev : 0.0;
    path.noise_seed = request_.seed;
    return path;
  }

  // Makes `order` the latest and queues its grad rows: every point, or when a nested rule refines the last
  // order only the points it lacks (the new order's nodes 0, 2, 4, ...; the odd ones are the last order's).
  void StartOrder(int64_t order) {
    const bool refines = nested() && !samples_.alphas.empty();
    previous_order_ = order_;
    order_ = order;
    samples_ = MethodOf(request_.method).samples(request_, order);
    if (!refines) return QueueGradRows(samples_.alphas, samples_.noisy);
    std::vector<double> added;
    for (size_t i = 0; i < samples_.alphas.size(); i += 2) added.push_back(samples_.alphas[i]);
    QueueGradRows(added, false);
  }

  void QueueGradRows(const std::vector<double>& alphas, bool noisy) {
    rows_pending_ = RowsPerPoint() * static_cast<int64_t>(alphas.size());
    const int64_t p = prompt_length();
    for (size_t i = 0; i < alphas.size(); ++i) {
      const PathPoint point{.path = path_, .alpha = alphas[i], .noise_sample = noisy ? static_cast<int64_t>(i) : -1};
      rows_.push_back(Row{.kind = RowKind::kGrad, .point = point, .objective = SequenceObjective(p)});
      if (!token_rows()) continue;
      for (int64_t t = 0; t < target_length(); ++t) {
        rows_.push_back(Row{.kind = RowKind::kGrad, .point = point, .objective = TokenObjective(p, t)});
      }
    }
  }

  // Takes the round's grad rows (from results[first] on) into point_values_: in place of the last order's,
  // or, for a nested rule, interleaved with them (the last order's n points are the new order's odd nodes).
  void AddRound(const std::vector<RowResult>& results, size_t first) {
    const int64_t per_point = RowsPerPoint();
    std::vector<std::vector<at::Tensor>> round;
    for (size_t r = first; r < results.size(); r += per_point) {
      std::vector<at::Tensor>& rows = round.emplace_back();
      for (int64_t which = 0; which < per_point; ++which) rows.push_back(results[r + which].position_values);
    }
    if (!nested() || point_values_.empty()) {
      point_values_ = std::move(round);
      return;
    }
    std::vector<std::vector<at::Tensor>> merged;
    for (size_t i = 0; i < point_values_.size(); ++i) {
      merged.push_back(std::move(round[i]));
      merged.push_back(std::move(point_values_[i]));
    }
    merged.push_back(std::move(round.back()));
    point_values_ = std::move(merged);
  }

  // Feature attributions of the latest order: the weighted sum over its points of each row's per-position
  // values, summed over each feature's span.
  Attribution Attribute() const {
    auto features_of = [&](int64_t which) {
      at::Tensor per_position = at::zeros({path_->length()}, at::kDouble);  // [S]
      for (size_t i = 0; i < samples_.weights.size(); ++i) {
        per_position += samples_.weights[i] * point_values_[i][which].to(at::kDouble);
      }
      std::vector<double> features;
      for (int64_t f = 0; f < num_features(); ++f) {
        const auto [begin, end] = FeatureSpanOf(f);
        features.push_back(per_position.narrow(0, begin, end - begin).sum().item<double>());
      }
      return features;
    };
    Attribution out{.sequence = features_of(0)};
    if (request_.want_token_matrix) {
      for (int64_t t = 0; t < target_length(); ++t)
        out.per_token.push_back(token_rows() ? features_of(1 + t) : out.sequence);
    }
    return out;
  }

  double ConvergenceDelta(const Attribution& a) const {
    double total = 0;
    for (double v : a.sequence) total += v;
    return total - (at_input_.value - at_baseline_.value);
  }

  // The error of the latest order's attributions, estimated from how they moved between orders. A Riemann sum's
  // error shrinks as C / n^p (ErrorPower): from order m to n it moved by e_n ((n/m)^p - 1), so e_n is that change
  // over (n/m)^p - 1 (for the left, right and trapezoid sums doubling, the change itself; taking the geometric
  // estimate below for them claimed half the error they had). Before that regime the changes shrink more slowly
  // than the power says, so the shrink observed between the last two changes (c_m / c_n = s: e_n = c_n / (s - 1))
  // bounds it too, and a single change, which shows no shrink, claims nothing (the trapezoid at 16 points, taken at
  // its word, was 1.1x the tolerance off). Gauss-Legendre and Fejér's rule converge geometrically in the order
  // (e_2n ≈ e_n² / C), so with changes c_n (n/2 -> n) and c_n/2 before it the error of A_n is about c_n² / c_n/2;
  // with one change, or while changes do not shrink (not yet geometric), the change itself bounds it.
  double EstimatedError() const {
    constexpr double kUnknown = std::numeric_limits<double>::infinity();
    if (const int power = ErrorPower(request_.rule); power > 0) {
      if (change_ == 0) return 0;
      if (previous_change_ <= change_) return kUnknown;  // one change so far, or not shrinking
      const double growth = std::pow(static_cast<double>(order_) / static_cast<double>(previous_order_), power);
      const double shrink = previous_change_ / change_;
      return std::max(change_ / (growth - 1), change_ / (shrink - 1));
    }
    if (previous_change_ <= 0 || change_ >= previous_change_) return change_;
    return change_ * change_ / previous_change_;
  }

  static double MaxChange(const std::vector<double>& before, const std::vector<double>& after) {
    double change = 0;
    for (size_t f = 0; f < after.size(); ++f) change = std::max(change, std::abs(after[f] - before[f]));
    return change;
  }

  std::shared_ptr<const EmbeddingPath> path_;
  int64_t order_ = 0;                                  // integrated gradients: the points of the latest round
  int64_t previous_order_ = 0;                         // the points of the round before
  int64_t points_used_ = 0;                            // adaptive: points of the orders absorbed
  PathSamples samples_;                                // of the latest order: every point's alpha and weight
  std::vector<std::vector<at::Tensor>> point_values_;  // [point of the latest order][row of the point]: [S]
  bool ends_scored_ = false;
  RowResult at_input_, at_baseline_;
  Attribution current_, previous_;  // of the latest round and the one before
  double change_ = 0,
         previous_change_ = 0;  // largest attribution change into the latest order, and into the one before
  int64_t rows_done_ = 0;       // grad rows absorbed
  int64_t rows_pending_ = 0;    // grad rows queued, not yet absorbed
  bool tolerance_met_ = false;
};

}  // namespace

std::unique_ptr<RowPlan> MakeGradientPlan(AttributionRequest request) {
  return std::make_unique<GradientPlan>(std::move(request));
}

}  // namespace attribution::engine
