// SPDX-License-Identifier: Apache-2.0
// Text that continues a prompt, as the model reads it: a target's tokens are those that follow the
// prompt's own when both are tokenized together, and generated ids read as the text they add after
// the prompt. Both keep the word-boundary space that SentencePiece / Metaspace tokenizers attach to a
// text's first word, which tokenizing or decoding the continuation alone would add or drop.
//
//   ASSIGN_OR_RETURN(Encoding target, EncodeContinuation(*tokenizer, "Q: Is it big? A:", " No"));  // "▁No"
//   Continuation text = DecodeContinuation(*tokenizer, prompt_ids, generated_ids);               // " No"
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

// The tokens of `prompt_text + text` after those of `prompt_text` (no special tokens), with spans
// into `text`. INVALID_ARGUMENT when `text` is not valid UTF-8, adds no token, or does not start on a
// token boundary (the prompt's own tokens change), the latter showing both tokenizations.
absl::StatusOr<Encoding> EncodeContinuation(const Tokenizer& tokenizer, const std::string& prompt_text,
                                            const std::string& text);

struct Continuation {
  std::string text;              // exact bytes (possibly ending inside a character)
  std::vector<TokenSpan> spans;  // each id's bytes in `text`; special tokens and ids the tokenizer
                                 // has no token for get empty spans
};

// `ids` decoded after the prompt's last words (special tokens skipped). Where the prompt's text is no
// prefix of the whole (a character split across the boundary), the ids decode alone.
Continuation DecodeContinuation(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids,
                                const std::vector<int64_t>& ids);

// `bytes` decoded from `ids` (each id's in `spans`, as DecodeContinuation gives them) as text, the way the
// tokenizer's own decoder writes it: each ill-formed UTF-8 subsequence replaced by U+FFFD (ToValidUtf8), except
// that a run of byte-fallback tokens (IsFallbackByte; skipped special tokens between them do not end it) whose
// bytes are not UTF-8 is written as ByteRunText says (tokenizer.json's ByteFallback decoder: "7\x9D" from
// "<0x37><0x9D>" is two U+FFFD; libsentencepiece: "7" and one).
std::string DecodedText(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, const std::string& bytes,
                        const std::vector<TokenSpan>& spans);

// DecodeContinuation a token at a time, for a caller that looks at the text after each new token
// (stop strings): Add costs one decoding, where DecodeContinuation of every prefix again would cost
// one per token so far each time (cubic in the generation's length). Not thread-safe; the tokenizer
// must outlive it.
class ContinuationDecoder {
 public:
  ContinuationDecoder(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids);
  // Appends one id; continuation() is then DecodeContinuation(prompt_ids, every id added so far).
  void Add(int64_t id);
  size_t size() const { return out_.spans.size(); }  // ids added
  const Continuation& continuation() const { return out_; }
  Continuation Take() && { return std::move(out_); }

 private:
  const Tokenizer& tokenizer_;
  std::string context_text_;       // the prompt's last words, decoded
  std::vector<int64_t> sequence_;  // those words' ids, then the ids that decode
  std::vector<int64_t> alone_;     // the ids that decode, without the prompt's words
  Continuation out_;
};

}  // namespace attribution::engine
