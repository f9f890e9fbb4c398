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

std::string DecodedText(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, const std::string& bytes,
                        const std::vector<TokenSpan>& spans) {
  const size_t n = std::min(ids.size(), spans.size());
  std::string text;
  size_t copied = 0;  // bytes before it are in `text`
  for (size_t i = 0; i < n;) {
    if (!tokenizer.IsFallbackByte(ids[i])) {
      ++i;
      continue;
    }
    size_t begin = spans[i].begin, end = spans[i].end, tokens = 0;
    for (; i < n && (tokenizer.IsFallbackByte(ids[i]) || tokenizer.SkippedInText(ids[i])); ++i) {
      if (!tokenizer.IsFallbackByte(ids[i]) || spans[i].begin == spans[i].end) continue;
      end = spans[i].end;
      ++tokens;
    }
    begin = std::min(begin, bytes.size());
    end = std::min(std::max(end, begin), bytes.size());
    if (begin < copied || CheckUtf8(bytes.substr(begin, end - begin)).ok()) continue;
    text += ToValidUtf8(bytes.substr(copied, begin - copied));
    text += tokenizer.ByteRunText(bytes.substr(begin, end - begin), tokens);
    copied = end;
  }
  return text + ToValidUtf8(bytes.substr(copied));
}

ContinuationDecoder::ContinuationDecoder(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids)
    : tokenizer_(tokenizer) {
  constexpr size_t kContextTokens = 8;  // enough for any decoder's look-back (spaces, byte fallback)
  for (auto it = prompt_ids.rbegin(); it != prompt_ids.rend() && sequence_.size() < kContextTokens; ++it) {
    if (!tokenizer.IsSpecial(*it)) sequence_.insert(sequence_.begin(), *it);
  }
  absl::StatusOr<std::string> context_text = tokenizer.Decode(sequence_, true);
  // Without the context's text nothing could be cut off the joint decoding: decode the ids alone.
  if (context_text.ok()) {
    context_text_ = std::move(*context_text);
  } else {
    sequence_.clear();
  }
}

void ContinuationDecoder::Add(int64_t id) {
  sequence_.push_back(id);
  alone_.push_back(id);
  absl::StatusOr<std::string> text = tokenizer_.Decode(sequence_, true);
  if (text.ok() && text->compare(0, context_text_.size(), context_text_) == 0) {
    text->erase(0, context_text_.size());
  } else {
    text = tokenizer_.Decode(alone_, true);
  }
  const size_t previous = out_.spans.empty() ? 0 : out_.spans.back().end;
  if (!text.ok()) {
    // An id no decoding takes adds no text; left in, it would blank every later token's text too.
    sequence_.pop_back();
    alone_.pop_back();
    out_.spans.push_back({.begin = previous, .end = previous});
    return;
  }
  out_.spans.push_back({.begin = std::min(previous, text->size()), .end = text->size()});
  out_.text = std::move(*text);
}

Continuation DecodeContinuation(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids,
                                const std::vector<int64_t>& ids) {
  ContinuationDecoder decoder(tokenizer, prompt_ids);
  for (int64_t id : ids) decoder.Add(id);
  return std::move(decoder).Take();
}

}  // namespace attribution::engine
