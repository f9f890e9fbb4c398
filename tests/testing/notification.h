// SPDX-License-Identifier: Apache-2.0
// A one-shot event for tests, on std::mutex so ThreadSanitizer sees it (Debian's abseil is not built
// with ThreadSanitizer, which then cannot see absl::Mutex / absl::Notification synchronise).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/time/time.h"

namespace attribution::test_support {

class Notification {
 public:
  // Signals while holding the lock: a waiter may destroy this object as soon as it wakes.
  void Notify() {
    std::lock_guard<std::mutex> lock(mu_);
    notified_ = true;
    cv_.notify_all();
  }
  void WaitForNotification() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return notified_; });
  }
  bool WaitForNotificationWithTimeout(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] { return notified_; });
  }
  bool HasBeenNotified() {
    std::lock_guard<std::mutex> lock(mu_);
    return notified_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool notified_ = false;
};

}  // namespace attribution::test_support
