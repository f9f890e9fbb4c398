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
    HeldOutQuestion q{.task = j.at("task"), .prompt = j.at("prompt"), .answer = j.at("target")};
    for (const auto& span : j.at("decisive_spans")) q.decisive_spans.emplace_back(span[0], span[1]);
    ASSIGN_OR_RETURN(engine::Encoding prompt, tokenizer.Encode(q.prompt, /*add_special_tokens=*/true));
    ASSIGN_OR_RETURN(engine::Encoding target, tokenizer.Encode(q.answer, /*add_special_tokens=*/false));
    q.request.prompt_ids = prompt.ids;
    q.request.target_ids = target.ids;
    for (int64_t position = 1; position < static_cast<int64_t>(prompt.ids.size()); ++position) {
      q.request.features.push_back({.begin = position, .end = position + 1});
    }
    q.decisive = DecisiveFeatures(q, q.request.features, prompt.spans);
    if (q.decisive.empty()) return absl::InvalidArgumentError(path + ": a question's decisive words have no tokens");
    out.push_back(std::move(q));
  }
  return out;
}

std::vector<int64_t> DecisiveFeatures(const HeldOutQuestion& question, std::vector<engine::FeatureSpan> features,
                                      const std::vector<engine::TokenSpan>& spans) {
  if (features.empty()) {  // the engine's default: one feature per prompt token
    for (int64_t t = 0; t < static_cast<int64_t>(spans.size()); ++t) features.push_back({.begin = t, .end = t + 1});
  }
  std::vector<int64_t> decisive;
  for (size_t f = 0; f < features.size(); ++f) {
    bool hit = false;
    for (int64_t t = features[f].begin; t < features[f].end; ++t) {
      for (const auto& [begin, end] : question.decisive_spans)
        hit = hit || (spans[t].begin < end && begin < spans[t].end);
    }
    if (hit) decisive.push_back(static_cast<int64_t>(f));
  }
  return decisive;
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
