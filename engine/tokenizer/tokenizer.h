// SPDX-License-Identifier: Apache-2.0
// Text <-> token ids for a model directory: SentencePiece (tokenizer.model) or Hugging Face
// tokenizer.json (BPE, byte-level or Metaspace). Encodings carry each token's byte span in the input,
// so responses can show readable tokens.
//
//   ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load("/models/tiny"));
//   ASSIGN_OR_RETURN(Encoding enc, tokenizer->Encode("Is it true?", /*add_special_tokens=*/true));
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

struct TokenSpan {
  size_t begin = 0;  // byte offsets into the encoded text; special tokens added by the tokenizer
  size_t end = 0;    // (bos, template tokens) have an empty span at their insertion point
};

struct Encoding {
  std::vector<int64_t> ids;
  std::vector<TokenSpan> spans;
};

struct SpecialTokens {
  std::optional<int64_t> bos, eos, pad, unk;
};

// Immutable after Load; every method may be called concurrently.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Prefers tokenizer.json, then tokenizer.model; reads tokenizer_config.json (and for tokenizer.model
  // special_tokens_map.json) where present. Either kind reads the strings of its added and special
  // tokens in text as those tokens ("Hi</s>" ends in eos), as transformers does.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);

  // Fails on text that is not valid UTF-8 (INVALID_ARGUMENT naming the byte offset).
  virtual absl::StatusOr<Encoding> Encode(const std::string& text, bool add_special_tokens) const = 0;
  // Ids the tokenizer has no token for decode to nothing, as in Hugging Face's decode: a model's
  // embedding table often has more rows than its tokenizer has tokens (Qwen2: 151936 rows, 151665
  // tokens), and a model may generate one of those ids. Fails only on a negative id.
  virtual absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const = 0;
  // The readable text of one token (as Decode of it alone, special tokens shown by name).
  virtual std::string TokenText(int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual const SpecialTokens& special_tokens() const = 0;
  // Whether `id` is a special token: one the tokenizer adds (bos, eos, template tokens) or marks
  // special (pad, control and chat-template tokens). Attribution keeps these out of the features by
  // default. The default answers for bos, eos and pad.
  virtual bool IsSpecial(int64_t id) const;
  // Whether Decode with skip_special_tokens leaves `id` out: the special tokens, and for a SentencePiece
  // model also its unknown piece (a feature in a prompt, not special, but left out of generated text).
  virtual bool SkippedInText(int64_t id) const { return IsSpecial(id); }
  // Whether `id` is a byte-fallback token ("<0x9D>" in Llama's and Mistral's vocabularies): a run of them that
  // is not UTF-8 decodes to text as ByteRunText says (see DecodedText).
  virtual bool IsFallbackByte(int64_t id) const { return false; }
  // The text of such a run, `bytes` from `tokens` tokens: tokenizer.json's ByteFallback decoder writes one
  // U+FFFD per token, valid bytes among them too.
  virtual std::string ByteRunText(const std::string& bytes, size_t tokens) const;

  // The most bytes of text any one token stands for (the longest TokenText), found on first use: a text
  // longer than this many bytes per token cannot fit a given number of tokens.
  int64_t longest_token_bytes() const;

  // What the tokenizer's files ask that it does not do (callers warn): tokenizer_config.json options that
  // transformers 5 applies by rebuilding the tokenizer from its class.
  const std::vector<std::string>& load_warnings() const { return load_warnings_; }

 private:
  std::vector<std::string> load_warnings_;
  mutable std::once_flag longest_token_once_;
  mutable int64_t longest_token_bytes_ = 0;
};

// The byte a byte-fallback piece ("<0xE2>", as SentencePiece and tokenizer.json BPE name them) stands for;
// nullopt for any other piece.
std::optional<char> BytePieceValue(const std::string& piece);

// Appends the bytes a SentencePiece-style piece (or a Metaspace model's token) stands for: its text, each "▁"
// (U+2581, the space marker) a space.
void AppendPieceBytes(const std::string& piece, std::string& bytes);

// INVALID_ARGUMENT naming the first offending byte when `text` is not valid UTF-8.
absl::Status CheckUtf8(const std::string& text);

// About the most bytes valid UTF-8 `text` can take once a tokenizer has normalized it: its own or its NFKD form's
// (compatibility decomposition expands about the most of the Unicode normalizations, at most 11 bytes per byte:
// U+FDFA's 3 bytes are 33).
int64_t NormalizedBytesBound(const std::string& text);

// `bytes` with each ill-formed UTF-8 subsequence replaced by U+FFFD, one per maximal subpart (as
// Python's errors="replace", which Hugging Face's decode uses), so it fits a protobuf string field. A
// byte-level BPE token can hold part of a character: its text shows U+FFFD, its bytes travel apart.
std::string ToValidUtf8(const std::string& bytes);

}  // namespace attribution::engine
