// SPDX-License-Identifier: Apache-2.0
// A Tokenizer over a SentencePiece model (tokenizer.model), through libsentencepiece.
#pragma once

#include <memory>
#include <string>

#include "engine/tokenizer/sentencepiece_backend.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // `add_bos` / `add_eos`: whether Encode(..., add_special_tokens=true) adds them (Llama: bos only).
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Create(const std::string& model_path, bool add_bos,
                                                                        bool add_eos);

  absl::StatusOr<Encoding> Encode(const std::string& text, bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  std::string TokenText(int64_t id) const override;
  int64_t vocab_size() const override;
  const SpecialTokens& special_tokens() const override { return special_; }
  // Control pieces (bos, eos, pad, user-defined controls); the unknown piece stands for real text.
  bool IsSpecial(int64_t id) const override;

 private:
  SentencePieceTokenizer() = default;
  std::unique_ptr<SentencePieceBackend> processor_;
  SpecialTokens special_;
  bool add_bos_ = true;
  bool add_eos_ = false;
};

}  // namespace attribution::engine
