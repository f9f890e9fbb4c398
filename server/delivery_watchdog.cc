// SPDX-License-Identifier: Apache-2.0
#include "server/delivery_watchdog.h"

#include <algorithm>
#include <vector>

#include "engine/common/monotonic_clock.h"

namespace attribution::server {

void DeliveryWatch::WriteStarted() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  pending_since_ = MonotonicNow();
}

void DeliveryWatch::WriteDone() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  pending_since_.reset();
}

void DeliveryWatch::CallDone() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  done_ = true;
  context_ = nullptr;
}

bool DeliveryWatch::done() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return done_;
}

bool DeliveryWatch::cancelled() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return cancelled_;
}

void DeliveryWatch::CancelIfStalled(absl::Time stalled_before) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (done_ || cancelled_ || !pending_since_ || *pending_since_ > stalled_before) return;
  cancelled_ = true;
  context_->TryCancel();  // under the lock: CallDone (and the context's end) waits for it
}

DeliveryWatchdog::DeliveryWatchdog(absl::Duration limit) : limit_(limit), thread_([this] { Run(); }) {}

DeliveryWatchdog::~DeliveryWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_changed_.notify_all();
  thread_.join();
}

std::shared_ptr<DeliveryWatch> DeliveryWatchdog::Watch(grpc::CallbackServerContext* context) {
  auto watch = std::make_shared<DeliveryWatch>(context);
  std::lock_guard<std::mutex> lock(mu_);
  watches_.push_back(watch);
  return watch;
}

void DeliveryWatchdog::Run() {
  const absl::Duration period = std::min(limit_ / 4, absl::Seconds(1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_changed_.wait_for(lock, absl::ToChronoNanoseconds(period), [this] { return stopping_; })) {
    watches_.remove_if([](const std::shared_ptr<DeliveryWatch>& w) { return w->done(); });
    const std::vector<std::shared_ptr<DeliveryWatch>> live(watches_.begin(), watches_.end());
    lock.unlock();  // cancelling runs the call's reactions, which may start new calls (Watch)
    const absl::Time stalled_before = MonotonicNow() - limit_;
    for (const auto& watch : live) watch->CancelIfStalled(stalled_before);
    lock.lock();
  }
}

}  // namespace attribution::server
