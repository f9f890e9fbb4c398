// SPDX-License-Identifier: Apache-2.0
// Text being normalized and split by a tokenizer.json pipeline, remembering for every byte which byte
// of the original input it came from, so tokens can be mapped back to spans of the user's text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

struct NormalizedText {
  std::string text;            // UTF-8
  std::vector<size_t> origin;  // origin[i]: offset in the original input of text[i]
  size_t origin_end = 0;       // offset in the original input just past this piece

  static NormalizedText FromOriginal(const std::string& text, size_t offset);
  // Appends `bytes`, all attributed to original offset `from`.
  void Append(const std::string& bytes, size_t from);
  // The sub-range [begin, end) of this text, with its origins.
  NormalizedText Slice(size_t begin, size_t end) const;
  // Original offset of normalized byte `i` (origin_end when i == size).
  size_t OriginAt(size_t i) const { return i < origin.size() ? origin[i] : origin_end; }
};

// One step of a tokenizer.json "normalizer" (NFC, NFKC, NFD, NFKD, Lowercase, Prepend, Replace,
// Strip, Sequence).
class TextNormalizer {
 public:
  virtual ~TextNormalizer() = default;
  static absl::StatusOr<std::unique_ptr<TextNormalizer>> FromJson(const nlohmann::json& spec);
  virtual NormalizedText Apply(const NormalizedText& in) const = 0;
};

// How much regex matching encoding one text may do, in steps of ICU's match engine (10,000 operations each):
// 1,000 + bytes / 10, shared by every pattern the pre-tokenizer runs on every piece of the text, so a pattern
// that backtracks without bound stops there, however the text is cut (a step takes about 0.15 ms on a 2-core
// VM: at most about 0.15 s + bytes / 70,000 s). At least 86 times what GPT-2's, Llama 3's and Qwen2's patterns
// take on 300 KB texts made to be slow for them (bench/RESULTS.md). Set for the calling thread while it lives.
class RegexBudgetScope {
 public:
  explicit RegexBudgetScope(size_t text_bytes);
  ~RegexBudgetScope();
  RegexBudgetScope(const RegexBudgetScope&) = delete;
  RegexBudgetScope& operator=(const RegexBudgetScope&) = delete;

  static int64_t StepsFor(size_t text_bytes) { return 1000 + static_cast<int64_t>(text_bytes / 10); }
  // The steps left to the innermost scope of this thread; nullptr outside any.
  static int64_t* Current();

 private:
  int64_t remaining_;
  int64_t* previous_;
};

// One step of a tokenizer.json "pre_tokenizer" (ByteLevel, Split, Metaspace, Digits, Whitespace,
// WhitespaceSplit, Sequence): splits pieces into smaller pieces (and may rewrite them).
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& spec);
  // `first` is true for the piece that starts the input (Metaspace's prepend_scheme "first").
  virtual absl::Status Split(const NormalizedText& piece, bool first, std::vector<NormalizedText>& out) const = 0;
  // True when the pipeline maps bytes to GPT-2's printable byte alphabet (decoding must undo it).
  virtual bool byte_level() const { return false; }
  // Whether it puts a space (or "▁") before the text (ByteLevel's add_prefix_space, Metaspace's prepend
  // scheme); nullopt when no step of it says.
  virtual std::optional<bool> adds_prefix_space() const { return std::nullopt; }
};

// GPT-2's reversible byte -> printable character map, as UTF-8 strings, and its inverse.
const std::vector<std::string>& ByteToUnicode();
// Appends the byte a byte-level character stands for; false when `ch` is not in the alphabet.
bool UnicodeToByte(const std::string& ch, std::string& out);

// Length in bytes of the UTF-8 character starting with byte `lead` (1 for invalid lead bytes).
size_t Utf8Length(unsigned char lead);
// The code point of the UTF-8 character at text[i] (ICU's UChar32); negative for a malformed one.
int32_t CodePointAt(const std::string& text, size_t i);

}  // namespace attribution::engine
