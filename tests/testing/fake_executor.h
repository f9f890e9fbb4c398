// SPDX-License-Identifier: Apache-2.0
// A BatchExecutor for scheduler tests: no model, no tensors. Each row's value is the sum of its
// input ids (so a result mixed up between rows is visible); it records every batch it runs, can be
// held at a gate, and fails on request.
#pragma once

#include <functional>
#include <numeric>
#include <vector>

#include <mutex>
#include "tests/testing/notification.h"
#include "engine/scheduler/batch_executor.h"

namespace attribution::test_support {

class FakeExecutor : public engine::BatchExecutor {
 public:
  struct Batch {
    engine::RowKind kind;
    std::vector<std::vector<int64_t>> rows;  // input ids of each row
  };
  // Returns a non-OK status to fail a batch (before any row is answered).
  using FailureRule = std::function<absl::Status(const std::vector<const engine::Row*>&)>;

  absl::Status Run(engine::RowKind kind, const std::vector<const engine::Row*>& rows,
                   std::vector<engine::RowResult>& results) override {
    if (gate_ != nullptr) {
      started_.Notify();
      gate_->WaitForNotification();
      gate_ = nullptr;  // only the first batch waits
    }
    if (failure_) {
      if (absl::Status s = failure_(rows); !s.ok()) {
        RecordAttempt(rows);
        return s;
      }
    }
    Batch batch{kind, {}};
    for (size_t i = 0; i < rows.size(); ++i) {
      batch.rows.push_back(rows[i]->input_ids);
      results[i].value = std::accumulate(rows[i]->input_ids.begin(), rows[i]->input_ids.end(), 0.0);
    }
    std::lock_guard<std::mutex> lock(mu_);
    batches_.push_back(std::move(batch));
    return absl::OkStatus();
  }

  // The first batch blocks until `gate` is notified; started() is notified when it arrives.
  void HoldFirstBatch(Notification* gate) { gate_ = gate; }
  Notification& started() { return started_; }
  void FailWhen(FailureRule rule) { failure_ = std::move(rule); }

  std::vector<Batch> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  int64_t failed_attempts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_attempts_;
  }

 private:
  void RecordAttempt(const std::vector<const engine::Row*>&) {
    std::lock_guard<std::mutex> lock(mu_);
    ++failed_attempts_;
  }
  Notification* gate_ = nullptr;  // touched by the executor thread only after setup
  Notification started_;
  FailureRule failure_;
  mutable std::mutex mu_;
  std::vector<Batch> batches_;
  int64_t failed_attempts_ = 0;
};

}  // namespace attribution::test_support
