// SPDX-License-Identifier: Apache-2.0
#include "client/streamed_text.h"

#include <algorithm>
#include <utility>

#include "engine/common/utf8.h"

namespace attribution::client {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

bool StartsACharacter(unsigned char c) { return c >= 0xC2 && c <= 0xF4; }

}  // namespace

StreamedText::StreamedText(std::vector<std::string> stop) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

std::string StreamedText::Add(const Token& token) {
  if (token.special || stopped_) return "";
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
  return Release(std::move(out));
}

// A stop string cannot begin in text already shown: text that might begin one is held until it cannot.
std::string StreamedText::Release(std::string text) {
  held_ += text;
  size_t stop_at = std::string::npos;
  for (const std::string& s : stop_) stop_at = std::min(stop_at, held_.find(s));
  if (stop_at != std::string::npos) {
    stopped_ = true;
    std::string shown = held_.substr(0, stop_at);
    held_.clear();
    return shown;
  }
  size_t keep = 0;  // the longest end of held_ that a stop string starts with
  for (const std::string& s : stop_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string shown = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return shown;
}

std::string StreamedText::Finish() {
  if (stopped_) return "";
  std::string out = std::exchange(held_, "");
  for (size_t i = 0; i < pending_.size(); i += Utf8SequenceLength(pending_, i, /*subpart=*/true)) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace attribution::client
