// SPDX-License-Identifier: Apache-2.0
// Added and special tokens found in text before the model tokenizes it, as the `tokenizers` library
// and transformers find them: scanning from the left, at each position the longest token that starts
// there; a token with lstrip / rstrip takes the whitespace on its left / right with it. The text between
// two tokens is a segment the model tokenizes on its own. Shared by tokenizer.json (its "added_tokens")
// and tokenizer.model (the special tokens and "added_tokens_decoder" of tokenizer_config.json).
//
//   AddedTokens added({{.id = 2, .content = "</s>", .special = true}});
//   added.Split("Hi</s>", segment, token);  // segment(0, 2), then token(</s>, 2, 6)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace attribution::engine {

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool special = false, lstrip = false, rstrip = false;
};

// Immutable after construction; thread-safe.
class AddedTokens {
 public:
  AddedTokens() = default;
  explicit AddedTokens(std::vector<AddedToken> tokens);

  // The token with `id` (of several, the last in matching order), or null.
  const AddedToken* Find(int64_t id) const;
  std::optional<int64_t> IdOf(const std::string& content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }  // longest content first
  bool empty() const { return tokens_.empty(); }

  // Splits `text` into segments and tokens, in order: `segment(begin, end)` for each non-empty stretch
  // of text between tokens (whitespace a stripping token took is in neither), `token(added, begin,
  // end)` for each token found, with the span of its content. Stops at the first error of `segment`.
  absl::Status Split(const std::string& text, absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                     absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const;

 private:
  // A node of a byte trie of the tokens' contents, built once, so that finding the longest token at a
  // position costs at most the longest content's length, not the number of tokens (trying each token at
  // each byte, 100,000 added tokens made a 4 KB prompt take 6 s). A node's children lie next to each other
  // in nodes_, in increasing byte order: 12 bytes a node, no allocation of its own.
  struct TrieNode {
    uint32_t first_child = 0;
    int32_t token = -1;  // index into tokens_ of the first token whose content ends here, or -1
    uint16_t child_count = 0;
    uint8_t byte = 0;  // the byte on the edge from the parent
  };

  void BuildTrie();
  // Returns the child of `node` on `byte`, or -1.
  int64_t Child(uint32_t node, uint8_t byte) const;
  // Returns the token of the longest content that starts at `text[begin]`, or null.
  const AddedToken* LongestAt(const std::string& text, size_t begin) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;  // index into tokens_
  std::vector<TrieNode> nodes_;                // nodes_[0] is the root (the empty content)
};

}  // namespace attribution::engine
