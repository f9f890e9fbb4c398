// SPDX-License-Identifier: Apache-2.0
#include "client/streamed_text.h"

#include "engine/common/utf8.h"

namespace attribution::client {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

bool StartsACharacter(unsigned char c) { return c >= 0xC2 && c <= 0xF4; }

}  // namespace

std::string StreamedText::Add(const Token& token) {
  if (token.special) return "";
  // A server that sends no token_bytes (older ones, proxies that rebuild events) still has its text shown.
  pending_ += token.bytes.empty() ? token.text : token.bytes;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    if (const size_t len = Utf8SequenceLength(pending_, i, /*subpart=*/false); len > 0) {
      out.append(pending_, i, len);
      i += len;
      continue;
    }
    const size_t subpart = Utf8SequenceLength(pending_, i, /*subpart=*/true);
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
  for (size_t i = 0; i < pending_.size(); i += Utf8SequenceLength(pending_, i, /*subpart=*/true)) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace attribution::client
