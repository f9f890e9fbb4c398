// SPDX-License-Identifier: Apache-2.0
#include "client/result_json.h"

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"

namespace attribution::client {
namespace {

// Invalid UTF-8 (a string field as a server sent it) becomes U+FFFD instead of an exception.
std::string Dump(const nlohmann::json& json) {
  return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json WithLogProb(const Token& t) {
  nlohmann::json out = TokenJson(t);
  out["log_prob"] = t.log_prob;
  return out;
}

}  // namespace

nlohmann::json StatsJson(const RunStats& s) {
  nlohmann::json out = {{"rows", s.rows},
                        {"forward_passes", s.forward_passes},
                        {"backward_passes", s.backward_passes},
                        {"queue_seconds", s.queue_seconds},
                        {"device_seconds", s.device_seconds},
                        {"wall_seconds", s.wall_seconds}};
  if (!s.server_build.empty()) out["server_build"] = s.server_build;
  return out;
}

nlohmann::json SettingsUsedJson(const SettingsUsed& s) {
  nlohmann::json out = nlohmann::json::object();
  if (s.n_steps) out["n_steps"] = *s.n_steps;
  if (s.rule) out["rule"] = *s.rule;
  if (s.n_samples) out["n_samples"] = *s.n_samples;
  if (s.stdev) out["stdev"] = *s.stdev;
  if (s.seed) out["seed"] = *s.seed;
  if (s.baseline) out["baseline"] = *s.baseline;
  return out;
}

nlohmann::json TokenJson(const Token& token) {
  return {{"id", token.id}, {"text", token.text}, {"bytes_hex", absl::BytesToHexString(token.bytes)}};
}

std::string GenerationJson(const Generation& generation) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const Token& t : generation.tokens) tokens.push_back(WithLogProb(t));
  return Dump({{"text", generation.text},
               {"text_bytes_hex", absl::BytesToHexString(generation.text_bytes)},
               {"tokens", tokens},
               {"stopped", generation.stopped},
               {"seed", generation.seed},
               {"model_digest", generation.model_digest},
               {"stats", StatsJson(generation.stats)}});
}

std::string LogprobsJson(const Logprobs& logprobs) {
  nlohmann::json prompt = nlohmann::json::array();
  for (const Token& t : logprobs.prompt_tokens) {
    nlohmann::json token = TokenJson(t);
    token.update({{"char_begin", t.char_begin}, {"char_end", t.char_end}, {"special", t.special}});
    prompt.push_back(token);
  }
  nlohmann::json target = nlohmann::json::array();
  for (const TokenLogprob& t : logprobs.target) {
    nlohmann::json top = nlohmann::json::array();
    for (const Token& alternative : t.top) top.push_back(WithLogProb(alternative));
    nlohmann::json token = WithLogProb(t.token);
    token["top"] = top;
    target.push_back(token);
  }
  return Dump({{"prompt_tokens", prompt},
               {"target", target},
               {"total_log_prob", logprobs.total_log_prob},
               {"model_digest", logprobs.model_digest},
               {"stats", StatsJson(logprobs.stats)}});
}

std::string ModelsJson(const std::vector<ModelInfo>& models) {
  nlohmann::json list = nlohmann::json::array();
  for (const ModelInfo& m : models) {
    list.push_back({{"name", m.name},
                    {"architecture", m.architecture},
                    {"dtype", m.dtype},
                    {"quantization", m.quantization},
                    {"quantization_block_size", m.quantization_block_size},
                    {"double_quantization", m.double_quantization},
                    {"quantization_from_checkpoint", m.quantization_from_checkpoint},
                    {"checkpoint_compute_dtype", m.checkpoint_compute_dtype},
                    {"device", m.device},
                    {"resident_weight_bytes", m.resident_weight_bytes},
                    {"weights_digest", m.weights_digest},
                    {"model_digest", m.model_digest},
                    {"vocab_size", m.vocab_size},
                    {"num_layers", m.num_layers},
                    {"hidden_size", m.hidden_size},
                    {"max_steps", m.max_steps},
                    {"max_samples", m.max_samples},
                    {"max_features", m.max_features},
                    {"max_exact_shapley_features", m.max_exact_shapley_features},
                    {"max_tokens", m.max_tokens},
                    {"max_new_tokens", m.max_new_tokens},
                    {"max_top_k", m.max_top_k},
                    {"max_choices", m.max_choices},
                    {"max_rows", m.max_rows},
                    {"max_pairs", m.max_pairs},
                    {"max_queued_tokens", m.max_queued_tokens},
                    {"max_queued_bytes", m.max_queued_bytes},
                    {"max_kv_cache_tokens", m.max_kv_cache_tokens}});
  }
  return Dump({{"models", list}});
}

}  // namespace attribution::client
