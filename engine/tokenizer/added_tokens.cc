// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/added_tokens.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <numeric>

#include "engine/common/status_macros.h"
#include "engine/tokenizer/normalized_text.h"

namespace attribution::engine {
namespace {

// The length in bytes of the character that ends at text[end - 1] (end > 0).
size_t LengthBefore(const std::string& text, size_t end) {
  size_t begin = end - 1;
  while (begin > 0 && end - begin < 4 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
  return Utf8Length(static_cast<unsigned char>(text[begin])) == end - begin ? end - begin : 1;
}

// \s of the regex crate the library strips with: Unicode White_Space (U+00A0 and U+2000 too, unlike isspace).
bool IsSpace(UChar32 c) { return u_isUWhiteSpace(c); }

// \w of the regex crate the library bounds single words with: letters, marks, decimal digits, connector
// punctuation ("_") and the joiners U+200C / U+200D.
bool IsWordCharacter(UChar32 c) {
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) return true;
  switch (u_charType(c)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:  // ICU's category enum, not ours: the other 25 categories are not word characters
      return false;
  }
}

bool WordCharacterBefore(const std::string& text, size_t end) {
  if (end == 0) return false;
  const size_t length = LengthBefore(text, end);
  return IsWordCharacter(CodePointAt(text, end - length));
}

bool WordCharacterAt(const std::string& text, size_t begin) {
  if (begin >= text.size()) return false;
  return IsWordCharacter(CodePointAt(text, begin));
}

}  // namespace

AddedTokens::AddedTokens(std::vector<AddedToken> tokens, const Normalize& normalize) : tokens_(std::move(tokens)) {
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  // Views into tokens_ and normalized_forms_, which are not changed again.
  normalized_forms_.resize(tokens_.size());
  std::vector<std::string_view> raw_forms, normalized_forms;
  std::vector<int32_t> raw_indices, normalized_indices;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& token = tokens_[i];
    by_id_[token.id] = i;
    if (!token.normalized) {
      raw_forms.push_back(token.content);
      raw_indices.push_back(static_cast<int32_t>(i));
    } else {
      normalized_forms_[i] = normalize ? normalize(token.content) : token.content;
      normalized_forms.push_back(normalized_forms_[i]);
      normalized_indices.push_back(static_cast<int32_t>(i));
    }
  }
  raw_ = Trie(raw_forms, raw_indices);
  normalized_ = Trie(normalized_forms, normalized_indices);
  by_content_.resize(tokens_.size());
  std::iota(by_content_.begin(), by_content_.end(), 0u);
  std::sort(by_content_.begin(), by_content_.end(), [&](uint32_t a, uint32_t b) {
    const int c = tokens_[a].content.compare(tokens_[b].content);
    return c != 0 ? c < 0 : a < b;
  });
}

AddedTokens::Trie::Trie(const std::vector<std::string_view>& forms, const std::vector<int32_t>& token_indices) {
  // Form indices by form (std::string compares bytes as unsigned, the order children are kept in); of equal
  // forms the first listed comes first and is the one the trie keeps.
  std::vector<uint32_t> order(forms.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const int c = forms[a].compare(forms[b]);
    return c != 0 ? c < 0 : a < b;
  });
  // Depth first, each node's children made together so that they lie next to each other. A node stands for
  // the `depth`-byte prefix shared by the forms of order[begin, end). Node indices fit 32 bits: there are at
  // most as many nodes as form bytes, and tokenizer files are far under 4 GB.
  struct Pending {
    uint32_t node;
    size_t begin, end, depth;
  };
  nodes_.assign(1, TrieNode{});
  std::vector<Pending> pending{{0, 0, order.size(), 0}};
  auto byte_at = [&](size_t i, size_t depth) { return static_cast<uint8_t>(forms[order[i]][depth]); };
  while (!pending.empty()) {
    const Pending p = pending.back();
    pending.pop_back();
    size_t i = p.begin;
    // Forms that end at this node sort before those that go on.
    if (i < p.end && forms[order[i]].size() == p.depth) nodes_[p.node].token = token_indices[order[i]];
    while (i < p.end && forms[order[i]].size() == p.depth) ++i;
    const auto first_child = static_cast<uint32_t>(nodes_.size());
    while (i < p.end) {
      const uint8_t byte = byte_at(i, p.depth);
      size_t j = i + 1;
      while (j < p.end && byte_at(j, p.depth) == byte) ++j;
      pending.push_back({static_cast<uint32_t>(nodes_.size()), i, j, p.depth + 1});
      TrieNode child;
      child.byte = byte;
      nodes_.push_back(child);
      i = j;
    }
    nodes_[p.node].first_child = first_child;
    nodes_[p.node].child_count = static_cast<uint16_t>(nodes_.size() - first_child);
  }
  nodes_.shrink_to_fit();
}

