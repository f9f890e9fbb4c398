// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/added_tokens.h"

#include <algorithm>

namespace attribution::engine {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

AddedTokens::AddedTokens(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (size_t i = 0; i < tokens_.size(); ++i) by_id_[tokens_[i].id] = i;
}

const AddedToken* AddedTokens::Find(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int64_t> AddedTokens::IdOf(const std::string& content) const {
  for (const AddedToken& a : tokens_) {
    if (a.content == content) return a.id;
  }
  return std::nullopt;
}

absl::Status AddedTokens::Split(const std::string& text, absl::FunctionRef<absl::Status(size_t, size_t)> segment,
                                absl::FunctionRef<void(const AddedToken&, size_t, size_t)> token) const {
  size_t from = 0, i = 0;
  while (i < text.size() && !tokens_.empty()) {
    const AddedToken* match = nullptr;
    for (const AddedToken& a : tokens_) {
      if (!a.content.empty() && text.compare(i, a.content.size(), a.content) == 0) {
        match = &a;
        break;
      }
    }
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
