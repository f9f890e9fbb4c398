// SPDX-License-Identifier: Apache-2.0
// Text a job does not control (rows, results and shard files, the job file, servers' messages and token
// texts, ids) read and written without nlohmann's hazards: its DOM copies and destroys values
// recursively, so a value nested a million deep overflows the stack; it keeps the last of a repeated key
// silently; and its dump() throws on invalid UTF-8. Ids and messages shown on a terminal have their
// control characters escaped.
//
//   ASSIGN_OR_RETURN(nlohmann::json row, ParseJson(line, "rows.jsonl:3"));
//   out << JsonText(result) << "\n";
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attribution::client::batch {

// Deepest nesting of objects and arrays accepted (a row, a result line and a job file need 3).
inline constexpr int kMaxJsonDepth = 64;

// `text` as one JSON value. INVALID_ARGUMENT "where: ..." when it is not JSON, nests objects and arrays
// deeper than kMaxJsonDepth, or an object gives a key twice (naming the key). A refused value is never
// built beyond kMaxJsonDepth levels: nlohmann's parser itself is iterative.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, const std::string& where);

// value.dump() with invalid UTF-8 in strings replaced by U+FFFD, so a server's bytes cannot throw.
std::string JsonText(const nlohmann::json& value);

// `text` for a terminal: control characters (C0, DEL and the C1 range encoded in UTF-8, which terminals
// take as escape sequences) as \xNN or \u00NN escapes, everything else as it is.
std::string TerminalSafe(absl::string_view text);

}  // namespace attribution::client::batch
