// SPDX-License-Identifier: Apache-2.0
#include "server/user_text.h"

#include "absl/strings/str_cat.h"

namespace attribution::server {

std::string AbbreviateUserText(absl::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t cut = max_bytes;
  // Back off over continuation bytes (10xxxxxx) so the prefix ends on a character boundary.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat(text.substr(0, cut), "\u2026(", text.size(), " bytes)");
}

std::string QuoteUserText(absl::string_view text, size_t max_bytes) {
  return absl::StrCat("\"", AbbreviateUserText(text, max_bytes), "\"");
}

}  // namespace attribution::server
