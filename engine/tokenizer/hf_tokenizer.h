// SPDX-License-Identifier: Apache-2.0
// A Tokenizer over a Hugging Face tokenizer.json with a BPE model: added/special tokens, normalizer,
// pre-tokenizer (byte-level as GPT-2 / Llama-3 / Qwen2, or Metaspace as Llama-2 / Mistral), template
// post-processing and decoding. Written here because Debian ships no C++ library for the format.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/normalized_text.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

class HfTokenizer : public Tokenizer {
 public:
  // `tokenizer_config` is tokenizer_config.json (or null): it names bos/eos/pad/unk tokens.
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Create(const nlohmann::json& tokenizer_json,
                                                             const nlohmann::json& tokenizer_config);

  absl::StatusOr<Encoding> Encode(const std::string& text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  std::string TokenText(int64_t id) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  const SpecialTokens& special_tokens() const override { return special_; }
  bool IsSpecial(int64_t id) const override;
  bool IsFallbackByte(int64_t id) const override;
  // Whether its pre-tokenizer puts a space before the text (PreTokenizer::adds_prefix_space; false without one).
  bool adds_prefix_space() const {
    return pre_tokenizer_ != nullptr && pre_tokenizer_->adds_prefix_space().value_or(false);
  }

 private:
  // What decoding does with the space put before the first word: Strip takes one space off the fused text;
  // Metaspace drops every "▁" of the first token it decodes.
  enum class LeadingSpaceRule { kKeep, kStripOne, kDropFirstTokenMarks };
  static LeadingSpaceRule DecodedLeadingSpaceRule(const nlohmann::json& decoder);

  HfTokenizer() = default;
  absl::Status ParsePostProcessor(const nlohmann::json& spec);
  std::optional<int64_t> IdOf(const std::string& token) const;
  // Whether `id` names a token: an added token or a vocab entry (a vocabulary may have gaps).
  bool HasToken(int64_t id) const;
  // Tokenizes text[begin, end), a stretch between tokens without "normalized": normalizes it, then splits
  // it on the tokens with "normalized".
  absl::Status EncodeSegment(const std::string& text, size_t begin, size_t end, Encoding& out) const;
  // Pre-tokenizes and tokenizes a normalized piece between added tokens; `first`: it starts the input.
  absl::Status EncodeNormalized(const NormalizedText& piece, bool first, Encoding& out) const;
  std::string DecodeTokens(const std::vector<int64_t>& ids, bool skip_special, bool strip_leading_space) const;

  BpeModel model_;
  AddedTokens added_;
  std::unique_ptr<TextNormalizer> normalizer_;    // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;   // may be null
  std::vector<int64_t> prefix_ids_, suffix_ids_;  // template tokens around a single sequence
  bool byte_level_ = false;
  LeadingSpaceRule leading_space_rule_ = LeadingSpaceRule::kKeep;
  int64_t vocab_size_ = 0;
  SpecialTokens special_;
};

}  // namespace attribution::engine
