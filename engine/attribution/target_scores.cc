// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/target_scores.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/attribution/submit_rows.h"
#include "engine/attribution/target_objective.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

// [N] float tensor -> N doubles.
std::vector<double> ToDoubles(const at::Tensor& values) {
  const at::Tensor v = values.to(at::kCPU, at::kDouble).contiguous();
  return {v.data_ptr<double>(), v.data_ptr<double>() + v.numel()};
}

// The score row's results in plain numbers; T scored positions, k alternatives each.
TargetScores ToTargetScores(const RowResult& row, int64_t top_k) {
  TargetScores out{.log_probs = ToDoubles(row.token_log_probs), .logits = ToDoubles(row.token_logits)};
  if (top_k == 0) return out;
  const at::Tensor ids = row.top_ids.to(at::kCPU, at::kLong).contiguous();                // [T, k]
  const at::Tensor log_probs = row.top_log_probs.to(at::kCPU, at::kDouble).contiguous();  // [T, k]
  const int64_t k = ids.size(1);  // top_k, or the vocabulary when smaller
  for (int64_t t = 0; t < ids.size(0); ++t) {
    const int64_t* id = ids.data_ptr<int64_t>() + t * k;
    const double* lp = log_probs.data_ptr<double>() + t * k;
    out.top_ids.emplace_back(id, id + k);
    out.top_log_probs.emplace_back(lp, lp + k);
  }
  return out;
}

}  // namespace

void ScoreTarget(BatchingEngine& engine, const std::shared_ptr<Request>& handle, const std::vector<int64_t>& prompt_ids,
                 const std::vector<int64_t>& target_ids, int64_t top_k,
                 std::function<void(absl::StatusOr<TargetScores>)> done) {
  if (prompt_ids.empty()) return done(absl::InvalidArgumentError("prompt_ids must not be empty"));
  if (target_ids.empty()) return done(absl::InvalidArgumentError("target_ids must not be empty"));
  if (top_k < 0) return done(absl::InvalidArgumentError(absl::StrCat("top_k = ", top_k, " must be >= 0")));
  Row row{.kind = RowKind::kScore, .top_k = top_k};
  row.input_ids = prompt_ids;
  row.input_ids.insert(row.input_ids.end(), target_ids.begin(), target_ids.end());
  row.objective = TargetObjective(static_cast<int64_t>(prompt_ids.size()), target_ids,
                                  /*foil_ids=*/{}, TokenQuantity::kLogProb);
  std::vector<Row> rows;
  rows.push_back(std::move(row));
  SubmitRows(
      engine, handle, std::move(rows), /*row_answered=*/nullptr,
      [done, top_k](std::vector<RowResult>& results) {
        // On the engine's thread: an ATen error must end this call, not the thread.
        absl::StatusOr<TargetScores> scores;
        try {
          scores = ToTargetScores(results[0], top_k);
          if (scores.ok()) {
            for (size_t t = 0; t < scores->log_probs.size(); ++t) {
              if (std::isnan(scores->log_probs[t])) {
                scores = NotANumberError(absl::StrCat("the log-prob of target token ", t));
                break;
              }
            }
          }
        } catch (const std::exception& e) {
          scores = StatusFromException(e, "target scores");
        }
        done(std::move(scores));
      },
      [done](const absl::Status& status) { done(status); });
}

}  // namespace attribution::engine
