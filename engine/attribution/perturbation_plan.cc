// SPDX-License-Identifier: Apache-2.0
// Perturbation methods (their coalitions: coalition_designs.cc): every distinct coalition of present
// features is one score row; all rows of a request are submitted together and batched with other requests.
// A coalition leaves the prompt unchanged up to its first absent feature, so the prompt's KV cache is
// computed once (a prefill row) and each row computes only from its first change onward.
#include <ATen/ATen.h>

#include <map>
#include <numeric>

#include "engine/attribution/methods.h"
#include "engine/attribution/row_plan.h"

namespace attribution::engine {
namespace {

class PerturbationPlan : public RowPlan {
 public:
  PerturbationPlan(AttributionRequest request, int64_t num_layers) : RowPlan(std::move(request)) {
    design_ = MethodOf(request_.method).coalitions(request_, num_features());
    Index(Coalition(num_features(), true));                     // row 0: the real input
    for (const Coalition& c : design_->Coalitions()) Index(c);  // repeated coalitions share one row
    result_of_.resize(coalitions_.size());
    std::iota(result_of_.begin(), result_of_.end(), 0);
    if (prompt_length() < 2) {
      for (const Coalition& c : coalitions_) rows_.push_back(ScoreRowFor(c, nullptr));
      return;
    }
    // First round: the prefix's prefill; the coalitions' rows follow once its cache is filled.
    prefix_ = std::make_shared<DecodeState>(num_layers);
    rows_.push_back(Row{.kind = RowKind::kDecode,
                        .input_ids = {request_.prompt_ids.begin(), request_.prompt_ids.end() - 1},
                        .decode_state = prefix_});
  }

  bool long_result() const override { return design_->fits_long(); }
  int64_t expected_rows() const override { return (prefix_ ? 1 : 0) + static_cast<int64_t>(coalitions_.size()); }

  absl::Status Absorb(std::vector<RowResult>& results) override {
    if (prefix_ && !prefilled_) {
      prefilled_ = true;
      QueueCoalitionRows();
      return absl::OkStatus();
    }
    results_ = std::move(results);
    return absl::OkStatus();
  }

  absl::StatusOr<AttributionResult> Result() const override {
    const std::vector<RowResult>& results = results_;
    AttributionResult out;
    auto of = [&](size_t coalition) -> const RowResult& { return results[result_of_[coalition]]; };
    FillTargetScores(of(0), out);
    out.sequence = design_->Attribute([&](const Coalition& c) { return of(index_.at(c)).value; });
    // A fit per target token (a Lasso for LIME), only when the matrix is asked for; a long one stops once nobody
    // waits (the Attributor then answers CANCELLED, DEADLINE_EXCEEDED or UNAVAILABLE, never these numbers).
    for (int64_t t = 0; request_.want_token_matrix && t < target_length() && !request_.abandoned(); ++t) {
      out.per_token.push_back(design_->Attribute([&](const Coalition& c) { return TokenValue(of(index_.at(c)), t); }));
    }
    out.rows = expected_rows();  // the prefix's prefill too: every row the engine ran for this request
    out.forward_passes = out.rows;
    return out;
  }

 private:
  void QueueCoalitionRows() {
    std::vector<Row> rows;
    for (const Coalition& c : coalitions_) rows.push_back(ScoreRowFor(c, prefix_));
    // Longest rows first: the engine then batches rows of similar lengths (little padding).
    std::vector<size_t> order(rows.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rows[a].length() > rows[b].length(); });
    for (size_t position = 0; position < order.size(); ++position) {
      result_of_[order[position]] = position;
      rows_.push_back(std::move(rows[order[position]]));
    }
  }

  size_t Index(const Coalition& c) {
    auto [it, inserted] = index_.emplace(c, coalitions_.size());
    if (inserted) coalitions_.push_back(c);
    return it->second;
  }

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

  std::shared_ptr<DecodeState> prefix_;  // KV cache of the prompt but its last token
  bool prefilled_ = false;
  std::vector<RowResult> results_;  // of the coalition rows
  std::map<Coalition, size_t> index_;
  std::vector<Coalition> coalitions_;  // coalition i, scored by the row at results[result_of_[i]]
  std::vector<size_t> result_of_;
  std::unique_ptr<CoalitionDesign> design_;  // the method's coalitions and their reduction
};

}  // namespace

std::unique_ptr<RowPlan> MakePerturbationPlan(AttributionRequest request, int64_t num_layers) {
  return std::make_unique<PerturbationPlan>(std::move(request), num_layers);
}

}  // namespace attribution::engine
