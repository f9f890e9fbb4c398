// SPDX-License-Identifier: Apache-2.0
#include "server/call_gate.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace attribution::server {

absl::Status CallGate::Enter() {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError("the server is shutting down; retry on another replica");
  if (in_flight_ >= max_in_flight_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many concurrent requests (the limit is ", max_in_flight_, ")"));
  }
  ++in_flight_;
  if (on_change_) on_change_(in_flight_);
  return absl::OkStatus();
}

void CallGate::Leave() {
  bool idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle = --in_flight_ == 0;
    if (on_change_) on_change_(in_flight_);
  }
  if (idle) idle_.notify_all();
}

int64_t CallGate::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_;
}

void CallGate::StartDraining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool CallGate::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

bool CallGate::WaitIdle(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto idle = [this] { return in_flight_ == 0; };
  if (timeout == absl::InfiniteDuration()) {  // as nanoseconds it would overflow steady_clock's now + timeout
    idle_.wait(lock, idle);
    return true;
  }
  // wait_for runs on the steady clock; wait_until a system_clock point moved with a step of the wall clock.
  return idle_.wait_for(lock, absl::ToChronoNanoseconds(timeout), idle);
}

}  // namespace attribution::server