int64_t AddedTokens::Trie::Child(uint32_t node, uint8_t byte) const {
  const auto begin = nodes_.begin() + nodes_[node].first_child, end = begin + nodes_[node].child_count;
  const auto it = std::lower_bound(begin, end, byte, [](const TrieNode& n, uint8_t b) { return n.byte < b; });
  return it != end && it->byte == byte ? it - nodes_.begin() : -1;
}

std::pair<int32_t, size_t> AddedTokens::Trie::LongestAt(const std::string& text, size_t begin) const {
  std::pair<int32_t, size_t> longest{-1, 0};
  uint32_t node = 0;
  for (size_t i = begin; i < text.size(); ++i) {
    const int64_t child = Child(node, static_cast<uint8_t>(text[i]));
    if (child < 0) break;
    node = static_cast<uint32_t>(child);
    if (nodes_[node].token >= 0) longest = {nodes_[node].token, i + 1 - begin};
  }
  return longest;
}

const AddedToken* AddedTokens::Find(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::vector<uint32_t>::const_iterator AddedTokens::FirstWithContent(const std::string& content) const {
  return std::lower_bound(by_content_.begin(), by_content_.end(), content,
                          [&](uint32_t i, const std::string& c) { return tokens_[i].content < c; });
}

std::optional<int64_t> AddedTokens::IdOf(const std::string& content) const {
  const auto it = FirstWithContent(content);
  if (it == by_content_.end() || tokens_[*it].content != content) return std::nullopt;
  return tokens_[*it].id;
}

const std::string& AddedTokens::DecodedForm(const AddedToken& token) const {
  return token.normalized ? normalized_forms_[&token - tokens_.data()] : token.content;
}

bool AddedTokens::IsSpecialContent(const std::string& text) const {
  for (auto it = FirstWithContent(text); it != by_content_.end() && tokens_[*it].content == text; ++it) {
    if (tokens_[*it].special) return true;
  }
  return false;
}

absl::Status AddedTokens::Split(const std::string& text, absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                                absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const {
  return SplitWith(raw_, text, segment, token);
}

absl::Status AddedTokens::SplitNormalized(const std::string& normalized_text,
                                          absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                                          absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const {
  return SplitWith(normalized_, normalized_text, segment, token);
}

absl::Status AddedTokens::SplitWith(const Trie& trie, const std::string& text,
                                    absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                                    absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const {
  // `from`: where the text not yet given to segment or token starts; `i`: where the search goes on, which
  // is past each match, kept or not, and not past whitespace an rstrip took, as the library's search goes.
  size_t from = 0, i = 0;
  // The last whitespace run an rstrip scanned, [space_from, space_end): a token that ends inside it takes
  // the same run, without a rescan (tokens of whitespace after a stripping token would each rescan it).
  size_t space_from = 1, space_end = 0;
  while (i < text.size() && !trie.empty()) {
    const auto [index, length] = trie.LongestAt(text, i);
    if (index < 0) {
      ++i;
      continue;
    }
    const AddedToken& match = tokens_[index];
    const size_t begin = i, end = i + length;
    i = end;
    if (match.single_word && (WordCharacterBefore(text, begin) || WordCharacterAt(text, end))) continue;
    size_t taken_begin = begin, taken_end = end;
    while (match.lstrip && taken_begin > from) {
      const size_t n = LengthBefore(text, taken_begin);
      if (!IsSpace(CodePointAt(text, taken_begin - n))) break;
      taken_begin -= n;
    }
    if (match.rstrip) {
      if (end < space_from || end > space_end) {
        space_from = space_end = end;
        while (space_end < text.size()) {
          const size_t n = Utf8Length(static_cast<unsigned char>(text[space_end]));
          if (!IsSpace(CodePointAt(text, space_end))) break;
          space_end += n;
        }
      }
      taken_end = space_end;
    }
    if (taken_begin > from) RETURN_IF_ERROR(segment(from, taken_begin));
    token(match, begin, end);
    // Not the larger of the two: after a token that stripped whitespace, a token found in that whitespace
    // moves `from` back, and the library gives the rest of it to the next segment again.
    from = taken_end;
  }
  if (text.size() > from) return segment(from, text.size());
  return absl::OkStatus();
}

}  // namespace attribution::engine
