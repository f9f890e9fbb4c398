// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/attribution_request.h"

#include <algorithm>
#include <string>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "engine/attribution/methods.h"
#include "engine/common/exact_number.h"

namespace attribution::engine {
absl::Status CheckRange(int64_t value, int64_t low, int64_t high, absl::string_view field) {
  if (value < low || value > high) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " is outside [", low, ", ", high, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckWithinLimit(int64_t value, int64_t low, int64_t high, absl::string_view field,
                              absl::string_view limit) {
  absl::Status in_range = CheckRange(value, low, high, field);
  if (in_range.ok() || value < low) return in_range;
  return absl::InvalidArgumentError(absl::StrCat(in_range.message(), " (", high, ": this model's limits.", limit, ")"));
}

absl::Status CheckTokenIds(const std::vector<int64_t>& ids, absl::string_view field, int64_t vocab) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "] = ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateAttributionRequest(const AttributionRequest& r, const ModelConfig& config,
                                        const AttributionLimits& limits) {
  const int64_t vocab = config.vocab_size;
  const int64_t prompt = static_cast<int64_t>(r.prompt_ids.size());
  if (prompt == 0) return absl::InvalidArgumentError("prompt_ids must not be empty");
  if (auto s = CheckTokenIds(r.prompt_ids, "prompt_ids", vocab); !s.ok()) return s;
  if (auto s = CheckTokenIds(r.target_ids, "target_ids", vocab); !s.ok()) return s;
  if (auto s = CheckTokenIds(r.foil_ids, "foil_ids", vocab); !s.ok()) return s;
  const int64_t target = r.target_ids.empty() ? r.generation.max_new_tokens : static_cast<int64_t>(r.target_ids.size());
  if (r.target_ids.empty()) {
    if (auto s =
            CheckWithinLimit(r.generation.max_new_tokens, 1, limits.max_new_tokens, "max_new_tokens", "max_new_tokens");
        !s.ok())
      return s;
    if (auto s = CheckGenerationOptions(r.generation); !s.ok()) return s;
  }
  if (auto s = CheckWithinLimit(prompt + target, 2, limits.max_tokens, "prompt + target tokens", "max_tokens"); !s.ok())
    return s;
  if (!r.foil_ids.empty()) {
    if (r.target_ids.empty() || r.foil_ids.size() != r.target_ids.size()) {
      return absl::InvalidArgumentError(
          "foil_ids must have as many tokens as target_ids (contrastive needs a given target)");
    }
    if (r.quantity == TokenQuantity::kProb && r.target_ids.size() > 1) {
      return absl::InvalidArgumentError("contrastive prob is defined for single-token targets; use log_prob or logit");
    }
  }
  if (!r.choice_ids.empty()) {
    if (auto s = CheckTokenIds(r.choice_ids, "choices", vocab); !s.ok()) return s;
    if (r.choice_ids.size() < 2) return absl::InvalidArgumentError("choices: give at least two answer choices");
    if (auto s = CheckWithinLimit(static_cast<int64_t>(r.choice_ids.size()), 2, limits.max_choices, "choices (count)",
                                  "max_choices");
        !s.ok())
      return s;
    std::unordered_set<int64_t> seen;
    for (int64_t choice : r.choice_ids) {
      if (!seen.insert(choice).second) {
        return absl::InvalidArgumentError(absl::StrCat("choices: token ", choice, " is given twice"));
      }
    }
    if (r.target_ids.size() != 1 ||
        std::find(r.choice_ids.begin(), r.choice_ids.end(), r.target_ids[0]) == r.choice_ids.end()) {
      return absl::InvalidArgumentError(
          "choices: the target must be given and be one of the choices (one token) to be renormalised over them");
    }
    if (!r.foil_ids.empty()) {
      return absl::InvalidArgumentError(
          "choices and foil: one or the other (over the choices, the contrast "
          "of two of them is their logit difference)");
    }
    if (r.quantity == TokenQuantity::kLogit) {
      return absl::InvalidArgumentError("choices: a logit is not renormalised; ask for log_prob or prob");
    }
  }
  if (auto s = CheckRange(r.baseline_token_id, 0, vocab - 1, "baseline_token_id"); !s.ok()) return s;
  const int64_t features = r.features.empty() ? prompt : static_cast<int64_t>(r.features.size());
  if (auto s = CheckWithinLimit(features, 1, limits.max_features, "number of features", "max_features"); !s.ok())
    return s;
  std::vector<bool> covered(prompt, false);
  // Saliency, input × gradient and AttnLRP read no baseline: the groups' baselines change nothing then, unless
  // faithfulness curves put removed features at them, and are accepted as other unread settings are.
  const bool baselines_read = ReadsBaselines(r.method, r.want_faithfulness);
  int64_t baseline_growth = 0;  // tokens a row gains with every feature at its baseline
  int64_t baseline_shrink = 0;  // tokens it loses (shorter baselines; an empty one deletes its span)
  for (size_t f = 0; f < r.features.size(); ++f) {
    const FeatureSpan& span = r.features[f];
    if (span.begin < 0 || span.end > prompt || span.begin >= span.end) {
      return absl::InvalidArgumentError(absl::StrCat("feature_groups[", f, "] = [", span.begin, ", ", span.end,
                                                     ") is not a non-empty span of the ", prompt, " prompt tokens"));
    }
    for (int64_t p = span.begin; p < span.end; ++p) {
      if (covered[p])
        return absl::InvalidArgumentError(
            absl::StrCat("feature_groups[", f, "] overlaps an earlier feature at token ", p));
      covered[p] = true;
    }
    if (!span.baseline_ids) continue;
    const std::string field = absl::StrCat("feature_groups[", f, "].baseline");
    if (auto s = CheckTokenIds(*span.baseline_ids, field, vocab); !s.ok()) return s;
    if (!baselines_read) continue;
    if (r.zero_embedding_baseline) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": not used with the zero-embedding baseline, which every feature takes"));
    }
    const int64_t change = static_cast<int64_t>(span.baseline_ids->size()) - (span.end - span.begin);
    if (IsGradientMethod(r.method) && change != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": gradient methods need one baseline token per position (", span.end - span.begin, ", not ",
          span.baseline_ids->size(), "); only perturbation methods replace a span by one of another length"));
    }
    baseline_growth += std::max<int64_t>(0, change);
    baseline_shrink += std::max<int64_t>(0, -change);
  }
  // The first target token is scored after the token before it: every row needs a prompt token. The shortest
  // row has each group whose baseline is shorter (an empty one deletes it) at its baseline, the others present.
  if (prompt - baseline_shrink < 1) {
    return absl::InvalidArgumentError(
        "feature_groups[].baseline: the groups' shorter or empty baselines can leave the prompt empty, and the "
        "target's first token needs a token before it (leave a token out of the groups, or give a group a "
        "baseline as long as it)");
  }
  // Perturbation rows put longer baselines in place of their features; the longest row must fit the limits
  // the prompt itself is held to (and GPT-2's learned positions).
  const int64_t longest_row = prompt + target + baseline_growth;
  if (longest_row > limits.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("feature_groups[].baseline: with every feature at its baseline a row holds ", longest_row,
                     " tokens (prompt + target), over this model's limits.max_tokens (", limits.max_tokens, ")"));
  }
  if (config.architecture == Architecture::kGpt2 && longest_row > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt + target tokens (with every feature at its baseline): ", longest_row,
                     " exceed the model's ", config.max_position_embeddings, " positions"));
  }
  if (!(r.completeness_tolerance >= 0 && r.completeness_tolerance <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("completeness_tolerance = ", ExactNumber(r.completeness_tolerance), " is outside [0, 1]"));
  }
  return MethodOf(r.method).validate(r, features, limits);
}

}  // namespace attribution::engine
