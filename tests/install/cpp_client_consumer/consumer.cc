// SPDX-License-Identifier: Apache-2.0
// The consumer's calls, in a shared library of its own (as a plugin or a Python extension would hold them): the
// models TARGET serves, then the prompt's token ids and the target's log-probability by Logprobs, one line each.
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "client/attribution_client.h"

namespace ac = attribution::client;

extern "C" int RunConsumer(const char* target, const char* prompt, const char* target_text) {
  absl::StatusOr<std::unique_ptr<ac::AttributionClient>> client = ac::AttributionClient::Connect({.target = target});
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::vector<ac::ModelInfo>> models = (*client)->ListModels();
  if (!models.ok()) {
    std::cerr << models.status() << "\n";
    return 1;
  }
  std::cout << "models";
  for (const ac::ModelInfo& model : *models) std::cout << " " << model.name;
  std::cout << "\n";
  absl::StatusOr<ac::Logprobs> scored = (*client)->GetLogprobs(
      {.model = models->front().name, .prompt = prompt, .target = target_text, .timeout = absl::Seconds(60)});
  if (!scored.ok()) {
    std::cerr << scored.status() << "\n";
    return 1;
  }
  std::cout << "prompt_ids";
  for (const ac::Token& token : scored->prompt_tokens) std::cout << " " << token.id;
  std::printf("\ntotal_log_prob %.9g\n", scored->total_log_prob);
  return 0;
}
