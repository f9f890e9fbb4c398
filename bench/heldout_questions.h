// SPDX-License-Identifier: Apache-2.0
// The default model's held-out questions (models/tiny-qa-llama/heldout.jsonl, written by
// tools/train_default_model.py) as attribution requests whose decisive tokens are known, and how well
// an attribution ranks them. Shared by the faithfulness benchmark and the default-model tests.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/attribution/attribution_request.h"
#include "engine/tokenizer/tokenizer.h"

namespace attribution::bench {

struct HeldOutQuestion {
  std::string task;
  std::string prompt, answer;  // answer: "Yes" / "No", read after the prompt as " Yes" / " No"
  std::vector<std::pair<size_t, size_t>> decisive_spans;  // [begin, end) characters (= bytes: ASCII)
  // Prompt with <s>, target = the known answer; features: every prompt token after <s>, one each
  // (as Captum's skip_tokens), baseline token 0.
  engine::AttributionRequest request;
  std::vector<int64_t> decisive;  // feature indices of the decisive words' tokens
};

// Indices of the features one of whose tokens (`spans`: byte spans in the prompt) overlaps a decisive span.
// Empty `features`: one per prompt token, as the engine reads it.
std::vector<int64_t> DecisiveFeatures(const HeldOutQuestion& question, std::vector<engine::FeatureSpan> features,
                                      const std::vector<engine::TokenSpan>& spans);

// The first `limit` questions of the file (0: all).
absl::StatusOr<std::vector<HeldOutQuestion>> ReadHeldOutQuestions(const std::string& path,
                                                                  const engine::Tokenizer& tokenizer, size_t limit);

struct DecisiveHits {
  bool top1 = false;  // the highest-ranked feature is decisive
  double topk = 0;    // fraction of the k highest-ranked features that are decisive, k = decisive count
};
// Ranks as the engine's faithfulness rows do (engine::RankFeatures).
DecisiveHits RankDecisive(const std::vector<double>& attribution, const std::vector<int64_t>& decisive);

}  // namespace attribution::bench
