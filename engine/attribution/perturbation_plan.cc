// SPDX-License-Identifier: Apache-2.0
// FeatureAblation, exact ShapleyValues, ShapleyValueSampling, Lime and KernelShap: every distinct
// coalition of present features is one score row; all rows of a request are submitted together and batched with other requests.
// A coalition leaves the prompt unchanged up to its first absent feature, so the prompt's KV cache is
// computed once (a prefill row) and each row computes only from its first change onward.
#include <ATen/ATen.h>

#include <map>
#include <numeric>
#include <random>

#include "engine/attribution/row_plan.h"
#include "engine/attribution/surrogate_models.h"

namespace attribution::engine {
namespace {

class PerturbationPlan : public RowPlan {
 public:
  PerturbationPlan(AttributionRequest request, int64_t num_layers) : RowPlan(std::move(request)) {
    const int64_t f_count = num_features();
    Index(Coalition(f_count, true));  // row 0: the real input
    switch (request_.method) {
      case AttributionMethod::kFeatureAblation:
        for (int64_t f = 0; f < f_count; ++f) {
          Coalition c(f_count, true);
          c[f] = false;
          Index(c);
        }
        break;
      case AttributionMethod::kShapleyValues:
        for (uint64_t mask = 0; mask < (uint64_t{1} << f_count); ++mask) Index(FromMask(mask));
        break;
      case AttributionMethod::kLime:
      case AttributionMethod::kKernelShap:
        samples_ = request_.method == AttributionMethod::kLime
                       ? SampleLimeCoalitions(f_count, request_.n_samples, request_.seed)
                       : SampleKernelShapCoalitions(f_count, request_.n_samples, request_.seed);
        for (const Coalition& c : samples_) Index(c);  // repeated samples share one row
        break;
      default: {  // kShapleyValueSampling: coalitions along seeded random permutations
        std::mt19937_64 rng(request_.seed);
        for (int64_t s = 0; s < request_.n_samples; ++s) {
          std::vector<int64_t> order(f_count);
          std::iota(order.begin(), order.end(), 0);
          std::shuffle(order.begin(), order.end(), rng);
          permutations_.push_back(order);
          Coalition c(f_count, false);
          Index(c);
          for (int64_t f : order) {
            c[f] = true;
            Index(c);
          }
        }
      }
    }
    result_of_.resize(coalitions_.size());
    std::iota(result_of_.begin(), result_of_.end(), 0);
    if (prompt_length() < 2) {
      for (const Coalition& c : coalitions_) rows_.push_back(ScoreRowFor(c, nullptr));
      return;
    }
    prefix_ = std::make_shared<DecodeState>(num_layers);
    prepare_rows_.push_back(Row{.kind = RowKind::kDecode,
                                .input_ids = {request_.prompt_ids.begin(), request_.prompt_ids.end() - 1},
                                .decode_state = prefix_});
  }

  int64_t num_rows() const override { return static_cast<int64_t>(prepare_rows_.size() + coalitions_.size()); }

  void Prepared(const std::vector<RowResult>&) override {
    std::vector<Row> rows;
    for (const Coalition& c : coalitions_) rows.push_back(ScoreRowFor(c, prefix_));
    // Longest rows first: the engine then batches rows of similar lengths (little padding).
    std::vector<size_t> order(rows.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a].length() > rows[b].length(); });
    for (size_t position = 0; position < order.size(); ++position) {
      result_of_[order[position]] = position;
      rows_.push_back(std::move(rows[order[position]]));
    }
  }

  absl::StatusOr<AttributionResult> Reduce(const std::vector<RowResult>& results) const override {
    AttributionResult out;
    auto of = [&](size_t coalition) -> const RowResult& { return results[result_of_[coalition]]; };
    FillTargetScores(of(0), out);
    out.sequence = Attribute([&](size_t coalition) { return of(coalition).value; });
    for (int64_t t = 0; t < target_length(); ++t) {
      out.per_token.push_back(Attribute([&](size_t coalition) { return TokenValue(of(coalition), t); }));
    }
    out.rows = static_cast<int64_t>(results.size());
    out.forward_passes = out.rows;
    return out;
  }

