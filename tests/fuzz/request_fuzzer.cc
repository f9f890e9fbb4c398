// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: the server's request path without gRPC. Byte 0 picks the RPC (Attribute, Generate,
// Logprobs), the rest is that request as protobuf binary. The request is converted and validated as
// the service does (server/conversion.h), and a valid one runs through the engine (attributor,
// generation or scoring) and back into a response, which must serialize and parse again (every string
// field valid UTF-8); a refusal must be a client error, never INTERNAL.
//
// The model is the committed default model's weights (models/tiny-qa-llama, vocabulary 4000) with the
// byte-level BPE test tokenizer "llama3" from $ATTRIBUTION_TEST_TOKENIZERS (1200 tokens, so ids past
// the tokenizer's are reachable too): its own SentencePiece tokenizer cannot load in a sanitized
// process that also links the system protobuf (see sentencepiece_backend.cc). Costs are capped before
// conversion so one run takes milliseconds: at most 4 integration steps, samples and new tokens, 16
// token ids per input, 4 feature groups; the model's limits cap the tokens at 24.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "engine/scheduler/engine_generation.h"
#include "server/conversion.h"
#include "server/model_registry.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing/notification.h"

namespace attribution::server {
namespace {

constexpr int64_t kMaxTopK = 20;

// A model folder in the scratch folder: links to the default model's config and weights, and the
// test tokenizer.
std::string ModelDir() {
  const char* tokenizers = std::getenv("ATTRIBUTION_TEST_TOKENIZERS");
  if (tokenizers == nullptr) {
    std::fprintf(stderr, "request_fuzzer: set ATTRIBUTION_TEST_TOKENIZERS to tools/make_test_tokenizers.py's output\n");
    std::exit(2);
  }
  const std::string dir = fuzz::ScratchDir() + "/model";
  mkdir(dir.c_str(), 0700);
  const std::string model = ATTRIBUTION_DEFAULT_MODEL_DIR, tokenizer = std::string(tokenizers) + "/llama3";
  for (const auto& [from, name] : {std::pair{model, "config.json"},
                                   {model, "generation_config.json"},
                                   {model, "model.safetensors"},
                                   {tokenizer, "tokenizer.json"},
                                   {tokenizer, "tokenizer_config.json"}}) {
    const std::string link = dir + "/" + name;
    unlink(link.c_str());
    if (symlink((from + "/" + name).c_str(), link.c_str()) != 0) std::abort();
  }
  return dir;
}

const ServedModel& DefaultModel() {
  static const ModelRegistry* registry = [] {
    ModelSpec spec;
    spec.name = "default";
    spec.path = ModelDir();
    spec.engine.max_queue_delay = absl::ZeroDuration();
    spec.limits.max_tokens = 24;
    spec.limits.max_exact_shapley_features = 5;
    auto loaded = ModelRegistry::Load({spec});
    if (!loaded.ok()) {
      std::fprintf(stderr, "request_fuzzer: %s\n", std::string(loaded.status().message()).c_str());
      std::abort();
    }
    return loaded->release();  // lives as long as the process: libFuzzer never returns from its loop
  }();
  return *registry->models().front();
}

// A positive count above `cap` (or 0, "the default") becomes one in [1, cap]; negative ones stay, so
// validation still sees them.
template <typename Int>
Int Capped(Int value, Int cap) {
  return value == 0 || value > cap ? 1 + value % cap : value;
}

void CapInput(v1::Input* input) {
  if (input->token_ids_size() > 16) input->mutable_token_ids()->Truncate(16);
}

void CapGeneration(v1::GenerationSettings* generation) {
  generation->set_max_new_tokens(Capped(generation->max_new_tokens(), 4));
}

// Serializes `response` and parses it back: protobuf refuses string fields that are not UTF-8.
template <typename Response>
void CheckWireSafe(const Response& response) {
  std::string wire;
  FUZZ_CHECK(response.SerializeToString(&wire));
  Response parsed;
  FUZZ_CHECK(parsed.ParseFromString(wire));
}

// Runs `start(done)` and waits for `done`'s status or value.
template <typename T, typename Start>
absl::StatusOr<T> Wait(Start start) {
  test_support::Notification finished;
  absl::StatusOr<T> result = absl::InternalError("no answer");
  start([&](absl::StatusOr<T> answer) {
    result = std::move(answer);
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

// A request the server refuses must be refused as the client's error, never as INTERNAL or a crash.
void CheckRefusal(const absl::Status& status) {
  const absl::StatusCode code = status.code();
  const bool client_error = code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kOutOfRange ||
                            code == absl::StatusCode::kFailedPrecondition ||
                            code == absl::StatusCode::kResourceExhausted;
  // ATTRIBUTION_FUZZ_VERBOSE=1 shows every refusal (to see why a seed stops short of the engine).
  static const bool verbose = std::getenv("ATTRIBUTION_FUZZ_VERBOSE") != nullptr;
  if (!client_error || verbose) std::fprintf(stderr, "request_fuzzer: refused with %s\n", status.ToString().c_str());
  FUZZ_CHECK(client_error);
}

void RunAttribute(v1::AttributeRequest& proto, const ServedModel& model) {
  // Only fields that are set: a set but empty message means something else than an absent one.
  if (proto.has_prompt()) CapInput(proto.mutable_prompt());
  if (proto.has_target()) CapInput(proto.mutable_target());
  if (proto.has_foil()) CapInput(proto.mutable_foil());
  CapGeneration(proto.mutable_generation());  // unset and empty settings both mean the defaults
  proto.set_n_steps(Capped(proto.n_steps(), 4));
  proto.set_n_samples(Capped(proto.n_samples(), 4));
  if (proto.feature_groups_size() > 4)
    proto.mutable_feature_groups()->DeleteSubrange(4, proto.feature_groups_size() - 4);
  for (auto& group : *proto.mutable_feature_groups()) {
    if (group.has_baseline()) CapInput(group.mutable_baseline());
  }
  if (proto.has_feature_range() && proto.feature_range().has_baseline()) {
    CapInput(proto.mutable_feature_range()->mutable_baseline());
  }
  absl::StatusOr<AttributeCall> call = ToAttributeCall(proto, model, absl::InfiniteFuture());
  if (!call.ok()) return CheckRefusal(call.status());
  auto result = Wait<engine::AttributionResult>([&](auto done) {
    model.attributor->Attribute(model.engine->NewRequest(call->request.priority), call->request, done);
  });
  if (!result.ok()) return CheckRefusal(result.status());
  v1::AttributeResponse response;
  ToAttributeResponse(*result, *call, model, &response);
  CheckWireSafe(response);
}

void RunGenerate(v1::GenerateRequest& proto, const ServedModel& model) {
  if (proto.has_prompt()) CapInput(proto.mutable_prompt());
  CapGeneration(proto.mutable_generation());
  absl::StatusOr<GenerateCall> call = ToGenerateCall(proto, model);
  if (!call.ok()) return CheckRefusal(call.status());
  auto generation = Wait<engine::Generation>([&](auto done) {
    engine::GenerateAsync(*model.engine, model.engine->NewRequest(call->priority), model.model->config(),
                          call->prompt.encoding.ids, call->options, done);
  });
  if (!generation.ok()) return CheckRefusal(generation.status());
  v1::GenerateResponse response;
  ToGenerateResponse(*generation, *call, model, &response);
  CheckWireSafe(response);
}

void RunLogprobs(v1::LogprobsRequest& proto, const ServedModel& model) {
  if (proto.has_prompt()) CapInput(proto.mutable_prompt());
  if (proto.has_target()) CapInput(proto.mutable_target());
  absl::StatusOr<LogprobsCall> call = ToLogprobsCall(proto, model, kMaxTopK);
  if (!call.ok()) return CheckRefusal(call.status());
  auto scores = Wait<engine::TargetScores>([&](auto done) {
    engine::ScoreTarget(*model.engine, model.engine->NewRequest(call->priority), call->prompt.encoding.ids,
                        call->target.encoding.ids, call->top_k, done);
  });
  if (!scores.ok()) return CheckRefusal(scores.status());
  v1::LogprobsResponse response;
  ToLogprobsResponse(*scores, *call, model, &response);
  CheckWireSafe(response);
}

}  // namespace
}  // namespace attribution::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace server = attribution::server;
  const server::ServedModel& model = server::DefaultModel();
  if (size < 1) return 0;
  const int size_left = static_cast<int>(size - 1);
  switch (data[0] % 3) {
    case 0:
      if (server::v1::AttributeRequest proto; proto.ParseFromArray(data + 1, size_left))
        server::RunAttribute(proto, model);
      break;
    case 1:
      if (server::v1::GenerateRequest proto; proto.ParseFromArray(data + 1, size_left))
        server::RunGenerate(proto, model);
      break;
    case 2:
      if (server::v1::LogprobsRequest proto; proto.ParseFromArray(data + 1, size_left))
        server::RunLogprobs(proto, model);
      break;
  }
  return 0;
}
