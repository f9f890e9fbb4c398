// SPDX-License-Identifier: Apache-2.0
#include "client/streamed_text.h"

namespace attribution::client {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// How many bytes of s[i..n) are a well-formed character (0: none), or with `subpart`, the length of the
// maximal subpart of one (at least 1), as the server's text replaces them (Unicode's "maximal subpart"
// practice: overlong forms, surrogates and code points past U+10FFFF are not characters).
size_t Utf8Length(const std::string& text, size_t i, bool subpart) {
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

bool StartsACharacter(unsigned char c) { return c >= 0xC2 && c <= 0xF4; }

}  // namespace

std::string StreamedText::Add(const Token& token) {
  if (token.special) return "";
  // A server that sends no token_bytes (older ones, proxies that rebuild events) still has its text shown.
  pending_ += token.bytes.empty() ? token.text : token.bytes;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    if (const size_t len = Utf8Length(pending_, i, /*subpart=*/false); len > 0) {
      out.append(pending_, i, len);
      i += len;
      continue;
    }
    const size_t subpart = Utf8Length(pending_, i, /*subpart=*/true);
    // A character's first bytes at the end: the next token may complete it.
    if (i + subpart == pending_.size() && StartsACharacter(static_cast<unsigned char>(pending_[i]))) break;
    out += kReplacement;
    i += subpart;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamedText::Finish() {
  std::string out;
  for (size_t i = 0; i < pending_.size(); i += Utf8Length(pending_, i, /*subpart=*/true)) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace attribution::client
