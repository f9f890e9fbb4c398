// SPDX-License-Identifier: Apache-2.0
// How long a batch takes on the device, learned from the batches an engine runs, so the batch policy
// can bound one batch's device time (latency isolation: a short call waits at most one such batch).
//
//   BatchCostModel model;
//   model.Observe(RowKind::kGrad, /*rows=*/32, /*longest=*/80, absl::Milliseconds(41));
//   const BatchCost cost = model.cost(RowKind::kGrad);
//   if (cost.known) seconds = cost.Seconds(16, 120);
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "engine/scheduler/row.h"

namespace attribution::engine {

// Device seconds of a batch of `rows` rows right-padded to `longest` tokens, for one row kind:
//   fixed + per_token * rows * longest + per_token_pair * rows * longest^2
// (per-batch overhead; dense layers grow with the padded tokens, attention with their square).
struct BatchCost {
  double fixed = 0;
  double per_token = 0;
  double per_token_pair = 0;
  bool known = false;  // enough batches seen to trust the coefficients
  double Seconds(int64_t rows, int64_t longest) const;
};

// Fits BatchCost per kind to finished batches by least squares on the relative error, with
// exponential forgetting (each batch weighs kDecay of the one after it), so the model follows a
// device whose speed drifts without being thrown off by one slow batch. Coefficients stay >= 0 (a
// term that would come out negative is dropped). Not thread-safe: the executor thread owns it.
class BatchCostModel {
 public:
  static constexpr double kDecay = 0.97;
  static constexpr int kMinBatches = 4;

  void Observe(RowKind kind, int64_t rows, int64_t longest, absl::Duration device_time);
  BatchCost cost(RowKind kind) const { return costs_[static_cast<int>(kind)]; }

 private:
  // Decayed sums of u u^T and u, where u = (1, tokens, token pairs) / seconds of each batch.
  struct Sums {
    double uu[3][3] = {};
    double u[3] = {};
    int batches = 0;
  };
  Sums sums_[kRowKinds];
  BatchCost costs_[kRowKinds];
};

}  // namespace attribution::engine
