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

class RowPlan {
 public:
  virtual ~RowPlan() = default;
  // Builds the plan of a validated request with a given target. May read the model's embedding table.
  static absl::StatusOr<std::unique_ptr<RowPlan>> Create(const CausalLM& model, AttributionRequest request);

  // Rows that must finish before the main rows can be built (e.g. a shared prefix's prefill); once
  // they have, Prepared receives their results and builds the main rows.
  std::vector<Row> TakePrepareRows() { return std::move(prepare_rows_); }
  virtual void Prepared(const std::vector<RowResult>& results) {}
  // The rows to submit, in the order Reduce expects their results (callable once).
  std::vector<Row> TakeRows() { return std::move(rows_); }
  virtual absl::StatusOr<AttributionResult> Reduce(const std::vector<RowResult>& results) const = 0;
  // Prepare rows plus main rows; call before taking either.
  virtual int64_t num_rows() const { return static_cast<int64_t>(prepare_rows_.size() + rows_.size()); }

 protected:
  explicit RowPlan(AttributionRequest request);

  // The scored quantity of the whole target (or target minus foil) for a prompt of `prompt_length`.
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
  // Fills target_ids, target_log_probs and objective from a score row at the real input.
  void FillTargetScores(const RowResult& at_input, AttributionResult& out) const;

  AttributionRequest request_;
  std::vector<Row> prepare_rows_;
  std::vector<Row> rows_;
};

absl::StatusOr<std::unique_ptr<RowPlan>> MakeGradientPlan(const CausalLM& model, AttributionRequest request);
std::unique_ptr<RowPlan> MakePerturbationPlan(AttributionRequest request, int64_t num_layers);

}  // namespace attribution::engine
