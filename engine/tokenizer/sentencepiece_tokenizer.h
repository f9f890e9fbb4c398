// SPDX-License-Identifier: Apache-2.0
// A Tokenizer over a SentencePiece model (tokenizer.model), through libsentencepiece. Special and
// added tokens named by the model directory are found in the text first, as transformers finds them;
// the text between them is encoded by SentencePiece, each segment on its own.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/sentencepiece_backend.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // `add_bos` / `add_eos`: whether Encode(..., add_special_tokens=true) adds them (Llama: bos only).
  // `tokenizer_config` (tokenizer_config.json) and `special_tokens_map` (special_tokens_map.json) may be
  // null; they name the special tokens (bos_token, ..., additional_special_tokens) and added tokens
  // (added_tokens_decoder) that text is split on. A role neither names is the model's own piece for it.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Create(const std::string& model_path, bool add_bos,
                                                                        bool add_eos,
                                                                        const nlohmann::json& tokenizer_config,
                                                                        const nlohmann::json& special_tokens_map);

  absl::StatusOr<Encoding> Encode(const std::string& text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  std::string TokenText(int64_t id) const override;
  int64_t vocab_size() const override;
  const SpecialTokens& special_tokens() const override { return special_; }
  // Control pieces (bos, eos, pad, user-defined controls) and added tokens marked special; the unknown
  // piece stands for real text.
  bool IsSpecial(int64_t id) const override;
  bool SkippedInText(int64_t id) const override;
  bool IsFallbackByte(int64_t id) const override;
  // libsentencepiece writes U+FFFD for each byte that starts no character.
  std::string ByteRunText(const std::string& bytes, size_t tokens) const override;

 private:
  SentencePieceTokenizer() = default;
  absl::Status ReadAddedTokens(const nlohmann::json& config, const nlohmann::json& special_tokens_map);
  // An added token the model has no piece for (its id is past the model's pieces).
  const AddedToken* BeyondPieces(int64_t id) const;
  // The bytes `pieces` stand for, where libsentencepiece `decoded` them with byte pieces that are not UTF-8
  // replaced; else `decoded`.
  std::string ExactBytes(const std::vector<int>& pieces, const std::string& decoded) const;
  // Whether libsentencepiece, decoding `pieces` alone, drops the space of their first word-boundary mark.
  bool DropsLeadingMark(const std::vector<int>& pieces) const;

  std::unique_ptr<SentencePieceBackend> processor_;
  AddedTokens added_;
  SpecialTokens special_;
  int64_t pieces_ = 0;      // the model's piece count
  int64_t vocab_size_ = 0;  // with added tokens past the pieces
  bool add_bos_ = true;
  bool add_eos_ = false;
};

}  // namespace attribution::engine
