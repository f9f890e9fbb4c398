// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/continuation.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

// Token texts for a message: ["A", ":No"], each escaped so that the message stays one readable line.
std::string QuotedTokens(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, size_t begin, size_t end) {
  std::string out = "[";
  for (size_t i = begin; i < end && i < ids.size(); ++i) {
    absl::StrAppend(&out, i == begin ? "" : ", ", "\"",
                    absl::Utf8SafeCHexEscape(ToValidUtf8(tokenizer.TokenText(ids[i]))), "\"");
  }
  return out + "]";
}

}  // namespace

absl::StatusOr<Encoding> EncodeContinuation(const Tokenizer& tokenizer, const std::string& prompt_text,
                                            const std::string& text) {
  RETURN_IF_ERROR(CheckUtf8(text));
  ASSIGN_OR_RETURN(const Encoding alone, tokenizer.Encode(prompt_text, false));
  ASSIGN_OR_RETURN(const Encoding joint, tokenizer.Encode(prompt_text + text, false));
  const size_t n = alone.ids.size();
  const auto split = std::mismatch(alone.ids.begin(), alone.ids.end(), joint.ids.begin(), joint.ids.end());
  if (split.first != alone.ids.end()) {
    const size_t from = static_cast<size_t>(split.first - alone.ids.begin());
    const size_t context = from > 0 ? from - 1 : 0;
    return absl::InvalidArgumentError(
        absl::StrCat("the text does not start on a token boundary after the prompt: the prompt alone ends in tokens ",
                     QuotedTokens(tokenizer, alone.ids, context, n), " but prompt + target tokenize as ",
                     QuotedTokens(tokenizer, joint.ids, context, std::min(joint.ids.size(), n + 3)),
                     "; move the shared characters into one of them, or give token_ids"));
  }
  if (joint.ids.size() == n) {
    return absl::InvalidArgumentError(
        "the text adds no token after the prompt (set text with at least one token, or token_ids)");
  }
  Encoding out;
  out.ids.assign(joint.ids.begin() + static_cast<std::ptrdiff_t>(n), joint.ids.end());
  auto shifted = [&](size_t offset) { return offset > prompt_text.size() ? offset - prompt_text.size() : 0; };
  for (size_t i = n; i < joint.spans.size(); ++i) {
    out.spans.push_back({.begin = shifted(joint.spans[i].begin), .end = shifted(joint.spans[i].end)});
  }
  return out;
}

Continuation DecodeContinuation(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids,
                                const std::vector<int64_t>& ids) {
  constexpr size_t kContextTokens = 8;  // enough for any decoder's look-back (spaces, byte fallback)
  std::vector<int64_t> context;
  for (auto it = prompt_ids.rbegin(); it != prompt_ids.rend() && context.size() < kContextTokens; ++it) {
    if (!tokenizer.IsSpecial(*it)) context.insert(context.begin(), *it);
  }
  absl::StatusOr<std::string> context_text = tokenizer.Decode(context, true);
  // Without the context's text nothing could be cut off the joint decoding: decode the ids alone.
  if (!context_text.ok()) {
    context.clear();
    context_text = std::string();
  }
  std::vector<int64_t> sequence = context, alone;
  Continuation out;
  size_t previous = 0;
  for (int64_t id : ids) {
    sequence.push_back(id);
    alone.push_back(id);
    absl::StatusOr<std::string> text = tokenizer.Decode(sequence, true);
    if (text.ok() && text->compare(0, context_text->size(), *context_text) == 0) {
      text->erase(0, context_text->size());
    } else {
      text = tokenizer.Decode(alone, true);
    }
    if (!text.ok()) {
      // An id no decoding takes adds no text; left in, it would blank every later token's text too.
      sequence.pop_back();
      alone.pop_back();
      out.spans.push_back({.begin = previous, .end = previous});
      continue;
    }
    out.spans.push_back({.begin = std::min(previous, text->size()), .end = text->size()});
    previous = text->size();
    out.text = std::move(*text);
  }
  return out;
}

}  // namespace attribution::engine
