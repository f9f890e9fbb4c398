// SPDX-License-Identifier: Apache-2.0
#include "server/serving_health.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log_line.h"
#include "server/model_registry.h"

namespace attribution::server {

ServingHealth::ServingHealth(grpc::HealthCheckServiceInterface* health, std::string service_name)
    : health_(health), service_name_(std::move(service_name)) {
  std::lock_guard<std::mutex> lock(mu_);
  ApplyLocked();
}

ServingHealth::~ServingHealth() { Stop(); }

void ServingHealth::Serve(const ModelRegistry& models) {
  absl::Duration period = absl::Seconds(1);
  for (const auto& model : models.models()) {
    period = std::min(period, std::max(absl::Milliseconds(10), model->spec.engine.stall_time / 4));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    loaded_ = true;
    ApplyLocked();
  }
  watch_ = std::thread([this, &models, period] { Watch(models, period); });
}

void ServingHealth::StartDraining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  ApplyLocked();
}

void ServingHealth::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = stopping_ = true;
    ApplyLocked();
  }
  stop_changed_.notify_all();
  if (watch_.joinable()) watch_.join();  // nothing changes the health from now on
}

void ServingHealth::ApplyLocked() {
  const bool serving = loaded_ && !draining_ && stalled_.empty();
  // By name too, so a check that names the service (grpc-health-probe -service, a probe's grpc.service,
  // Envoy's service_name, a client's healthCheckConfig) follows the server as "" does.
  health_->SetServingStatus(service_name_, serving);
  health_->SetServingStatus("", serving);
}

void ServingHealth::Watch(const ModelRegistry& models, absl::Duration period) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_changed_.wait_for(lock, absl::ToChronoNanoseconds(period), [this] { return stopping_; })) {
    for (const auto& model : models.models()) {
      engine::BatchingEngine& engine = *model->engine;
      // At every look while stalled, not only the first: it costs a lock, and no row can wait there unseen.
      // Unlocked: the refused calls end on this thread, and gRPC's completion is no place for this lock.
      lock.unlock();
      const bool stalled = engine.stalled();
      const int64_t refused = stalled ? engine.RefuseQueuedWorkWhileStalled() : 0;
      const absl::Duration without_progress = engine.TimeWithoutProgress();
      lock.lock();
      if (stopping_) return;
      UpdateLocked(model->spec.name, stalled, refused, without_progress, model->spec.engine.stall_time);
    }
  }
}

void ServingHealth::UpdateLocked(const std::string& model, bool stalled, int64_t refused,
                                 absl::Duration without_progress, absl::Duration stall_time) {
  const auto listed = std::find(stalled_.begin(), stalled_.end(), model);
  if (stalled == (listed != stalled_.end())) {
    if (refused > 0) {
      WriteLogLine({{"event", "stalled_model_refused_work"},
                    {"model", model},
                    {"detail", absl::StrCat(refused, " queued rows answered UNAVAILABLE")}});
    }
    return;
  }
  if (stalled) {
    stalled_.push_back(model);
    WriteLogLine({{"event", "model_stalled"},
                  {"severity", "ERROR"},
                  {"model", model},
                  {"detail", absl::StrFormat("its running batch made no progress for %.1f s (engine.stall_seconds %g): "
                                             "health NOT_SERVING and work that waits for the batch refused "
                                             "(UNAVAILABLE; %d queued rows) until it moves",
                                             absl::ToDoubleSeconds(without_progress), absl::ToDoubleSeconds(stall_time),
                                             refused)}});
  } else {
    stalled_.erase(listed);
    WriteLogLine({{"event", "model_progressing"},
                  {"model", model},
                  {"detail", stalled_.empty() ? "no model is stalled now" : "other models are still stalled"}});
  }
  ApplyLocked();
}

}  // namespace attribution::server
