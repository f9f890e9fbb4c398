// SPDX-License-Identifier: Apache-2.0
// A BatchExecutor for scheduler tests: no model, no tensors. Each row's value is the sum of its
// input ids, or its path's (so a result mixed up between rows is visible); it records every batch it runs, can be
// held at a gate, pauses grad batches for the engine's short work, and fails on request.
#pragma once

#include <ATen/Parallel.h>

#include <functional>
#include <mutex>
#include <numeric>
#include <vector>

#include "engine/scheduler/batch_executor.h"
#include "tests/testing/notification.h"

namespace attribution::test_support {

class FakeExecutor : public engine::BatchExecutor {
 public:
  struct Batch {
    engine::RowKind kind;
    std::vector<std::vector<int64_t>> rows;  // input ids of each row
    int intra_op_threads = 0;                // at::get_num_threads() on the engine's thread as it ran
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
    if (during_batch_) during_batch_(rows);
    if (kind != engine::RowKind::kGrad && abandon_point_) abandon_point_();  // as between a model's layers
    for (int i = 0; kind == engine::RowKind::kGrad && paused_stretches_ > 1 && i < paused_stretches_; ++i) {
      if (during_stretch_) during_stretch_(rows);
      if (i + 1 < paused_stretches_ && pause_point_) pause_point_();
    }
    if (failure_) {
      if (absl::Status s = failure_(rows); !s.ok()) {
        RecordAttempt(rows);
        return s;
      }
    }
    Batch batch{kind, {}, at::get_num_threads()};
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::vector<int64_t>& ids = rows[i]->point.path ? rows[i]->point.path->input_ids : rows[i]->input_ids;
      batch.rows.push_back(ids);
      results[i].value = std::accumulate(ids.begin(), ids.end(), 0.0);
    }
    std::lock_guard<std::mutex> lock(mu_);
    batches_.push_back(std::move(batch));
    return absl::OkStatus();
  }

  // The first batch blocks until `gate` is notified; started() is notified when it arrives.
  void HoldFirstBatch(Notification* gate) { gate_ = gate; }
  Notification& started() { return started_; }
  void FailWhen(FailureRule rule) { failure_ = std::move(rule); }
  // Runs inside every batch, e.g. to advance a fake clock by the batch's device time (set before the
  // engine starts).
  void DuringBatch(std::function<void(const std::vector<const engine::Row*>&)> hook) {
    during_batch_ = std::move(hook);
  }
  // Grad batches call the engine's pause point `stretches - 1` times, after the DuringBatch hook, and
  // run the DuringStretch hook before each pause and after the last (set before the engine starts).
  void PauseGradBatches(int stretches) { paused_stretches_ = stretches; }
  void DuringStretch(std::function<void(const std::vector<const engine::Row*>&)> hook) {
    during_stretch_ = std::move(hook);
  }
  void SetPausePoint(std::function<void()> pause_point) override { pause_point_ = std::move(pause_point); }
  // Score and decode batches call the engine's abandon point once, after the DuringBatch hook.
  void SetAbandonPoint(std::function<void()> abandon_point) override { abandon_point_ = std::move(abandon_point); }
  int PausedStretches(engine::RowKind kind) const override {
    return kind == engine::RowKind::kGrad ? paused_stretches_ : 1;
  }
  // What an embedding path costs per token once it runs (set before the engine starts).
  void SetEmbeddedBytesPerToken(int64_t bytes) { embedded_bytes_per_token_ = bytes; }
  int64_t EmbeddedBytesPerToken() const override { return embedded_bytes_per_token_; }
  // What a prompt pair's captured activations cost per token (set before the engine starts).
  void SetCapturedBytesPerToken(int64_t bytes) { captured_bytes_per_token_ = bytes; }
  int64_t CapturedBytesPerToken(bool) const override { return captured_bytes_per_token_; }

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
  std::function<void(const std::vector<const engine::Row*>&)> during_batch_, during_stretch_;
  int paused_stretches_ = 1;
  std::function<void()> pause_point_, abandon_point_;
  int64_t embedded_bytes_per_token_ = 0;
  int64_t captured_bytes_per_token_ = 0;
  mutable std::mutex mu_;
  std::vector<Batch> batches_;
  int64_t failed_attempts_ = 0;
};

}  // namespace attribution::test_support
