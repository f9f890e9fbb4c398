// SPDX-License-Identifier: Apache-2.0
#include "engine/common/bounded_json.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace attribution::engine {

namespace {

// The deepest nesting of objects and arrays in `text`, brackets inside strings passed over; for text that is
// not JSON, a number the parser's own error then supersedes. A scan of its own, not a parser callback:
// nlohmann's callback parser searches the parent for a discarded value as each object closes, time
// quadratic in an array of objects (4 s for a tokenizer.json of 100,000 added tokens).
int64_t Nesting(absl::string_view text) {
  int64_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, a quote included
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseBoundedJson(absl::string_view text, absl::string_view where,
                                                const nlohmann::json::parser_callback_t& also) {
  // Checked before parsing: the parser keeps its own stack on the heap, but the DOM it builds is copied,
  // printed and destroyed recursively.
  if (Nesting(text) > kMaxJsonNesting) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": objects and arrays nested more than ", kMaxJsonNesting, " deep"));
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end(), also);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
  }
}

const nlohmann::json& JsonMember(const nlohmann::json& object, const char* key) {
  static const nlohmann::json* const kNull = new nlohmann::json();
  if (!object.is_object()) return *kNull;
  const auto it = object.find(key);
  return it == object.end() ? *kNull : *it;
}

}  // namespace attribution::engine
