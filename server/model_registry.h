// SPDX-License-Identifier: Apache-2.0
// The models a server holds: each with its tokenizer, its own batching engine (one executor thread
// per model) and an attributor over that engine. Built once at startup; read-only afterwards.
//
//   ASSIGN_OR_RETURN(auto registry, ModelRegistry::Load(config.models));
//   ASSIGN_OR_RETURN(const ServedModel* model, registry->Find("tiny"));
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/attribution/attributor.h"
#include "engine/scheduler/batching_engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/server_config.h"

namespace attribution::server {

// Thread-safe: every member is immutable or itself thread-safe (engine, attributor).
struct ServedModel {
  ModelSpec spec;
  std::shared_ptr<const engine::CausalLM> model;
  std::shared_ptr<const engine::Tokenizer> tokenizer;
  std::unique_ptr<engine::BatchingEngine> engine;
  std::unique_ptr<engine::Attributor> attributor;
  // SHA-256 of the files the model was loaded from (model_digest.h), and the seconds computing it took.
  std::string weights_digest;
  std::string model_digest;  // of the weights as loaded (dtype, quantization): every answer carries it
  double digest_seconds = 0;
};

class ModelRegistry {
 public:
  // Loads every model (failing on the first that cannot load, naming it and its path), calling `before_each`
  // (when given) as each begins.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(
      const std::vector<ModelSpec>& specs, const std::function<void(const ModelSpec&)>& before_each = nullptr);
  // NOT_FOUND naming the known models.
  absl::StatusOr<const ServedModel*> Find(const std::string& name) const;
  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }
  // Stops every engine: queued rows are answered UNAVAILABLE, running batches finish.
  void Shutdown();

 private:
  std::vector<std::unique_ptr<ServedModel>> models_;
};

}  // namespace attribution::server
