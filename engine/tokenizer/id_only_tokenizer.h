// SPDX-License-Identifier: Apache-2.0
// The tokenizer of a model directory that has no tokenizer.json or tokenizer.model: it serves token
// ids only. Text cannot be encoded (FAILED_PRECONDITION naming the missing files), and a token shows
// as its id in angle brackets ("<42>"), so responses stay readable.
//
//   IdOnlyTokenizer tokenizer("/models/bare", config.vocab_size, {.bos = 1, .eos = 2});
//   tokenizer.TokenText(42);  // "<42>"
#pragma once

#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace attribution::engine {

// Immutable; every method may be called concurrently.
class IdOnlyTokenizer : public Tokenizer {
 public:
  // `special`: the ids the model's config names (bos, eos, pad, unk), for baselines and stopping.
  IdOnlyTokenizer(std::string model_dir, int64_t vocab_size, SpecialTokens special);

  absl::StatusOr<Encoding> Encode(const std::string& text, bool add_special_tokens) const override;
  // The tokens' texts concatenated, special tokens left out when asked.
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  std::string TokenText(int64_t id) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  const SpecialTokens& special_tokens() const override { return special_; }

 private:
  std::string model_dir_;
  int64_t vocab_size_;
  SpecialTokens special_;
};

}  // namespace attribution::engine
