// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/engine_generation.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

// One generation in progress. Only the callback of its single in-flight decode row touches it.
struct GenerationRun : std::enable_shared_from_this<GenerationRun> {
  BatchingEngine* engine;
  std::shared_ptr<Request> request;
  GenerationOptions options;
  std::vector<int64_t> stops;
  std::shared_ptr<DecodeState> state;
  at::Generator generator;
  Generation generation;
  std::unique_ptr<BatchingEngine::Reservation> kv_cache;
  std::function<void(absl::StatusOr<Generation>)> done;
  TokenCallback on_token;
  StopCheck should_stop;

  // The cache's memory is returned before the answer is: a client that calls again at once finds it free.
  void Finish(absl::StatusOr<Generation> result) {
    kv_cache.reset();
    done(std::move(result));
  }

  void Submit(std::vector<int64_t> tokens) {
    auto self = shared_from_this();
    Row row{.kind = RowKind::kDecode, .input_ids = std::move(tokens), .decode_state = state};
    absl::Status status = engine->Submit(request, {std::move(row)},
                                         [self](size_t, RowResult result) { self->OnStep(std::move(result)); });
    if (!status.ok()) Finish(status);
  }

  void OnStep(RowResult result) {
    if (!result.status.ok()) {
      Finish(result.status);
      return;
    }
    // Runs on the executor thread, where an exception would end the process: sampling throws on
    // logits that are not finite (a model loaded with --allow_nonfinite_weights).
    int64_t token = 0;
    absl::Status picked;  // `done` is called outside the try: a throwing callback must not be answered twice
    try {
      at::Tensor logits = result.next_logits.unsqueeze(0);  // [1, vocab]
      const at::Tensor log_probs = at::log_softmax(logits[0], -1);
      // A NaN or +inf logit (or none finite) leaves no distribution to choose from, and makes every log-prob
      // NaN: their max says so in one reduction (-inf alone is a token the model rules out).
      if (std::isnan(log_probs.max().item<float>())) {
        picked = NotANumberError(absl::StrCat("the next-token scores at generated token ", generation.tokens.size()));
      } else {
        token = PickNextTokens(logits, options, generator)[0].item<int64_t>();
        generation.log_probs.push_back(log_probs[token].item<float>());
      }
    } catch (const std::exception& e) {
      picked = StatusFromException(e, "choosing the next token");
    }
    if (!picked.ok()) {
      Finish(picked);
      return;
    }
    generation.tokens.push_back(token);
    if (on_token) on_token(token, generation.log_probs.back());
    generation.stopped =
        std::find(stops.begin(), stops.end(), token) != stops.end() || (should_stop && should_stop(generation.tokens));
    if (generation.stopped || static_cast<int64_t>(generation.tokens.size()) >= options.max_new_tokens) {
      Finish(std::move(generation));
      return;
    }
    Submit({token});
  }
};

}  // namespace

void GenerateAsync(BatchingEngine& engine, std::shared_ptr<Request> request, const ModelConfig& config,
                   std::vector<int64_t> prompt, const GenerationOptions& options,
                   std::function<void(absl::StatusOr<Generation>)> done, TokenCallback on_token,
                   StopCheck should_stop) {
  if (absl::Status s = CheckGenerationOptions(options); !s.ok()) return done(s);
  if (prompt.empty()) return done(absl::InvalidArgumentError("prompt must hold at least one token"));
  absl::StatusOr<std::unique_ptr<BatchingEngine::Reservation>> kv_cache =
      engine.ReserveKvCache(static_cast<int64_t>(prompt.size()) + options.max_new_tokens, "generation.max_new_tokens");
  if (!kv_cache.ok()) return done(kv_cache.status());
  auto run = std::make_shared<GenerationRun>();
  run->kv_cache = std::move(*kv_cache);
  run->engine = &engine;
  run->request = std::move(request);
  run->options = options;
  run->stops = StopTokens(config, options);
  run->state = std::make_shared<DecodeState>(config.num_layers, /*keeps_decoding=*/true);
  run->generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  run->done = std::move(done);
  run->on_token = std::move(on_token);
  run->should_stop = std::move(should_stop);
  run->Submit(std::move(prompt));
}

}  // namespace attribution::engine
