// SPDX-License-Identifier: Apache-2.0
#include "server/call_gate.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace attribution::server {

CallGate::CallGate(int64_t max_in_flight, std::function<void(int64_t)> on_change,
                   const std::vector<std::string>& models)
    : max_in_flight_(max_in_flight),
      on_change_(std::move(on_change)),
      reserve_(models.size() > 1 ? max_in_flight / (4 * static_cast<int64_t>(models.size())) : 0) {
  for (const std::string& model : models) in_flight_of_[model] = 0;
}

absl::Status CallGate::Enter(const std::string& model) {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError("the server is shutting down; retry on another replica");
  if (in_flight_ >= max_in_flight_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many concurrent requests (the limit is ", max_in_flight_, ")"));
  }
  const auto own = in_flight_of_.find(model);
  // A call for no model (ListModels, a name no model has) does no engine work: it may take a reserved slot, so
  // a client of a quiet model can list the models (a batch job does first) while another model floods the rest.
  if (reserve_ > 0 && own != in_flight_of_.end()) {
    // What the other models' reserves still need.
    int64_t kept = 0;
    for (const auto& [other, calls] : in_flight_of_) {
      if (other != own->first) kept += std::max<int64_t>(0, reserve_ - calls);
    }
    if (in_flight_ + kept >= max_in_flight_) {
      return absl::ResourceExhaustedError(absl::StrCat("too many concurrent requests for model \"", model, "\" (",
                                                       own->second, " in flight): the limit is ", max_in_flight_,
                                                       ", of which ", kept, " are kept for the other models' calls"));
    }
  }
  ++in_flight_;
  if (own != in_flight_of_.end()) ++own->second;
  if (on_change_) on_change_(in_flight_);
  return absl::OkStatus();
}

void CallGate::Leave(const std::string& model) {
  bool idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle = --in_flight_ == 0;
    if (const auto own = in_flight_of_.find(model); own != in_flight_of_.end()) --own->second;
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
