// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/faithfulness.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>

#include "engine/attribution/row_plan.h"
#include "engine/attribution/submit_rows.h"
#include "engine/attribution/target_objective.h"

namespace attribution::engine {
namespace {

constexpr int64_t kPoints = std::size(kFaithfulnessPercents);

// A score row of p(target) (over the choices, if any) after the prompt with the features not `present` at their
// baselines.
Row TargetProbabilityRow(const AttributionRequest& request, const std::vector<bool>& present) {
  std::vector<int64_t> ids = PerturbedPrompt(request, present);
  const int64_t prompt = static_cast<int64_t>(ids.size());
  ids.insert(ids.end(), request.target_ids.begin(), request.target_ids.end());
  RowObjective objective = TargetObjective(prompt, request.target_ids, /*foil_ids=*/{}, TokenQuantity::kProb);
  objective.choice_tokens = request.choice_ids;  // over the choices when the explanation is
  return Row{.kind = RowKind::kScore, .input_ids = std::move(ids), .objective = std::move(objective)};
}

}  // namespace

int64_t FaithfulnessRowCount() { return 2 + 2 * kPoints; }

std::vector<int64_t> RankFeatures(const std::vector<double>& attribution) {
  std::vector<int64_t> ranked(attribution.size());
  std::iota(ranked.begin(), ranked.end(), 0);
  // NaN (an attribution that overflowed) ranks last: `>` alone is no ordering once a NaN is among the values.
  std::stable_sort(ranked.begin(), ranked.end(), [&](int64_t a, int64_t b) {
    return !std::isnan(attribution[a]) && (std::isnan(attribution[b]) || attribution[a] > attribution[b]);
  });
  return ranked;
}

void MeasureFaithfulness(BatchingEngine& engine, const std::shared_ptr<Request>& handle,
                         const AttributionRequest& request, const std::vector<double>& attribution,
                         std::function<void(absl::StatusOr<Faithfulness>)> done, std::function<void()> row_answered) {
  const int64_t f_count = NumFeatures(request);
  if (static_cast<int64_t>(attribution.size()) != f_count) {
    return done(absl::InvalidArgumentError("faithfulness needs one attribution per feature"));
  }
  const std::vector<int64_t> ranked = RankFeatures(attribution);

  // Rows in order: full prompt, every feature at baseline, then (deletion, insertion) per point.
  Faithfulness shape;
  std::vector<Row> rows;
  rows.push_back(TargetProbabilityRow(request, std::vector<bool>(f_count, true)));
  rows.push_back(TargetProbabilityRow(request, std::vector<bool>(f_count, false)));
  for (double percent : kFaithfulnessPercents) {
    const auto top = static_cast<int64_t>(std::ceil(percent * static_cast<double>(f_count) / 100.0 - 1e-9));
    shape.percents.push_back(percent);
    shape.features_at.push_back(top);
    std::vector<bool> deleted(f_count, true), inserted(f_count, false);
    for (int64_t i = 0; i < top; ++i) {
      deleted[ranked[i]] = false;
      inserted[ranked[i]] = true;
    }
    rows.push_back(TargetProbabilityRow(request, deleted));
    rows.push_back(TargetProbabilityRow(request, inserted));
  }

  auto curves = [shape = std::move(shape), done](std::vector<RowResult>& results) {
    Faithfulness out = shape;
    out.full = results[0].value;
    out.empty = results[1].value;
    for (int64_t p = 0; p < kPoints; ++p) {
      out.deletion.push_back(results[2 + 2 * p].value);
      out.insertion.push_back(results[3 + 2 * p].value);
      out.comprehensiveness_aopc += (out.full - out.deletion.back()) / kPoints;
      out.sufficiency_aopc += (out.full - out.insertion.back()) / kPoints;
    }
    done(std::move(out));
  };
  SubmitRows(engine, handle, std::move(rows), std::move(row_answered), std::move(curves),
             [done](const absl::Status& status) { done(status); });
}

}  // namespace attribution::engine
