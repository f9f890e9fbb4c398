// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/added_tokens.h"

#include <algorithm>
#include <numeric>

namespace attribution::engine {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

AddedTokens::AddedTokens(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (size_t i = 0; i < tokens_.size(); ++i) by_id_[tokens_[i].id] = i;
  BuildTrie();
}

void AddedTokens::BuildTrie() {
  // Token indices by content (std::string compares bytes as unsigned, the order children are kept in); of
  // equal contents the first in tokens_ comes first and is the one the trie keeps, as the scan over
  // tokens_ in order found it first.
  std::vector<uint32_t> order(tokens_.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const int c = tokens_[a].content.compare(tokens_[b].content);
    return c != 0 ? c < 0 : a < b;
  });
  // Depth first, each node's children made together so that they lie next to each other. A node stands for
  // the `depth`-byte prefix shared by the contents of order[begin, end). Node indices fit 32 bits: there
  // are at most as many nodes as content bytes, and tokenizer files are far under 4 GB.
  struct Pending {
    uint32_t node;
    size_t begin, end, depth;
  };
  nodes_.assign(1, TrieNode{});
  std::vector<Pending> pending{{0, 0, order.size(), 0}};
  auto byte_at = [&](size_t i, size_t depth) { return static_cast<uint8_t>(tokens_[order[i]].content[depth]); };
  while (!pending.empty()) {
    const Pending p = pending.back();
    pending.pop_back();
    size_t i = p.begin;
    // Contents that end at this node sort before those that go on.
    if (i < p.end && tokens_[order[i]].content.size() == p.depth) nodes_[p.node].token = static_cast<int32_t>(order[i]);
    while (i < p.end && tokens_[order[i]].content.size() == p.depth) ++i;
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

int64_t AddedTokens::Child(uint32_t node, uint8_t byte) const {
  const auto begin = nodes_.begin() + nodes_[node].first_child, end = begin + nodes_[node].child_count;
  const auto it = std::lower_bound(begin, end, byte, [](const TrieNode& n, uint8_t b) { return n.byte < b; });
  return it != end && it->byte == byte ? it - nodes_.begin() : -1;
}

const AddedToken* AddedTokens::LongestAt(const std::string& text, size_t begin) const {
  const AddedToken* longest = nullptr;
  uint32_t node = 0;
  for (size_t i = begin; i < text.size(); ++i) {
    const int64_t child = Child(node, static_cast<uint8_t>(text[i]));
    if (child < 0) break;
    node = static_cast<uint32_t>(child);
    if (nodes_[node].token >= 0) longest = &tokens_[nodes_[node].token];
  }
  return longest;
}

const AddedToken* AddedTokens::Find(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int64_t> AddedTokens::IdOf(const std::string& content) const {
  if (nodes_.empty()) return std::nullopt;
  uint32_t node = 0;
  for (char c : content) {
    const int64_t child = Child(node, static_cast<uint8_t>(c));
    if (child < 0) return std::nullopt;
    node = static_cast<uint32_t>(child);
  }
  return nodes_[node].token >= 0 ? std::optional<int64_t>(tokens_[nodes_[node].token].id) : std::nullopt;
}

absl::Status AddedTokens::Split(const std::string& text, absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                                absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const {
  size_t from = 0, i = 0;
  // Without a non-empty token (an empty content matches nowhere) the text is one segment.
  const bool any = !nodes_.empty() && nodes_[0].child_count > 0;
  while (i < text.size() && any) {
    const AddedToken* match = LongestAt(text, i);
    if (match == nullptr) {
      ++i;
      continue;
    }
    size_t segment_end = i, next = i + match->content.size();
    if (match->lstrip) {
      while (segment_end > from && IsSpace(text[segment_end - 1])) --segment_end;
    }
    if (match->rstrip) {
      while (next < text.size() && IsSpace(text[next])) ++next;
    }
    if (segment_end > from) {
      if (absl::Status status = segment(from, segment_end); !status.ok()) return status;
    }
    token(*match, i, i + match->content.size());
    from = i = next;
  }
  if (text.size() > from) return segment(from, text.size());
  return absl::OkStatus();
}

}  // namespace attribution::engine
