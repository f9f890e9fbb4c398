// SPDX-License-Identifier: Apache-2.0
// A double in a message as the shortest text that reads back as the same double. absl::StrCat rounds to
// six significant digits, so a refused 1.0000001 read "completeness_tolerance = 1 is outside [0, 1]".
// Header-only, so the clients use it too without linking the engine.
#pragma once

#include <charconv>
#include <string>

namespace attribution {

inline std::string ExactNumber(double value) {
  char text[32];
  const std::to_chars_result end = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, end.ptr);
}

}  // namespace attribution
