// SPDX-License-Identifier: Apache-2.0
// Collects the results of one Submit call and lets a test wait until every row was answered.
#pragma once

#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "engine/scheduler/row.h"
#include "tests/testing/notification.h"

namespace attribution::test_support {

class RowCollector {
 public:
  explicit RowCollector(size_t rows) : results_(rows), answers_(rows, 0) {}

  engine::RowCallback Callback() {
    return [this](size_t index, engine::RowResult result) {
      bool last = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        results_[index] = std::move(result);
        last = ++answers_[index] == 1 && ++answered_ == results_.size();
      }
      // Nothing of this object may be touched after Notify: the waiter may destroy it at once.
      if (last) done_.Notify();
    };
  }
  void Wait() { done_.WaitForNotification(); }
  bool WaitFor(absl::Duration timeout) { return done_.WaitForNotificationWithTimeout(timeout); }
  bool done() const { return done_.HasBeenNotified(); }

  const engine::RowResult& result(size_t i) const { return results_[i]; }
  // How often each row was answered (must be exactly once).
  std::vector<int> answers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return answers_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<engine::RowResult> results_;
  std::vector<int> answers_;
  size_t answered_ = 0;
  mutable ::attribution::test_support::Notification done_;
};

}  // namespace attribution::test_support
