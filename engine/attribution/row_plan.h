// SPDX-License-Identifier: Apache-2.0
// A method's rows for one attribution request and the reduction of their results. Private to
// engine/attribution: gradient methods (gradient_plan.cc) and perturbation methods
// (perturbation_plan.cc) implement it.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/attribution/attribution_request.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

// Features of a request: its explicit spans, or one per prompt token.
int64_t NumFeatures(const AttributionRequest& request);
std::pair<int64_t, int64_t> FeatureSpan(const AttributionRequest& request, int64_t f);
// The prompt with every feature not `present` replaced by its baselines; tokens between explicit
// feature spans stay as they are.
std::vector<int64_t> PerturbedPrompt(const AttributionRequest& request, const std::vector<bool>& present);

// A plan runs in rounds: each round's rows are submitted together, and their results decide what
// comes next (a perturbation plan's prefix prefill before its coalitions; tolerance-driven integrated
// gradients' next order). Plans are built from token ids alone and touch no tensor of the model's.
class RowPlan {
 public:
  virtual ~RowPlan() = default;
  // The plan of a validated request with a given target.
  static absl::StatusOr<std::unique_ptr<RowPlan>> Create(const ModelConfig& config, AttributionRequest request);

  // The next round's rows, in the order Absorb expects their results; empty once the plan is complete.
  std::vector<Row> TakeRows() { return std::move(rows_); }
  // Takes the results of the rows last taken; may queue the next round's rows.
  virtual absl::Status Absorb(std::vector<RowResult>& results) = 0;
  // The attribution, once TakeRows returns none.
  virtual absl::StatusOr<AttributionResult> Result() const = 0;
  // The rows the plan expects to run in all, for progress reports (an adaptive plan's may grow).
  virtual int64_t expected_rows() const = 0;
  // Whether Result takes long enough to run away from the engine's executor thread (BatchingEngine::RunAside).
  virtual bool long_result() const { return false; }

 protected:
  explicit RowPlan(AttributionRequest request);

  // The scored quantity of the whole target (or target minus foil when contrastive) after a prompt of
  // `prompt_length` tokens.
  RowObjective SequenceObjective(int64_t prompt_length) const;
  // The same for target token t alone.
  RowObjective TokenObjective(int64_t prompt_length, int64_t t) const;
  // Token t's quantity from a score row built with SequenceObjective (target minus foil when contrastive).
  double TokenValue(const RowResult& score, int64_t t) const;
  // Feature f's prompt positions.
  std::pair<int64_t, int64_t> FeatureSpanOf(int64_t f) const;
  int64_t num_features() const;
  int64_t target_length() const { return static_cast<int64_t>(request_.target_ids.size()); }
  int64_t prompt_length() const { return static_cast<int64_t>(request_.prompt_ids.size()); }
  // Fills target_ids, target_log_probs (foil_log_probs when contrastive) and objective from a score row at
  // the real input.
  void FillTargetScores(const RowResult& at_input, AttributionResult& out) const;

  AttributionRequest request_;
  std::vector<Row> rows_;  // the next round
};

std::unique_ptr<RowPlan> MakeGradientPlan(AttributionRequest request);
std::unique_ptr<RowPlan> MakePerturbationPlan(AttributionRequest request, int64_t num_layers);

}  // namespace attribution::engine