 private:
  Coalition FromMask(uint64_t mask) const {
    Coalition c(num_features());
    for (int64_t f = 0; f < num_features(); ++f) c[f] = (mask >> f) & 1;
    return c;
  }

  size_t Index(const Coalition& c) {
    auto [it, inserted] = index_.emplace(c, coalitions_.size());
    if (inserted) coalitions_.push_back(c);
    return it->second;
  }
  size_t RowOf(const Coalition& c) const { return index_.at(c); }

  // The prompt with absent features replaced by their baselines, then the target; with `prefix`, the
  // unchanged head of the prompt (all but its last token at most) is read from the prefix's cache.
  Row ScoreRowFor(const Coalition& present, std::shared_ptr<const DecodeState> prefix) const {
    std::vector<int64_t> ids = PerturbedPrompt(request_, present);
    const int64_t prompt = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), request_.target_ids.begin(), request_.target_ids.end());
    Row row{.kind = RowKind::kScore, .objective = SequenceObjective(prompt)};
    int64_t unchanged = 0;
    const int64_t limit = std::min(prompt, prompt_length()) - 1;  // the last prompt token is always recomputed
    while (prefix && unchanged < limit && ids[unchanged] == request_.prompt_ids[unchanged]) ++unchanged;
    if (unchanged > 0) {
      row.prefix = std::move(prefix);
      row.prefix_length = unchanged;
    }
    row.input_ids.assign(ids.begin() + unchanged, ids.end());
    return row;
  }

  // Feature attributions from the value of each coalition row.
  template <typename ValueOf>
  std::vector<double> Attribute(const ValueOf& value) const {
    const int64_t f_count = num_features();
    std::vector<double> attr(f_count, 0.0);
    switch (request_.method) {
      case AttributionMethod::kFeatureAblation:
        for (int64_t f = 0; f < f_count; ++f) attr[f] = value(0) - value(1 + f);
        return attr;
      case AttributionMethod::kShapleyValues: {
        // phi_f = sum over S without f of |S|! (F - |S| - 1)! / F! * (v(S + f) - v(S))
        std::vector<double> weight(f_count);
        for (int64_t s = 0; s < f_count; ++s) {
          weight[s] = std::exp(std::lgamma(s + 1.0) + std::lgamma(f_count - s + 0.0) - std::lgamma(f_count + 1.0));
        }
        for (uint64_t mask = 0; mask < (uint64_t{1} << f_count); ++mask) {
          const int64_t size = __builtin_popcountll(mask);
          for (int64_t f = 0; f < f_count; ++f) {
            if ((mask >> f) & 1) continue;
            attr[f] += weight[size] * (value(RowOf(FromMask(mask | (uint64_t{1} << f)))) - value(RowOf(FromMask(mask))));
          }
        }
        return attr;
      }
      case AttributionMethod::kLime:
      case AttributionMethod::kKernelShap: {
        std::vector<double> y;
        for (const Coalition& c : samples_) y.push_back(value(RowOf(c)));
        return request_.method == AttributionMethod::kLime ? FitLasso(samples_, y, LimeWeights(samples_), kLimeLassoAlpha)
                                                          : FitLeastSquares(samples_, y, KernelShapWeights(samples_));
      }
      default:
        for (const auto& order : permutations_) {
          Coalition c(f_count, false);
          double before = value(RowOf(c));
          for (int64_t f : order) {
            c[f] = true;
            const double after = value(RowOf(c));
            attr[f] += (after - before) / static_cast<double>(permutations_.size());
            before = after;
          }
        }
        return attr;
    }
  }

  std::shared_ptr<DecodeState> prefix_;  // KV cache of the prompt but its last token
  std::map<Coalition, size_t> index_;
  std::vector<Coalition> coalitions_;  // coalition i, scored by the row at results[result_of_[i]]
  std::vector<size_t> result_of_;
  std::vector<std::vector<int64_t>> permutations_;
  std::vector<Coalition> samples_;  // Lime / KernelShap: the sampled coalitions, repeats included
};

}  // namespace

std::unique_ptr<RowPlan> MakePerturbationPlan(AttributionRequest request, int64_t num_layers) {
  return std::make_unique<PerturbationPlan>(std::move(request), num_layers);
}

}  // namespace attribution::engine
