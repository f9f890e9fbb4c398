// SPDX-License-Identifier: Apache-2.0
#include "engine/model/generation.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

absl::Status CheckPrompts(const std::vector<std::vector<int64_t>>& prompts) {
  if (prompts.empty()) return absl::InvalidArgumentError("generation needs at least one prompt");
  for (const auto& p : prompts) {
    if (p.empty()) return absl::InvalidArgumentError("prompt must hold at least one token");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckGenerationOptions(const GenerationOptions& o) {
  if (o.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be at least 1");
  if (!(o.temperature >= 0 && o.temperature <= 1e4))
    return absl::InvalidArgumentError("temperature must be in [0, 10000]");
  if (o.top_k < 0) return absl::InvalidArgumentError("top_k must be at least 0 (0: no top-k cut)");
  if (!(o.top_p > 0 && o.top_p <= 1)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (static_cast<int64_t>(o.stop_token_ids.size()) > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop_token_ids: ", o.stop_token_ids.size(), " ids, more than the limit of ", kMaxStopTokenIds));
  }
  if (o.ignore_stop_tokens && !o.stop_token_ids.empty()) {
    return absl::InvalidArgumentError("stop_token_ids: given with ignore_stop_tokens, which would ignore them");
  }
  return absl::OkStatus();
}

std::vector<int64_t> StopTokens(const ModelConfig& config, const GenerationOptions& options) {
  if (options.ignore_stop_tokens) return {};
  return options.stop_token_ids.empty() ? config.eos_token_ids : options.stop_token_ids;
}

at::Tensor PickNextTokens(const at::Tensor& logits, const GenerationOptions& o, at::Generator& generator) {
  if (o.temperature == 0) return logits.argmax(-1);
  // In double (a temperature below float's range would be 0) and shifted so the largest logit is 0
  // before dividing: a tiny temperature then sends the others to -inf (probability 0), where
  // logits / temperature alone overflow to inf and softmax gives NaN.
  const at::Tensor wide = logits.to(at::kDouble);  // [batch, vocab]
  at::Tensor probs = at::softmax((wide - wide.amax(-1, /*keepdim=*/true)) / o.temperature, -1);
  const int64_t vocab = probs.size(-1);
  if (o.top_k > 0 && o.top_k < vocab) {
    // As TopKLogitsWarper: drop what is below the k-th largest (its ties stay), then renormalize.
    at::Tensor kth = std::get<0>(probs.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    probs = probs.masked_fill(probs < kth, 0.0);
    probs = probs / probs.sum(-1, /*keepdim=*/true);
  }
  if (o.top_p < 1) {
    // Stable: of tokens tied where the mass reaches top_p, the lower ids are kept, whatever the vocabulary's size
    // (an unstable sort kept an order of its own; transformers' unstable sort keeps any of them).
    auto [sorted, order] = probs.sort(/*stable=*/true, -1, /*descending=*/true);
    // Keep a token while the mass before it is below top_p: the first token always survives.
    at::Tensor mass_before = sorted.cumsum(-1) - sorted;
    sorted = sorted.masked_fill(mass_before >= o.top_p, 0.0);
    probs = at::zeros_like(probs).scatter(-1, order, sorted);
  }
  return at::multinomial(probs, 1, /*replacement=*/false, generator).squeeze(1);
}

absl::StatusOr<std::vector<Generation>> Generate(const CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerationOptions& options) {
  RETURN_IF_ERROR(CheckPrompts(prompts));
  RETURN_IF_ERROR(CheckGenerationOptions(options));
  const std::vector<int64_t> stops = StopTokens(model.config(), options);
  const int64_t b = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> lengths;
  int64_t longest = 0;
  for (const auto& p : prompts) {
    lengths.push_back(static_cast<int64_t>(p.size()));
    longest = std::max(longest, lengths.back());
  }
  c10::InferenceMode inference;
  try {
    at::Tensor ids = at::zeros({b, longest}, at::kLong);
    for (int64_t r = 0; r < b; ++r) {
      ids[r].narrow(0, 0, lengths[r]).copy_(at::tensor(prompts[r], at::kLong));
    }
    KvCache cache(model.config().num_layers, b);
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
    std::vector<Generation> out(b);
    std::vector<int64_t> last_positions;
    for (int64_t len : lengths) last_positions.push_back(len - 1);
    ForwardBatch batch{.input_ids = ids, .lengths = lengths, .cache = &cache};
    std::vector<int64_t> rows(b);
    for (int64_t r = 0; r < b; ++r) rows[r] = r;
    for (int64_t step = 0; step < options.max_new_tokens; ++step) {
      ASSIGN_OR_RETURN(at::Tensor hidden, model.Hidden(batch));
      at::Tensor logits = model.LogitsAt(hidden, rows, last_positions).cpu();  // [B, vocab]
      at::Tensor next = PickNextTokens(logits, options, generator);
      at::Tensor log_probs = at::log_softmax(logits, -1).gather(1, next.unsqueeze(1)).squeeze(1);
      bool all_stopped = true;
      for (int64_t r = 0; r < b; ++r) {
        if (out[r].stopped) continue;
        const int64_t token = next[r].item<int64_t>();
        out[r].tokens.push_back(token);
        out[r].log_probs.push_back(log_probs[r].item<float>());
        out[r].stopped = std::find(stops.begin(), stops.end(), token) != stops.end();
        all_stopped = all_stopped && out[r].stopped;
      }
      if (all_stopped) break;
      // Every row (finished ones too, harmlessly) feeds one token; its scores are read at slot 0.
      batch = ForwardBatch{.input_ids = next.unsqueeze(1), .lengths = std::vector<int64_t>(b, 1), .cache = &cache};
      std::fill(last_positions.begin(), last_positions.end(), 0);
    }
    return out;
  } catch (const std::exception& e) {
    return StatusFromException(e, "generation");
  }
}

}  // namespace attribution::engine
