// SPDX-License-Identifier: Apache-2.0
// The results of Generate, Logprobs and ListModels as JSON text: what `attribution-cli --json` prints
// for them (attributions: AttributionJson in heatmap.h; components: ComponentJson). Text that is not
// valid UTF-8 (a server's protobuf strings are not checked on receipt) is written with U+FFFD in
// place of the bad bytes.
//
//   std::cout << GenerationJson(*generation) << "\n";
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "client/attribution_client.h"

namespace attribution::client {

// {"id", "text", "bytes_hex"}: a token's exact bytes, in hex, beside its text, where part of a UTF-8 character
// reads as U+FFFD (four tokens of one emoji all read "\ufffd").
nlohmann::json TokenJson(const Token& token);

// {"rows", "forward_passes", "backward_passes", "queue_seconds", "device_seconds", "wall_seconds", "server_build"}
// (server_build when the server said it).
nlohmann::json StatsJson(const RunStats& stats);

// The settings set, by AttributeOptions' names: {"n_steps", "rule", "n_samples", "stdev", "seed", "baseline"}.
nlohmann::json SettingsUsedJson(const SettingsUsed& settings);

// {"text", "text_bytes_hex", "tokens": [{"id", "text", "bytes_hex", "log_prob"}], "stopped", "seed", "stats"}.
std::string GenerationJson(const Generation& generation);

// {"prompt_tokens": [{"id", "text", "bytes_hex", "char_begin", "char_end", "special"}], "target": [{"id", "text",
// "bytes_hex", "log_prob", "top": [{"id", "text", "bytes_hex", "log_prob"}]}], "total_log_prob", "stats"}.
std::string LogprobsJson(const Logprobs& logprobs);

// {"models": [...]}: every ModelInfo field by its name, the per-request limits (max_steps, ...) among them.
std::string ModelsJson(const std::vector<ModelInfo>& models);

}  // namespace attribution::client
