// SPDX-License-Identifier: Apache-2.0
#include "client/batch/untrusted_text.h"

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/palette.h"

namespace attribution::client::batch {

using nlohmann::json;

absl::StatusOr<json> ParseJson(absl::string_view text, const std::string& where) {
  std::string problem;                      // the first reason to refuse the text; then nothing more is kept
  std::vector<std::set<std::string>> keys;  // of each object open now, innermost last
  // Refusing a value (returning false) keeps it out of the DOM, and with it everything nested in it.
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    if (!problem.empty()) return false;
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) {
          problem = absl::StrCat("objects and arrays nested more than ", kMaxJsonDepth, " deep");
          return false;
        }
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        return true;
      case json::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second) {
          problem = absl::StrCat("key \"", parsed.get<std::string>(), "\" given twice in one object");
          return false;
        }
        return true;
      case json::parse_event_t::object_end:
        keys.pop_back();
        return true;
      case json::parse_event_t::array_end:
      case json::parse_event_t::value:
        return true;
    }
    return true;
  };
  json value = json::parse(text.begin(), text.end(), check, /*allow_exceptions=*/false);
  if (!problem.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", problem));
  if (value.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON"));
  return value;
}

std::string JsonText(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// The CLI's escaping: C0/C1 controls and DEL shown as escapes, and bytes that are not UTF-8 too (a lone
// 0x9b is CSI to an 8-bit terminal).
std::string TerminalSafe(absl::string_view text) { return Printable(text); }

}  // namespace attribution::client::batch
