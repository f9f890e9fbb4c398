// SPDX-License-Identifier: Apache-2.0
#include "engine/common/bounded_json.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace attribution::engine {

absl::StatusOr<nlohmann::json> ParseBoundedJson(absl::string_view text, absl::string_view where,
                                                const nlohmann::json::parser_callback_t& also) {
  bool too_deep = false;
  // Refusing a value keeps it, and everything nested in it, out of the result; nlohmann's parser itself
  // keeps its stack on the heap, so reading on past the limit costs no recursion.
  const nlohmann::json::parser_callback_t check = [&](int depth, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    if (too_deep) return false;
    if ((event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start) &&
        depth >= kMaxJsonNesting) {
      too_deep = true;
      return false;
    }
    return also ? also(depth, event, parsed) : true;
  };
  nlohmann::json parsed;
  std::string error;
  try {
    parsed = nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& e) {
    error = e.what();
  }
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": objects and arrays nested more than ", kMaxJsonNesting, " deep"));
  }
  if (!error.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", error));
  return parsed;
}

const nlohmann::json& JsonMember(const nlohmann::json& object, const char* key) {
  static const nlohmann::json* const kNull = new nlohmann::json();
  if (!object.is_object()) return *kNull;
  const auto it = object.find(key);
  return it == object.end() ? *kNull : *it;
}

}  // namespace attribution::engine
