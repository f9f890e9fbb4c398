// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/bpe_model.h"

#include <cstdio>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/normalized_text.h"

namespace attribution::engine {

absl::StatusOr<BpeModel> BpeModel::FromJson(const nlohmann::json& model) {
  if (!model.is_object() || model.value("type", std::string()) != "BPE") {
    return absl::InvalidArgumentError("tokenizer.json: only \"BPE\" models are supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: BPE ", key, " is not supported"));
    }
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: BPE model lacks a \"vocab\" object");
  }
  BpeModel bpe;
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab id of \"", token, "\" is not a non-negative integer"));
    }
    const int64_t i = id.get<int64_t>();
    if (i >= kMaxTokenId) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab id ", i, " of \"", token, "\" is not below the limit of ", kMaxTokenId));
    }
    bpe.vocab_[token] = i;
    if (static_cast<int64_t>(bpe.tokens_.size()) <= i) bpe.tokens_.resize(i + 1);
    bpe.tokens_[i] = token;
  }
  // Without a single piece no text can be encoded; refused here rather than as every text request failing.
  if (bpe.tokens_.empty()) return absl::InvalidArgumentError("tokenizer.json: the BPE model's \"vocab\" is empty");
  int64_t rank = 0;
  for (const auto& merge : model.value("merges", nlohmann::json::array())) {
    std::string left, right;
    if (merge.is_string()) {  // "a b" (older files)
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ', 1);
      if (space == std::string::npos)
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge \"", text, "\" has no space"));
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {  // ["a", "b"] (newer files)
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto a = bpe.vocab_.find(left), b = bpe.vocab_.find(right), merged = bpe.vocab_.find(left + right);
    if (a == bpe.vocab_.end() || b == bpe.vocab_.end() || merged == bpe.vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: merge \"", left, " ", right, "\" uses tokens outside the vocab"));
    }
    bpe.merges_.emplace(PairKey(a->second, b->second), Merge{rank++, merged->second});
  }
  if (model.contains("unk_token") && model["unk_token"].is_string())
    bpe.unk_id_ = bpe.IdOf(model["unk_token"].get<std::string>());
  bpe.fuse_unk_ = model.value("fuse_unk", false);
  bpe.ignore_merges_ = model.value("ignore_merges", false);
  bpe.byte_fallback_ = model.value("byte_fallback", false);
  if (bpe.byte_fallback_) {
    bpe.byte_ids_.resize(256);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      bpe.byte_ids_[b] = bpe.IdOf(name);
    }
  }
  return bpe;
}

std::optional<int64_t> BpeModel::IdOf(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? std::nullopt : std::optional<int64_t>(it->second);
}

std::vector<WordToken> BpeModel::Tokenize(const std::string& word) const {
  if (ignore_merges_) {
    if (auto id = IdOf(word)) return {{*id, 0, word.size()}};
  }
  // Characters become symbols; unknown ones fall back to byte tokens or the unknown token.
  std::vector<WordToken> symbols;
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min(Utf8Length(word[i]), word.size() - i);
    if (auto id = IdOf(word.substr(i, len))) {
      symbols.push_back({*id, i, i + len});
    } else if (byte_fallback_ && [&] {
                 for (size_t k = 0; k < len; ++k)
                   if (!byte_ids_[static_cast<unsigned char>(word[i + k])]) return false;
                 return true;
               }()) {
      for (size_t k = 0; k < len; ++k)
        symbols.push_back({*byte_ids_[static_cast<unsigned char>(word[i + k])], i + k, i + k + 1});
    } else if (unk_id_) {
      if (fuse_unk_ && !symbols.empty() && symbols.back().id == *unk_id_)
        symbols.back().end = i + len;
      else
        symbols.push_back({*unk_id_, i, i + len});
    }
    i += len;
  }
  return MergeAll(std::move(symbols));
}

// Applies the best-ranked adjacent merge (leftmost on ties) until none applies. A heap of candidate
// pairs over a linked list of symbols makes this O(n log n): rescanning the word per merge was O(n²),
// and a single 200 KB word held a request thread for minutes.
std::vector<WordToken> BpeModel::MergeAll(std::vector<WordToken> symbols) const {
  struct Candidate {
    int64_t rank;
    size_t left;  // index of the pair's left symbol; symbols only ever merge into the left one
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const size_t n = symbols.size();
  constexpr size_t kNone = std::numeric_limits<size_t>::max();
  std::vector<size_t> next(n), prev(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : kNone;
    prev[i] = i > 0 ? i - 1 : kNone;
  }
  auto merge_of = [&](size_t left) -> const Merge* {
    if (left == kNone || next[left] == kNone) return nullptr;
    auto it = merges_.find(PairKey(symbols[left].id, symbols[next[left]].id));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](size_t left) {
    if (const Merge* m = merge_of(left)) queue.push({m->rank, left});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    // Entries go stale when either symbol merged since; the pair's current rank tells.
    const Merge* m = alive[top.left] ? merge_of(top.left) : nullptr;
    if (m == nullptr || m->rank != top.rank) continue;
    const size_t right = next[top.left];
    symbols[top.left] = {m->merged_id, symbols[top.left].begin, symbols[right].end};
    alive[right] = false;
    next[top.left] = next[right];
    if (next[right] != kNone) prev[next[right]] = top.left;
    push(prev[top.left]);
    push(top.left);
  }
  std::vector<WordToken> merged;
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) merged.push_back(symbols[i]);
  return merged;
}

}  // namespace attribution::engine
