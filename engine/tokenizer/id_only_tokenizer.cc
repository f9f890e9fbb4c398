// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/id_only_tokenizer.h"

#include "absl/strings/str_cat.h"

namespace attribution::engine {

IdOnlyTokenizer::IdOnlyTokenizer(std::string model_dir, int64_t vocab_size, SpecialTokens special)
    : model_dir_(std::move(model_dir)), vocab_size_(vocab_size), special_(special) {}

absl::StatusOr<Encoding> IdOnlyTokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  return absl::FailedPreconditionError(
      absl::StrCat("this model has no tokenizer (no tokenizer.json or tokenizer.model in ", model_dir_,
                   "), so it takes token_ids, not text"));
}

absl::StatusOr<std::string> IdOnlyTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string text;
  for (int64_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
    if (id >= vocab_size_) continue;  // no token, as in the other tokenizers
    const bool special = id == special_.bos || id == special_.eos || id == special_.pad || id == special_.unk;
    if (skip_special_tokens && special) continue;
    absl::StrAppend(&text, TokenText(id));
  }
  return text;
}

std::string IdOnlyTokenizer::TokenText(int64_t id) const { return absl::StrCat("<", id, ">"); }

}  // namespace attribution::engine
