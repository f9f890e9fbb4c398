// SPDX-License-Identifier: Apache-2.0
// Added and special tokens found in text before the model tokenizes it, as the `tokenizers` library finds
// them (AddedVocabulary): scanning from the left, the longest token that starts first; a token with
// single_word counts only where no word character touches it; lstrip / rstrip take the whitespace on its
// left / right with it. A token with `normalized` is looked for in the normalized text, in the form the
// normalizer gives its content; the others in the text as the user wrote it, first. The text between two
// tokens is a segment the model tokenizes on its own. Shared by tokenizer.json (its "added_tokens") and
// tokenizer.model (the special tokens and "added_tokens_decoder" of tokenizer_config.json).
//
//   AddedTokens added({{.id = 2, .content = "</s>", .special = true}});
//   added.Split("Hi</s>", segment, token);  // segment(0, 2), then token(</s>, 2, 6)
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace attribution::engine {

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
  // Looked for in the normalized text (SplitNormalized) rather than in the text as written (Split).
  bool normalized = false;
};

// Immutable after construction; thread-safe.
class AddedTokens {
 public:
  // Maps a token's content to the form it is looked for in normalized text.
  using Normalize = std::function<std::string(const std::string&)>;

  AddedTokens() = default;
  // `normalize` (null: the content as it is) is called once per token with `normalized`, here only.
  explicit AddedTokens(std::vector<AddedToken> tokens, const Normalize& normalize = nullptr);

  // The token with `id` (of several, the last in matching order), or null.
  const AddedToken* Find(int64_t id) const;
  // The token whose content is `content` (of several, the first in file order).
  std::optional<int64_t> IdOf(const std::string& content) const;
  // The string `token` (one of tokens()) stands for in decoding: a token with `normalized` as the normalizer
  // writes its content ("hello world" for "Hello World" under Lowercase), as the tokenizers library's
  // id_to_token gives it; the others' content.
  const std::string& DecodedForm(const AddedToken& token) const;
  // Whether a special token's content is `text`. The library skips a token as special by its decoded form,
  // so a special "[SPAN]" that decodes as "[span]" is kept, and a plain token that decodes as a special
  // token's content is skipped.
  bool IsSpecialContent(const std::string& text) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }  // longest content first
  bool empty() const { return tokens_.empty(); }

  // Splits `text` as written into segments and the tokens without `normalized`, in order: `segment(begin,
  // end)` for each non-empty stretch of text between tokens (whitespace a stripping token took is in
  // neither), `token(added, begin, end)` for each token found, with the span of its content. Stops at the
  // first error of `segment`.
  absl::Status Split(const std::string& text, absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                     absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const;
  // As Split, for one normalized segment and the tokens with `normalized`, by their normalized form; spans
  // are in `normalized_text`. A segment's edges are word boundaries to single_word tokens, as the library
  // matches each segment alone.
  absl::Status SplitNormalized(const std::string& normalized_text,
                               absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                               absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const;

 private:
  // A byte trie of the forms tokens are looked for in, built once, so that finding the longest token at a
  // position costs at most the longest form's length, not the number of tokens (trying each token at each
  // byte, 100,000 added tokens made a 4 KB prompt take 6 s). A node's children lie next to each other in
  // nodes, in increasing byte order: 12 bytes a node, no allocation of its own.
  struct TrieNode {
    uint32_t first_child = 0;
    int32_t token = -1;  // index into tokens_ of the first token whose form ends here, or -1
    uint16_t child_count = 0;
    uint8_t byte = 0;  // the byte on the edge from the parent
  };
  class Trie {
   public:
    // `forms[i]` is the form of tokens_[token_indices[i]]; of equal forms the first listed is kept.
    Trie(const std::vector<std::string_view>& forms, const std::vector<int32_t>& token_indices);
    Trie() : Trie({}, {}) {}
    // The longest form that starts at `text[begin]` (index into tokens_ and length), or {-1, 0}.
    std::pair<int32_t, size_t> LongestAt(const std::string& text, size_t begin) const;
    bool empty() const { return nodes_[0].child_count == 0; }

   private:
    // Returns the child of `node` on `byte`, or -1.
    int64_t Child(uint32_t node, uint8_t byte) const;
    std::vector<TrieNode> nodes_;  // nodes_[0] is the root (the empty form)
  };

  // The first of by_content_ whose token's content is not below `content`.
  std::vector<uint32_t>::const_iterator FirstWithContent(const std::string& content) const;
  absl::Status SplitWith(const Trie& trie, const std::string& text,
                         absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                         absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;  // index into tokens_
  // Indices into tokens_ by content, of equal contents in file order: IdOf's binary search, with no copy of
  // the contents (100,000 added tokens are common).
  std::vector<uint32_t> by_content_;
  // The normalized form of tokens_[i] where it has `normalized`, else empty (the content serves).
  std::vector<std::string> normalized_forms_;
  Trie raw_, normalized_;  // the contents of tokens without `normalized`; the forms of those with it
};

}  // namespace attribution::engine
