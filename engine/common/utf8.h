// SPDX-License-Identifier: Apache-2.0
// UTF-8 sequence lengths, as Unicode's "maximal subpart" practice reads them: shared by the tokenizer (which
// makes token text valid UTF-8) and the client (which joins streamed token bytes into text). Header-only, so a
// client links nothing of the engine for it.
#pragma once

#include <cstddef>
#include <string_view>

namespace attribution {

// How many bytes of text[i..] are a well-formed character (0: none), or with `subpart`, the length of the
// maximal subpart of one (at least 1): the lead byte and the continuation bytes that can still follow it.
// The ranges of the second byte exclude overlong forms, surrogates and code points past U+10FFFF.
inline size_t Utf8SequenceLength(std::string_view text, size_t i, bool subpart) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  const unsigned char c = s[i];
  if (c < 0x80) return 1;
  size_t len = 0;
  unsigned char low = 0x80, high = 0xBF;  // of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, low = c == 0xE0 ? 0xA0 : 0x80, high = c == 0xED ? 0x9F : 0xBF;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, low = c == 0xF0 ? 0x90 : 0x80, high = c == 0xF4 ? 0x8F : 0xBF;
  }
  if (len == 0) return subpart ? 1 : 0;
  size_t k = 1;
  for (; k < len && i + k < n; ++k) {
    const unsigned char b = s[i + k];
    if (k == 1 ? (b < low || b > high) : (b & 0xC0) != 0x80) break;
  }
  if (k == len) return len;
  return subpart ? k : 0;
}

}  // namespace attribution
