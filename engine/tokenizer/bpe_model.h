// SPDX-License-Identifier: Apache-2.0
// The BPE model of a tokenizer.json: vocabulary, ranked merges, byte fallback and unknown tokens.
// Turns one pre-tokenized word into token ids with their byte spans inside the word.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

struct WordToken {
  int64_t id;
  size_t begin, end;  // bytes of the word this token covers
};

// Immutable after FromJson; thread-safe.
class BpeModel {
 public:
  // Token ids (vocab and added tokens) must lie below this: far above any real vocabulary (Gemma's
  // 262k), low enough that a table indexed by id stays small and merge keys do not collide.
  static constexpr int64_t kMaxTokenId = int64_t{1} << 24;

  static absl::StatusOr<BpeModel> FromJson(const nlohmann::json& model);

  std::vector<WordToken> Tokenize(const std::string& word) const;

  std::optional<int64_t> IdOf(const std::string& token) const;
  const std::vector<std::string>& tokens() const { return tokens_; }  // id -> token string
  bool byte_fallback() const { return byte_fallback_; }

 private:
  struct Merge {
    int64_t rank;
    int64_t merged_id;
  };
  std::vector<WordToken> MergeAll(std::vector<WordToken> symbols) const;
  static uint64_t PairKey(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> tokens_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int64_t> unk_id_;
  std::vector<std::optional<int64_t>> byte_ids_;  // "<0xXX>" ids, when byte_fallback
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

}  // namespace attribution::engine
