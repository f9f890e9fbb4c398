// SPDX-License-Identifier: Apache-2.0
// An enum parsed by the names its Name function gives, so that function's switch (which fails to compile
// when a value is added and not named) stays the enum's one table of names.
//
//   absl::StatusOr<PatchDirection> ParsePatchDirection(const std::string& name) {
//     return ParseByName("direction", name, kAllPatchDirections, &PatchDirectionName);
//   }
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace attribution::engine {

// INVALID_ARGUMENT `what "name" is not supported (every name)` for a name no value of `all` has.
template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseByName(absl::string_view what, absl::string_view name, const Enum (&all)[N],
                                 const char* (*name_of)(Enum)) {
  std::vector<absl::string_view> names;
  for (Enum value : all) {
    if (name == name_of(value)) return value;
    names.push_back(name_of(value));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " \"", name, "\" is not supported (", absl::StrJoin(names, ", "), ")"));
}

}  // namespace attribution::engine
