// SPDX-License-Identifier: Apache-2.0
// JSON from files this project did not write (a model's config, tokenizer and weight headers, the server's
// config), parsed with its nesting bounded. Its readers walk it recursively (copies, dumps into messages),
// and 100,000 nested arrays in a config.json overflowed the server's stack at startup; the tokenizers
// library refuses such files too (serde's recursion limit, 128).
//
//   ASSIGN_OR_RETURN(nlohmann::json config, ParseBoundedJson(text, path));
#pragma once

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attribution::engine {

inline constexpr int kMaxJsonNesting = 128;

// The parsed text; INVALID_ARGUMENT naming `where` when it is not JSON (with the parser's line and column, or
// a number out of range) or when its objects and arrays nest deeper than kMaxJsonNesting.
// `also`, when given, is nlohmann's parser callback (a check of repeated keys).
absl::StatusOr<nlohmann::json> ParseBoundedJson(absl::string_view text, absl::string_view where,
                                                const nlohmann::json::parser_callback_t& also = nullptr);

// `object`'s member `key` by reference, or null when it has none (or is no object). json::value copies
// the member: a spec that nests specs (a tokenizer's Sequence of Sequences), read with it at every level,
// was copied once per level, memory quadratic in its depth (2 GB for a 66 KB tokenizer.json).
const nlohmann::json& JsonMember(const nlohmann::json& object, const char* key);

}  // namespace attribution::engine
