// SPDX-License-Identifier: Apache-2.0
#include "bench/heldout_questions.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/attribution/faithfulness.h"
#include "engine/common/status_macros.h"

namespace attribution::bench {

absl::StatusOr<std::vector<HeldOutQuestion>> ReadHeldOutQuestions(const std::string& path,
                                                                  const engine::Tokenizer& tokenizer, size_t limit) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path + ": cannot open");
  std::vector<HeldOutQuestion> out;
  for (std::string line; std::getline(in, line) && (limit == 0 || out.size() < limit);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) return absl::InvalidArgumentError(path + ": a line is not JSON");
    HeldOutQuestion q{.task = j.at("task")};
    ASSIGN_OR_RETURN(engine::Encoding prompt, tokenizer.Encode(j.at("prompt"), /*add_special_tokens=*/true));
    ASSIGN_OR_RETURN(engine::Encoding target, tokenizer.Encode(j.at("target"), /*add_special_tokens=*/false));
    q.request.prompt_ids = prompt.ids;
    q.request.target_ids = target.ids;
    for (size_t t = 1; t < prompt.ids.size(); ++t) {
      const auto position = static_cast<int64_t>(t);
      q.request.features.push_back({.begin = position, .end = position + 1});
      for (const auto& span : j.at("decisive_spans")) {
        const size_t begin = span[0], end = span[1];  // the prompts are ASCII: characters are bytes
        if (prompt.spans[t].begin < end && begin < prompt.spans[t].end) q.decisive.push_back(position - 1);
      }
    }
    if (q.decisive.empty()) return absl::InvalidArgumentError(path + ": a question's decisive words have no tokens");
    out.push_back(std::move(q));
  }
  return out;
}

DecisiveHits RankDecisive(const std::vector<double>& attribution, const std::vector<int64_t>& decisive) {
  const std::vector<int64_t> ranked = engine::RankFeatures(attribution);
  auto is_decisive = [&](int64_t f) { return std::find(decisive.begin(), decisive.end(), f) != decisive.end(); };
  DecisiveHits hits{.top1 = !ranked.empty() && is_decisive(ranked[0])};
  const size_t k = std::min(decisive.size(), ranked.size());
  for (size_t i = 0; i < k; ++i) hits.topk += is_decisive(ranked[i]);
  hits.topk /= static_cast<double>(decisive.size());
  return hits;
}

}  // namespace attribution::bench
