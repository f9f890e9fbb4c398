// SPDX-License-Identifier: Apache-2.0
// What the standard health service advertises, and the watch that keeps it true while the server runs:
// SERVING once every model has loaded, while no model's engine is stalled (a batch that made no progress
// for its model's engine.stall_seconds: a hung device answers nothing, and without this it still looked
// healthy), and never again once draining began. Readiness probes then route calls to other replicas,
// and a liveness probe restarts a replica whose device stays hung; a model that moves again (a batch
// that was only slow) makes the server SERVING again. While stalled, the watch also has the engine refuse
// the work queued behind the batch (BatchingEngine::RefuseQueuedWorkWhileStalled): a client that keeps its
// connection to this replica (round robin over DNS does) would otherwise wait for its deadline, where
// UNAVAILABLE makes it retry on another. Each change is logged (model_stalled, an ERROR line, and
// model_progressing).
//
//   ServingHealth health(server->GetHealthCheckService(), service_name);  // NOT_SERVING
//   health.Serve(models);  // SERVING, and the watch starts
//   health.StartDraining();  // NOT_SERVING for good; stalled models' queued work is still refused
//   health.Stop();  // the watch stops, before the models do
#pragma once
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"

namespace attribution::server {

class ModelRegistry;

class ServingHealth {
 public:
  // Advertises NOT_SERVING for the whole server ("") and for `service_name`.
  ServingHealth(grpc::HealthCheckServiceInterface* health, std::string service_name);
  ~ServingHealth();  // as Stop
  ServingHealth(const ServingHealth&) = delete;
  ServingHealth& operator=(const ServingHealth&) = delete;

  // Every model has loaded: SERVING, and from now on every model's engine is checked about four times
  // per its stall time (at least every second).
  void Serve(const ModelRegistry& models);
  // NOT_SERVING for good. The watch goes on: the calls a stalled model holds could not finish in the drain.
  void StartDraining();
  // As StartDraining, and the watch stops (returns once it has: `models` may go away then). Idempotent.
  void Stop();

 private:
  void Watch(const ModelRegistry& models, absl::Duration period);
  // Logs and advertises a change of `model`'s stall.
  void UpdateLocked(const std::string& model, bool stalled, int64_t refused, absl::Duration without_progress,
                    absl::Duration stall_time);
  void ApplyLocked();

  grpc::HealthCheckServiceInterface* const health_;
  const std::string service_name_;
  std::mutex mu_;
  std::condition_variable stop_changed_;
  bool loaded_ = false, draining_ = false, stopping_ = false;
  std::vector<std::string> stalled_;  // names of the models stalled now
  std::thread watch_;
};

}  // namespace attribution::server
