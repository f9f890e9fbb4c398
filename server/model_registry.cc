// SPDX-License-Identifier: Apache-2.0
#include "server/model_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "engine/common/files.h"
#include "engine/common/monotonic_clock.h"
#include "engine/common/status_macros.h"
#include "engine/model/quantization.h"
#include "engine/model/torch_errors.h"
#include "engine/tokenizer/id_only_tokenizer.h"
#include "server/model_digest.h"
#include "server/user_text.h"

namespace attribution::server {
namespace {

absl::Status Annotate(const absl::Status& status, const ModelSpec& spec) {
  return absl::Status(status.code(), absl::StrCat("model \"", spec.name, "\" (", spec.path, "): ", status.message()));
}

// The directory's tokenizer; without tokenizer.json and tokenizer.model, one that serves token ids
// only (text requests get FAILED_PRECONDITION), with the special ids the model's config names.
absl::StatusOr<std::unique_ptr<engine::Tokenizer>> LoadTokenizer(const std::string& dir,
                                                                 const engine::ModelConfig& config) {
  if (engine::FileExists(dir + "/tokenizer.json") || engine::FileExists(dir + "/tokenizer.model")) {
    return engine::Tokenizer::Load(dir);
  }
  engine::SpecialTokens special{.bos = config.bos_token_id, .pad = config.pad_token_id, .unk = config.unk_token_id};
  if (!config.eos_token_ids.empty()) special.eos = config.eos_token_ids.front();
  return std::make_unique<engine::IdOnlyTokenizer>(dir, config.vocab_size, special);
}

// `step` names the stage LoadModel is in, for the message of an exception that escapes it.
absl::StatusOr<std::unique_ptr<ServedModel>> LoadModel(const ModelSpec& spec, const char*& step) {
  auto served = std::make_unique<ServedModel>();
  served->spec = spec;
  engine::LoadOptions options;
  options.device = spec.device;
  options.allow_nonfinite_weights = spec.allow_nonfinite_weights;
  options.pack_weights_for_few_rows = spec.pack_weights_for_few_rows;
  ASSIGN_OR_RETURN(options.dtype, engine::ParseDtype(spec.dtype));
  // One spelling per dtype ("fp32" and "float32" load the same model): ListModels, the log and model_digest
  // read it, and a batch job's fingerprint holds it, so two replicas configured each way must agree.
  served->spec.dtype = engine::DtypeName(options.dtype);
  ASSIGN_OR_RETURN(options.quantization, engine::ParseQuantization(spec.quantization));
  options.four_bit = {.block_size = spec.quantization_block_size, .double_quantization = spec.double_quantization};
  // A folder being replaced (renamed over, or its files copied over) while it loads gave old weights beside a new
  // tokenizer, under the new files' digest. When it fails here the load below says why, or the check after it
  // refuses a load that the folder's files changed under.
  const absl::StatusOr<std::string> files_before = ModelFilesIdentity(spec.path);
  step = "loading the model";
  ASSIGN_OR_RETURN(std::unique_ptr<engine::CausalLM> model, engine::CausalLM::Load(spec.path, options));
  served->model = std::move(model);
  // Read right after the load, while the weights are in the page cache: one more pass over them.
  step = "computing the weights digest";
  const absl::Time digest_start = MonotonicNow();
  ASSIGN_OR_RETURN(served->weights_digest, ModelFilesDigest(spec.path));
  served->digest_seconds = absl::ToDoubleSeconds(MonotonicNow() - digest_start);
  const engine::LoadOptions& loaded = served->model->options();
  const bool four_bit = engine::IsFourBit(loaded.quantization);
  served->model_digest =
      LoadedModelDigest(served->weights_digest, served->spec.dtype, engine::QuantizationName(loaded.quantization),
                        four_bit ? loaded.four_bit.block_size : 0, four_bit && loaded.four_bit.double_quantization);
  step = "loading the tokenizer";
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Tokenizer> tokenizer, LoadTokenizer(spec.path, served->model->config()));
  if (tokenizer->vocab_size() > served->model->config().vocab_size) {
    const char* file = engine::FileExists(spec.path + "/tokenizer.json") ? "tokenizer.json" : "tokenizer.model";
    return absl::InvalidArgumentError(absl::StrCat(spec.path, "/", file, " has ", tokenizer->vocab_size(),
                                                   " tokens, more than the vocab_size ",
                                                   served->model->config().vocab_size, " of config.json"));
  }
  served->tokenizer = std::move(tokenizer);
  if (!files_before.ok() || ModelFilesIdentity(spec.path).value_or("") != *files_before) {
    return absl::FailedPreconditionError(
        "its files changed while it loaded (replaced or rewritten): start the server again once the checkpoint is "
        "in place");
  }
  step = "starting the batching engine";
  ASSIGN_OR_RETURN(served->engine,
                   engine::BatchingEngine::Create(engine::MakeModelExecutor(served->model), spec.engine));
  served->attributor = std::make_unique<engine::Attributor>(served->model, served->engine.get(), spec.limits);
  return served;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const std::vector<ModelSpec>& specs, const std::function<void(const ModelSpec&)>& before_each) {
  auto registry = std::unique_ptr<ModelRegistry>(new ModelRegistry());
  for (const ModelSpec& spec : specs) {
    if (before_each) before_each(spec);
    const char* step = "reading the model spec";
    absl::StatusOr<std::unique_ptr<ServedModel>> served = absl::InternalError("not loaded");
    // The engine returns statuses; this net keeps an exception it failed to catch from ending the
    // process, and says where it came from.
    try {
      served = LoadModel(spec, step);
    } catch (const std::exception& e) {
      served = engine::StatusFromException(e, step);
    }
    if (!served.ok()) return Annotate(served.status(), spec);
    registry->models_.push_back(std::move(*served));
  }
  return registry;
}

absl::StatusOr<const ServedModel*> ModelRegistry::Find(const std::string& name) const {
  std::vector<std::string> names;
  for (const auto& m : models_) {
    if (m->spec.name == name) return m.get();
    names.push_back(m->spec.name);
  }
  return absl::NotFoundError(absl::StrCat("model: no model named ", QuoteUserText(name),
                                          " (this server holds: ", absl::StrJoin(names, ", "), ")"));
}

void ModelRegistry::Shutdown() {
  for (auto& m : models_) m->engine->Shutdown();
}

}  // namespace attribution::server
