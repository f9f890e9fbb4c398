// SPDX-License-Identifier: Apache-2.0
// Admission and drain: counts calls in flight, refuses new ones over the concurrency limit
// (RESOURCE_EXHAUSTED) or once draining began (UNAVAILABLE), and lets shutdown wait for the calls in
// flight to finish.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace attribution::server {

// Thread-safe.
class CallGate {
 public:
  // `on_change` is told the number of calls in flight after each Enter and Leave, under the gate's lock, so
  // what it records is never older than the last change (two calls ending together, each reading the count
  // after its own Leave, could record 1 last and leave a gauge at 1 while idle).
  //
  // With several `models`, each keeps a reserve of max_in_flight / (4 x models) slots for its own calls:
  // a model's calls may not take the slots the others' reserves still need, so a flood of calls on one
  // model (256 queued integrated-gradients calls) no longer refuses every call to every other model. A call
  // for no model (ListModels) may take a reserved slot.
  explicit CallGate(int64_t max_in_flight, std::function<void(int64_t)> on_change = nullptr,
                    const std::vector<std::string>& models = {});
  // Admits a call (OK: the caller must Leave() with the same `model` once) or refuses it. `model`: the
  // served model the call is for, or "" (ListModels, a name no model has).
  absl::Status Enter(const std::string& model = "");
  void Leave(const std::string& model = "");
  int64_t in_flight() const;
  // New calls are refused from now on.
  void StartDraining();
  bool draining() const;
  // Waits until no call is in flight or for `timeout`; true when idle.
  bool WaitIdle(absl::Duration timeout);

 private:
  const int64_t max_in_flight_;
  const std::function<void(int64_t)> on_change_;
  const int64_t reserve_;  // per model, when there are several; 0 otherwise
  mutable std::mutex mu_;
  std::condition_variable idle_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> in_flight_of_ ABSL_GUARDED_BY(mu_);  // per model, every model present
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace attribution::server
