// SPDX-License-Identifier: Apache-2.0
// Admission and drain: counts calls in flight, refuses new ones over the concurrency limit
// (RESOURCE_EXHAUSTED) or once draining began (UNAVAILABLE), and lets shutdown wait for the calls in
// flight to finish.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>

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
  explicit CallGate(int64_t max_in_flight, std::function<void(int64_t)> on_change = nullptr)
      : max_in_flight_(max_in_flight), on_change_(std::move(on_change)) {}
  // Admits a call (OK: the caller must Leave() once) or refuses it.
  absl::Status Enter();
  void Leave();
  int64_t in_flight() const;
  // New calls are refused from now on.
  void StartDraining();
  bool draining() const;
  // Waits until no call is in flight or for `timeout`; true when idle.
  bool WaitIdle(absl::Duration timeout);

 private:
  const int64_t max_in_flight_;
  const std::function<void(int64_t)> on_change_;
  mutable std::mutex mu_;
  std::condition_variable idle_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace attribution::server
