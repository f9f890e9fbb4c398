// SPDX-License-Identifier: Apache-2.0
#include "client/result_json.h"

#include <nlohmann/json.hpp>

namespace attribution::client {
namespace {

// Invalid UTF-8 (a string field as a server sent it) becomes U+FFFD instead of an exception.
std::string Dump(const nlohmann::json& json) {
  return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string GenerationJson(const Generation& generation) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const Token& t : generation.tokens) tokens.push_back({{"id", t.id}, {"text", t.text}, {"log_prob", t.log_prob}});
  return Dump({{"text", generation.text}, {"tokens", tokens}, {"stopped", generation.stopped}});
}

}  // namespace attribution::client
