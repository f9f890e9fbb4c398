// SPDX-License-Identifier: Apache-2.0
#include "server/conversion.h"

#include <google/protobuf/descriptor.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/attribution/component_attribution.h"
#include "engine/attribution/methods.h"
#include "engine/common/build_info.h"
#include "engine/common/exact_number.h"
#include "engine/common/monotonic_clock.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/continuation.h"
#include "server/conversion_parts.h"
#include "server/user_text.h"

namespace attribution::server {
namespace {

using engine::AttributionMethod;
using engine::Priority;

// What follows the prompt: a target is scored in one row that holds it whole; a generation never feeds its
// last new token back, so on GPT-2 it may end one past the learned positions, as transformers' generate does.
enum class AfterPrompt { kScoredTarget, kGeneratedTokens };

// The most tokens a sequence of this model may hold: the server's limit, the most one request may queue in
// the engine, and GPT-2's learned positions.
int64_t MaxSequenceTokens(const ServedModel& model, AfterPrompt after = AfterPrompt::kScoredTarget) {
  const engine::ModelConfig& config = model.model->config();
  const int64_t max_tokens = std::min(model.spec.limits.max_tokens, model.attributor->limits().max_queued_tokens);
  if (config.architecture != engine::Architecture::kGpt2) return max_tokens;
  const int64_t unfed = after == AfterPrompt::kGeneratedTokens ? 1 : 0;
  return std::min(max_tokens, config.max_position_embeddings + unfed);
}

// "N (this model's limits.max_tokens)": MaxSequenceTokens with the bound that sets it, so a refused client
// knows which setting or model property it met.
std::string DescribeSequenceLimit(const ServedModel& model, AfterPrompt after = AfterPrompt::kScoredTarget) {
  const int64_t max_tokens = MaxSequenceTokens(model, after);
  const char* bound = "this model's limits.max_tokens";
  if (max_tokens < model.spec.limits.max_tokens) {
    bound = max_tokens == model.attributor->limits().max_queued_tokens ? "this model's engine.max_queued_tokens"
            : after == AfterPrompt::kGeneratedTokens
                ? "GPT-2's learned positions and the last new token, which is never fed back"
                : "GPT-2's learned positions";
  }
  return absl::StrCat(max_tokens, " (", bound, ")");
}

// A prompt must be given even when the tokenizer would add tokens (bos) to empty text. Its length is
// checked at once, before a target or choices are tokenized against it.
absl::StatusOr<ResolvedInput> ResolvePrompt(const v1::Input& prompt, bool no_special_tokens, const ServedModel& model,
                                            AfterPrompt after = AfterPrompt::kScoredTarget) {
  if (!IsSet(prompt)) return Invalid("prompt", "must not be empty (set text or token_ids)");
  ASSIGN_OR_RETURN(ResolvedInput resolved, Resolve(prompt, "prompt", model, !no_special_tokens));
  if (resolved.empty()) return Invalid("prompt", "must hold at least one token (set text or token_ids)");
  const int64_t tokens = static_cast<int64_t>(resolved.encoding.ids.size());
  const int64_t max_tokens = MaxSequenceTokens(model, after);
  if (tokens >= max_tokens) {
    return Invalid("prompt", absl::StrCat(tokens, " tokens leave no room for a target or new tokens within ",
                                          DescribeSequenceLimit(model, after)));
  }
  return resolved;
}

// The engine's spelling of a token quantity, as its other enums have ParseX functions (the engine
// has none for TokenQuantity; the names follow the proto's, in lower case).
absl::StatusOr<engine::TokenQuantity> ParseTokenQuantity(const std::string& name) {
  if (name == "log_prob") return engine::TokenQuantity::kLogProb;
  if (name == "prob") return engine::TokenQuantity::kProb;
  if (name == "logit") return engine::TokenQuantity::kLogit;
  return absl::InvalidArgumentError(absl::StrCat("quantity \"", name, "\" is not supported (log_prob, prob, logit)"));
}

absl::StatusOr<AttributionMethod> ToMethod(v1::Method method) {
  return FromProtoEnum("method", method, v1::INTEGRATED_GRADIENTS, v1::Method_descriptor(),
                       &engine::ParseAttributionMethod);
}

v1::Method ToProtoMethod(AttributionMethod method) {
  return ToProtoEnum(engine::AttributionMethodName(method), &v1::Method_Parse);
}

absl::StatusOr<engine::TokenQuantity> ToQuantity(v1::Quantity quantity) {
  return FromProtoEnum("quantity", quantity, v1::LOG_PROB, v1::Quantity_descriptor(), &ParseTokenQuantity);
}

// Sets the baseline fields of `request` from the proto's baseline kind.
absl::Status ApplyBaseline(const v1::AttributeRequest& proto, const ServedModel& model,
                           engine::AttributionRequest& request) {
  const engine::SpecialTokens& special = model.tokenizer->special_tokens();
  const engine::ModelConfig& config = model.model->config();
  auto use = [&](std::optional<int64_t> id, std::optional<int64_t> fallback, const char* name) -> absl::Status {
    if (!id) id = fallback;
    if (!id) return Invalid("baseline", absl::StrCat("model \"", model.spec.name, "\" has no ", name, " token"));
    request.baseline_token_id = *id;
    return absl::OkStatus();
  };
  std::optional<int64_t> eos;
  if (!config.eos_token_ids.empty()) eos = config.eos_token_ids.front();
  if (proto.baseline_token_id() != 0 && proto.baseline() != v1::TOKEN_ID) {
    return Invalid("baseline_token_id", "is read only with baseline = TOKEN_ID");
  }
  switch (proto.baseline()) {
    case v1::BASELINE_UNSPECIFIED:
      request.baseline_token_id = 0;
      return absl::OkStatus();
    case v1::ZERO_EMBEDDING:
      if (!engine::IsGradientMethod(request.method)) {
        return Invalid("baseline", "ZERO_EMBEDDING applies to gradient methods only; perturbations replace tokens");
      }
      request.zero_embedding_baseline = true;
      return absl::OkStatus();
    case v1::PAD_TOKEN:
      return use(special.pad, config.pad_token_id, "pad");
    case v1::UNK_TOKEN:
      return use(special.unk, config.unk_token_id, "unk");
    case v1::EOS_TOKEN:
      return use(special.eos, eos, "eos");
    case v1::BOS_TOKEN:
      return use(special.bos, config.bos_token_id, "bos");
    case v1::TOKEN_ID:
      request.baseline_token_id = proto.baseline_token_id();
      return absl::OkStatus();
    default:
      return UnknownEnumValue("baseline", proto.baseline(), v1::BaselineKind_descriptor());
  }
}

absl::Status CheckSpan(const v1::FeatureGroup& group, absl::string_view field, int64_t prompt_length) {
  if (group.token_begin() < 0 || group.token_end() > prompt_length || group.token_begin() >= group.token_end()) {
    return Invalid(field, absl::StrCat("[", group.token_begin(), ", ", group.token_end(),
                                       ") is not a non-empty span of the ", prompt_length, " prompt tokens"));
  }
  return absl::OkStatus();
}

// One feature per token of [begin, end), leaving out special tokens unless include_special_tokens. A
// prompt without special tokens keeps the engine's default (every token a feature: no explicit spans).
absl::Status AddTokenFeatures(const v1::AttributeRequest& proto, const ServedModel& model, int64_t begin, int64_t end,
                              engine::AttributionRequest& request) {
  const int64_t prompt_length = static_cast<int64_t>(request.prompt_ids.size());
  std::vector<engine::FeatureSpan> features;
  for (int64_t p = begin; p < end; ++p) {
    if (proto.include_special_tokens() || !model.tokenizer->IsSpecial(request.prompt_ids[p])) {
      features.push_back({.begin = p, .end = p + 1});
    }
  }
  if (features.empty()) {
    return Invalid(proto.has_feature_range() ? "feature_range" : "prompt",
                   "holds only special tokens, which are no features by default (set include_special_tokens)");
  }
  if (static_cast<int64_t>(features.size()) < prompt_length) request.features = std::move(features);
  return absl::OkStatus();
}

// The settings `proto` set that `method` does not read: accepted (one set of settings may go with every method,
// as a data-set job's does), and named in the answer, since they changed nothing. Unset (0, UNSPECIFIED, false)
// is every method's default.
std::vector<std::string> UnreadSettings(const v1::AttributeRequest& proto, const engine::Method& method) {
  const struct {
    engine::MethodSetting bit;
    const char* field;
    bool set;
  } settings[] = {
      {engine::kReadsSteps, "n_steps", proto.n_steps() != 0},
      {engine::kReadsRule, "rule", proto.rule() != v1::INTEGRATION_RULE_UNSPECIFIED},
      {engine::kReadsSamples, "n_samples", proto.n_samples() != 0},
      {engine::kReadsStdev, "stdev", proto.stdev() != 0},
      // A seed that also seeded the sampled target (as the clients' one seed option sends it) decided it.
      {engine::kReadsSeed, "seed",
       proto.seed() != 0 && !(!IsSet(proto.target()) && proto.generation().temperature() > 0 &&
                              proto.generation().has_seed() && proto.generation().seed() == proto.seed())},
      {engine::kReadsSignedSaliency, "signed_saliency", proto.signed_saliency()},
      {engine::kReadsBaseline, "baseline", proto.baseline() != v1::BASELINE_UNSPECIFIED},
      {engine::kReadsTolerance, "completeness_tolerance", proto.completeness_tolerance() != 0},
  };
  const uint32_t reads =
      method.reads | (engine::ReadsBaselines(method.method, proto.want_faithfulness()) ? engine::kReadsBaseline : 0u);
  std::vector<std::string> unread;
  for (const auto& setting : settings) {
    if (setting.set && (reads & setting.bit) == 0) unread.push_back(setting.field);
  }
  // Whatever the method: every group with a baseline of its own leaves the request's baseline to no token (those
  // in no group keep their real values), and a given target leaves nothing to generate.
  const bool own_baselines = proto.feature_groups_size() > 0 &&
                             std::all_of(proto.feature_groups().begin(), proto.feature_groups().end(),
                                         [](const v1::FeatureGroup& group) { return group.has_baseline(); });
  if (own_baselines && (reads & engine::kReadsBaseline) != 0 && proto.baseline() != v1::BASELINE_UNSPECIFIED) {
    unread.push_back("baseline");
  }
  // A group's own baseline is read where the request's is (a method that puts no feature at a baseline reads
  // neither).
  const bool any_own_baseline = std::any_of(proto.feature_groups().begin(), proto.feature_groups().end(),
                                            [](const v1::FeatureGroup& group) { return group.has_baseline(); });
  if (any_own_baseline && (reads & engine::kReadsBaseline) == 0) {
    static const std::string kGroupBaseline = "feature_groups.baseline";  // a literal tripped GCC 12's -Warray-bounds
    unread.push_back(kGroupBaseline);
  }
  if (IsSet(proto.target()) && proto.has_generation() && proto.generation().ByteSizeLong() > 0) {
    unread.push_back("generation");
  }
  // How text becomes tokens, beside no text it applies to (static strings: literals trip -Warray-bounds, above).
  static const std::string kNoSpecialTokens = "no_special_tokens", kTargetTokenization = "target_tokenization";
  if (proto.no_special_tokens() && proto.prompt().text().empty()) unread.push_back(kNoSpecialTokens);
  const bool text_after_prompt =
      !proto.target().text().empty() || !proto.foil().text().empty() ||
      std::any_of(proto.choices().begin(), proto.choices().end(), [](const v1::Input& c) { return !c.text().empty(); });
  if (proto.target_tokenization() != v1::TARGET_TOKENIZATION_UNSPECIFIED && !text_after_prompt) {
    unread.push_back(kTargetTokenization);
  }
  return unread;
}

absl::Status ApplyFeatures(const v1::AttributeRequest& proto, const ServedModel& model,
                           engine::AttributionRequest& request) {
  const int64_t prompt_length = static_cast<int64_t>(request.prompt_ids.size());
  if (proto.feature_groups_size() == 0 && !proto.has_feature_range()) {
    return AddTokenFeatures(proto, model, 0, prompt_length, request);
  }
  if (proto.has_feature_range()) {
    if (proto.feature_groups_size() > 0)
      return Invalid("feature_range", "set feature_range or feature_groups, not both");
    RETURN_IF_ERROR(CheckSpan(proto.feature_range(), "feature_range", prompt_length));
    if (proto.feature_range().has_baseline()) {
      return Invalid("feature_range.baseline", "is not used; give per-feature baselines with feature_groups");
    }
    return AddTokenFeatures(proto, model, proto.feature_range().token_begin(), proto.feature_range().token_end(),
                            request);
  }
  // The baselines together are held to one text's bytes before any is tokenized, and to the tokens a row may hold
  // as each is read: 3,999 groups of 1 KB were all tokenized (1.3 s of a handler thread) before the engine refused
  // their sum.
  int64_t baseline_bytes = 0;
  for (const v1::FeatureGroup& group : proto.feature_groups()) {
    baseline_bytes += static_cast<int64_t>(group.baseline().text().size());
  }
  if (baseline_bytes > MaxTextBytes(model)) {
    return Invalid("feature_groups[].baseline.text",
                   absl::StrCat("the groups' baseline texts are ", baseline_bytes, " bytes together, over the ",
                                MaxTextBytes(model), " bytes that this model's limits.max_tokens of ",
                                model.spec.limits.max_tokens, " tokens allows"));
  }
  int64_t covered_until = 0, baseline_growth = 0;
  const bool baselines_read = engine::ReadsBaselines(request.method, proto.want_faithfulness());
  for (int i = 0; i < proto.feature_groups_size(); ++i) {
    const v1::FeatureGroup& group = proto.feature_groups(i);
    const std::string field = absl::StrCat("feature_groups[", i, "]");
    RETURN_IF_ERROR(CheckSpan(group, field, prompt_length));
    if (group.token_begin() < covered_until) {
      return Invalid(field, absl::StrCat("starts at token ", group.token_begin(),
                                         ", inside or before the previous group (groups are disjoint and in order)"));
    }
    covered_until = group.token_end();
    // Special tokens keep their real embeddings unless the request makes them features: a group does not.
    for (int64_t p = group.token_begin(); p < group.token_end() && !proto.include_special_tokens(); ++p) {
      if (model.tokenizer->IsSpecial(request.prompt_ids[p])) {
        return Invalid(field, absl::StrCat("holds the special token at position ", p,
                                           ", which is no feature by default: leave it out of the group, or set "
                                           "include_special_tokens"));
      }
    }
    engine::FeatureSpan span{.begin = group.token_begin(), .end = group.token_end()};
    if (group.has_baseline()) {  // set but empty deletes the span
      // Empty needs no tokenizer: a model without one (token ids only) refused a deletion as "takes token_ids".
      const bool deletes = group.baseline().text().empty() && group.baseline().token_ids_size() == 0;
      // Text is tokenized on its own, as the proto says: SentencePiece gives " blue" a word boundary of its own
      // ("▁", "▁blue"); read in place instead it cost a prompt decode and two encodes per group and joined
      // "blue" to the word before it, changing answers clients had (round 19).
      ASSIGN_OR_RETURN(ResolvedInput baseline,
                       deletes ? ResolvedInput{} : Resolve(group.baseline(), field + ".baseline", model, false));
      baseline_growth += std::max<int64_t>(
          0, static_cast<int64_t>(baseline.encoding.ids.size()) - (group.token_end() - group.token_begin()));
      // Rows hold the baselines only where they are read: unread, any length is accepted (UnreadSettings).
      if (baselines_read && prompt_length + baseline_growth > MaxSequenceTokens(model)) {
        return Invalid(field + ".baseline", absl::StrCat("with every group up to this one at its baseline a row holds ",
                                                         prompt_length + baseline_growth, " prompt tokens, over ",
                                                         DescribeSequenceLimit(model)));
      }
      span.baseline_ids = std::move(baseline.encoding.ids);
    }
    request.features.push_back(std::move(span));
  }
  return absl::OkStatus();
}

// Unset, max_new_tokens is its default, the operator's lower limit or as many as fit after `prompt`, whichever is
// fewest (at least one, so a prompt that leaves no room is still named): a default is never the error (a 40-token
// prompt on GPT-2's 64 positions was refused for the 25 the client never sent).
absl::StatusOr<engine::GenerationOptions> ToGenerationOptions(const v1::GenerationSettings& proto,
                                                              const ResolvedInput& prompt, const ServedModel& model,
                                                              AfterPrompt after) {
  engine::GenerationOptions options;
  const int64_t max_new = model.spec.limits.max_new_tokens;
  const int64_t room = MaxSequenceTokens(model, after) - static_cast<int64_t>(prompt.encoding.ids.size());
  options.max_new_tokens = proto.max_new_tokens() != 0
                               ? proto.max_new_tokens()
                               : std::max<int64_t>(1, std::min({options.max_new_tokens, max_new, room}));
  // 0 is the default, never refused: the range names 1 as the least a client may set.
  RETURN_IF_ERROR(
      engine::CheckWithinLimit(options.max_new_tokens, 1, max_new, "generation.max_new_tokens", "max_new_tokens"));
  options.temperature = proto.temperature();
  if (!(proto.top_p() >= 0 && proto.top_p() <= 1)) {
    return Invalid("generation.top_p", absl::StrCat(proto.top_p(), " is outside [0, 1] (0: 1, no truncation)"));
  }
  if (proto.top_p() != 0) options.top_p = proto.top_p();
  options.top_k = proto.top_k();
  options.seed = proto.seed();
  options.ignore_stop_tokens = proto.ignore_stop_tokens();
  options.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  RETURN_IF_ERROR(InField("generation", engine::CheckGenerationOptions(options)));
  RETURN_IF_ERROR(
      engine::CheckTokenIds(options.stop_token_ids, "generation.stop_token_ids", model.model->config().vocab_size));
  return options;
}

// 32 bits from the operating system's entropy source: torch's CPU generator, as torch.manual_seed, reads only a
// seed's low 32 bits, so wider seeds would name one sample with many numbers (0 and 2^32 sample alike).
uint64_t FreshSeed() { return std::random_device()(); }

// The prompt fits alone (ResolvePrompt): what is over the limit is what follows it, named by `field`.
absl::Status CheckContinuationLength(const ResolvedInput& prompt, int64_t tokens, absl::string_view field,
                                     const ServedModel& model, AfterPrompt after = AfterPrompt::kScoredTarget) {
  const int64_t max_tokens = MaxSequenceTokens(model, after);
  if (static_cast<int64_t>(prompt.encoding.ids.size()) + tokens <= max_tokens) return absl::OkStatus();
  return Invalid(field, absl::StrCat(tokens, " tokens after the prompt's ", prompt.encoding.ids.size(), " exceed ",
                                     DescribeSequenceLimit(model, after)));
}

// Generated ids as the text they continue the prompt with, each token with its span.
ResolvedInput DecodeContinuation(const std::vector<int64_t>& ids, const std::vector<int64_t>& prompt_ids,
                                 const engine::Tokenizer& tokenizer) {
  engine::Continuation continuation = engine::DecodeContinuation(tokenizer, prompt_ids, ids);
  return {.text = std::move(continuation.text), .encoding = {.ids = ids, .spans = std::move(continuation.spans)}};
}

std::string SpanText(const ResolvedInput& input, const engine::Tokenizer& tokenizer, int64_t begin, int64_t end) {
  if (!input.encoding.spans.empty()) {
    const size_t from = input.encoding.spans[begin].begin, to = input.encoding.spans[end - 1].end;
    if (to > from) return engine::ToValidUtf8(input.text.substr(from, to - from));
  }
  // Ids given directly, or tokens the tokenizer added (bos): show the tokens themselves.
  std::string text;
  for (int64_t p = begin; p < end; ++p) text += tokenizer.TokenText(input.encoding.ids[p]);
  return engine::ToValidUtf8(text);
}

// Each text choice read as a continuation is tokenized with the whole prompt (the prompt alone and prompt +
// choice), on the thread that received the call: 256 choices after a 4,000-token prompt held a core for 12 s,
// past the call's deadline, and two such calls stalled every other call. The product is bounded instead.
constexpr int64_t kMaxChoicePromptTokens = int64_t{1} << 17;

absl::Status CheckChoicesTokenizing(const v1::AttributeRequest& proto, const ResolvedInput& prompt) {
  if (proto.target_tokenization() == v1::SEPARATE) return absl::OkStatus();
  int64_t continuations = 0;
  for (const v1::Input& choice : proto.choices()) continuations += choice.token_ids_size() == 0 ? 1 : 0;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.encoding.ids.size());
  if (continuations * prompt_tokens <= kMaxChoicePromptTokens) return absl::OkStatus();
  return Invalid("choices", absl::StrCat(continuations, " text choices after a ", prompt_tokens,
                                         "-token prompt: each is tokenized with the prompt, and this server takes at "
                                         "most ",
                                         kMaxChoicePromptTokens,
                                         " choice x prompt tokens; give the choices as "
                                         "token_ids, fewer of them, or set target_tokenization = SEPARATE"));
}

}  // namespace

absl::StatusOr<AttributeCall> ToAttributeCall(const v1::AttributeRequest& proto, const ServedModel& model,
                                              absl::Time deadline) {
  AttributeCall call;
  engine::AttributionRequest& request = call.request;
  std::vector<std::string> unknown_fields;
  RETURN_IF_ERROR(CheckWireTypes(proto, &unknown_fields));
  ASSIGN_OR_RETURN(call.prompt, ResolvePrompt(proto.prompt(), proto.no_special_tokens(), model));
  request.prompt_ids = call.prompt.encoding.ids;
  RETURN_IF_ERROR(CheckTargetTokenization(proto.target_tokenization()));  // also without a target
  if (proto.has_target() && !IsSet(proto.target())) {
    return Invalid("target", "is set but empty; omit the field to have the target generated");
  }
  if (IsSet(proto.target())) {
    ASSIGN_OR_RETURN(call.target,
                     ResolveTarget(proto.target(), "target", call.prompt, proto.target_tokenization(), model));
  }
  request.target_ids = call.target.encoding.ids;
  // Settings given beside a target are not read, but are checked as any other field is.
  if (call.target.empty() || proto.has_generation()) {
    // The attribution's rows hold the generated target whole: it is scored, every token fed.
    ASSIGN_OR_RETURN(engine::GenerationOptions generation,
                     ToGenerationOptions(proto.generation(), call.prompt, model, AfterPrompt::kScoredTarget));
    if (call.target.empty()) request.generation = generation;
  }
  RETURN_IF_ERROR(
      call.target.empty()
          ? CheckContinuationLength(call.prompt, request.generation.max_new_tokens, "generation.max_new_tokens", model)
          : CheckContinuationLength(call.prompt, request.target_ids.size(), "target", model));
  ASSIGN_OR_RETURN(request.quantity, ToQuantity(proto.quantity()));
  if (proto.has_foil() && !IsSet(proto.foil())) return Invalid("foil", "is set but empty");
  if (proto.contrastive() != IsSet(proto.foil())) {
    return proto.contrastive() ? Invalid("foil", "contrastive needs a foil (text or token_ids)")
                               : Invalid("contrastive", "a foil is given but contrastive is false");
  }
  if (proto.contrastive()) {
    if (call.target.empty()) return Invalid("target", "contrastive attribution needs a given target");
    ASSIGN_OR_RETURN(ResolvedInput foil,
                     ResolveTarget(proto.foil(), "foil", call.prompt, proto.target_tokenization(), model));
    if (foil.encoding.ids.size() != request.target_ids.size()) {
      return Invalid("foil", absl::StrCat("has ", foil.encoding.ids.size(), " tokens; the target has ",
                                          request.target_ids.size(), " (they must match)"));
    }
    request.foil_ids = foil.encoding.ids;
    call.foil = std::move(foil);
  }
  if (proto.choices_size() > model.spec.limits.max_choices) {
    return Invalid("choices", absl::StrCat(proto.choices_size(), " choices, over this model's limits.max_choices of ",
                                           model.spec.limits.max_choices));
  }
  RETURN_IF_ERROR(CheckChoicesTokenizing(proto, call.prompt));
  for (int i = 0; i < proto.choices_size(); ++i) {
    const std::string field = absl::StrCat("choices[", i, "]");
    if (!IsSet(proto.choices(i))) return Invalid(field, "is empty");
    ASSIGN_OR_RETURN(ResolvedInput choice,
                     ResolveTarget(proto.choices(i), field, call.prompt, proto.target_tokenization(), model));
    if (choice.encoding.ids.size() != 1) {
      return Invalid(field, absl::StrCat("has ", choice.encoding.ids.size(), " tokens; a choice is one token"));
    }
    request.choice_ids.push_back(choice.encoding.ids[0]);
  }
  ASSIGN_OR_RETURN(request.method, ToMethod(proto.method()));
  call.unread_settings = UnreadSettings(proto, engine::MethodOf(request.method));
  // Fields this server's proto lacks (a newer client's settings, or ones an older proto had): never read.
  for (const std::string& field : unknown_fields) {
    call.unread_settings.push_back(absl::StrCat(field, " (not in this server's attribution.proto)"));
  }
  RETURN_IF_ERROR(ApplyFeatures(proto, model, request));
  RETURN_IF_ERROR(ApplyBaseline(proto, model, request));
  request.completeness_tolerance = proto.completeness_tolerance();
  // With a tolerance, n_steps bounds the orders tried; unset, the server's limit does.
  // Unset, a default above the operator's limit is lowered to it (it was refused, naming a value never sent).
  if (proto.n_steps() != 0)
    request.n_steps = proto.n_steps();
  else if (request.completeness_tolerance > 0)
    request.n_steps = model.spec.limits.max_steps;
  else
    request.n_steps = std::min(request.n_steps, model.spec.limits.max_steps);
  ASSIGN_OR_RETURN(request.rule, ToRule(proto.rule(), /*to_tolerance=*/request.completeness_tolerance > 0));
  request.n_samples =
      proto.n_samples() != 0 ? proto.n_samples() : std::min(request.n_samples, model.spec.limits.max_samples);
  // Settings the method does not read are checked as any other field is (0: the method's default); the answer
  // names them (UnreadSettings).
  const engine::AttributionLimits& limits = model.spec.limits;
  RETURN_IF_ERROR(engine::CheckWithinLimit(proto.n_steps(), 0, limits.max_steps, "n_steps", "max_steps"));
  RETURN_IF_ERROR(engine::CheckWithinLimit(proto.n_samples(), 0, limits.max_samples, "n_samples", "max_samples"));
  if (!(proto.stdev() >= 0 && proto.stdev() <= 10)) {
    return Invalid("stdev", absl::StrCat(ExactNumber(proto.stdev()), " is outside [0, 10]"));
  }
  request.stdev = proto.stdev();
  request.seed = proto.seed();
  request.saliency_abs = !proto.signed_saliency();
  request.want_token_matrix = proto.want_token_matrix();
  request.want_faithfulness = proto.want_faithfulness();
  ASSIGN_OR_RETURN(request.priority, ToPriority(proto.priority()));
  request.deadline = deadline;
  return call;
}

namespace {

// The settings the method read, as it read them (defaults and limits applied).
void FillSettingsUsed(const engine::AttributionRequest& request, v1::SettingsUsed* out) {
  const uint32_t reads = engine::MethodOf(request.method).reads;
  if (reads & engine::kReadsSteps) out->set_n_steps(static_cast<int32_t>(request.n_steps));
  if (reads & engine::kReadsRule) out->set_rule(ToProtoRule(request.rule));
  if (reads & engine::kReadsSamples) out->set_n_samples(static_cast<int32_t>(request.n_samples));
  if (reads & engine::kReadsStdev) out->set_stdev(request.stdev);
  if (reads & engine::kReadsSeed) out->set_seed(request.seed);
  if (engine::ReadsBaselines(request.method, request.want_faithfulness)) {
    if (request.zero_embedding_baseline) {
      out->set_baseline(v1::ZERO_EMBEDDING);
    } else {
      out->set_baseline(v1::TOKEN_ID);
      out->set_baseline_token_id(request.baseline_token_id);
    }
  }
}

}  // namespace

void ToAttributeResponse(const engine::AttributionResult& result, const AttributeCall& call, const ServedModel& model,
                         v1::AttributeResponse* out) {
  const engine::Tokenizer& tokenizer = *model.tokenizer;
  out->set_model(model.spec.name);
  out->set_model_digest(model.model_digest);
  out->set_method(ToProtoMethod(call.request.method));
  for (const std::string& setting : call.unread_settings) out->add_unread_settings(setting);
  FillSettingsUsed(call.request, out->mutable_settings_used());
  FillTokens(call.prompt, tokenizer, out->mutable_prompt_tokens());
  const ResolvedInput target =
      call.target.empty() ? DecodeContinuation(result.target_ids, call.request.prompt_ids, tokenizer) : call.target;
  FillTokens(target, tokenizer, out->mutable_target_tokens());
  if (!call.foil.encoding.ids.empty()) FillTokens(call.foil, tokenizer, out->mutable_foil_tokens());
  for (int i = 0; i < out->target_tokens_size() && i < static_cast<int>(result.target_log_probs.size()); ++i) {
    out->mutable_target_tokens(i)->set_log_prob(static_cast<float>(result.target_log_probs[i]));
  }
  for (int i = 0; i < out->foil_tokens_size() && i < static_cast<int>(result.foil_log_probs.size()); ++i) {
    out->mutable_foil_tokens(i)->set_log_prob(static_cast<float>(result.foil_log_probs[i]));
  }
  const int64_t prompt_length = static_cast<int64_t>(call.request.prompt_ids.size());
  for (size_t f = 0; f < result.sequence.size(); ++f) {
    const int64_t begin = call.request.features.empty() ? f : call.request.features[f].begin;
    const int64_t end = call.request.features.empty() ? f + 1 : std::min(prompt_length, call.request.features[f].end);
    v1::Feature* feature = out->add_features();
    feature->set_token_begin(begin);
    feature->set_token_end(end);
    feature->set_text(SpanText(call.prompt, tokenizer, begin, end));
  }
  if (!call.request.features.empty()) {
    std::vector<bool> in_feature(prompt_length, false);
    for (const engine::FeatureSpan& span : call.request.features) {
      std::fill(in_feature.begin() + span.begin, in_feature.begin() + std::min(prompt_length, span.end), true);
    }
    for (int64_t p = 0; p < prompt_length; ++p) {
      if (!in_feature[p]) out->add_fixed_tokens(p);
    }
  }
  out->mutable_sequence_attribution()->Assign(result.sequence.begin(), result.sequence.end());
  if (call.request.want_token_matrix) {
    for (const std::vector<double>& row : result.per_token) {
      out->add_token_matrix()->mutable_values()->Assign(row.begin(), row.end());
    }
  }
  out->set_objective(result.objective);
  if (result.convergence_delta) out->set_convergence_delta(*result.convergence_delta);
  out->set_integration_steps(static_cast<int32_t>(result.integration_steps));
  if (result.tolerance_met) out->set_tolerance_met(*result.tolerance_met);
  if (const std::optional<engine::Faithfulness>& f = result.faithfulness) {
    v1::Faithfulness* faithfulness = out->mutable_faithfulness();
    faithfulness->mutable_percents()->Assign(f->percents.begin(), f->percents.end());
    faithfulness->mutable_features_at()->Assign(f->features_at.begin(), f->features_at.end());
    faithfulness->set_full(f->full);
    faithfulness->set_empty(f->empty);
    faithfulness->mutable_deletion()->Assign(f->deletion.begin(), f->deletion.end());
    faithfulness->mutable_insertion()->Assign(f->insertion.begin(), f->insertion.end());
    faithfulness->set_comprehensiveness_aopc(f->comprehensiveness_aopc);
    faithfulness->set_sufficiency_aopc(f->sufficiency_aopc);
  }
  v1::RunStats* stats = out->mutable_stats();
  stats->set_rows(result.rows);
  stats->set_forward_passes(result.forward_passes);
  stats->set_backward_passes(result.backward_passes);
  stats->set_queue_seconds(absl::ToDoubleSeconds(result.queue_time));
  stats->set_device_seconds(absl::ToDoubleSeconds(result.device_time));
}

absl::StatusOr<GenerateCall> ToGenerateCall(const v1::GenerateRequest& proto, const ServedModel& model) {
  GenerateCall call;
  RETURN_IF_ERROR(CheckWireTypes(proto));
  ASSIGN_OR_RETURN(call.prompt,
                   ResolvePrompt(proto.prompt(), proto.no_special_tokens(), model, AfterPrompt::kGeneratedTokens));
  ASSIGN_OR_RETURN(call.options,
                   ToGenerationOptions(proto.generation(), call.prompt, model, AfterPrompt::kGeneratedTokens));
  // Without a seed a user expects a fresh sample each call; the seed drawn is reported to reproduce it. A
  // greedy call samples nothing: a seed drawn for it (and reported) read as if its tokens depended on it.
  if (!proto.generation().has_seed() && call.options.temperature > 0) call.options.seed = FreshSeed();
  RETURN_IF_ERROR(CheckContinuationLength(call.prompt, call.options.max_new_tokens, "generation.max_new_tokens", model,
                                          AfterPrompt::kGeneratedTokens));
  ASSIGN_OR_RETURN(call.priority, ToPriority(proto.priority()));
  if (proto.stop_size() > kMaxStopStrings) {
    return Invalid("stop", absl::StrCat(proto.stop_size(), " strings, more than the limit of ", kMaxStopStrings));
  }
  for (int i = 0; i < proto.stop_size(); ++i) {
    const std::string& stop = proto.stop(i);
    if (stop.empty()) return Invalid(absl::StrCat("stop[", i, "]"), "is empty");
    if (stop.size() > kMaxStopStringBytes) {
      return Invalid(absl::StrCat("stop[", i, "]"),
                     absl::StrCat(stop.size(), " bytes, more than the limit of ", kMaxStopStringBytes));
    }
    // Stop strings are found in the generated text, which leaves special tokens out: "<|im_end|>" never
    // stopped a generation that produced that token (a prompt or target spelled so is the token). Exactly one
    // special token stops as its id would (OpenAI-style code sends stop=["<|im_end|>"]); one inside other text
    // could never match, and is refused.
    if (absl::StatusOr<engine::Encoding> tokens = model.tokenizer->Encode(stop, /*add_special_tokens=*/false);
        tokens.ok()) {
      const std::vector<int64_t>& ids = tokens->ids;
      if (ids.size() == 1 && model.tokenizer->IsSpecial(ids[0]) && !call.options.ignore_stop_tokens) {
        std::vector<int64_t>& stops = call.options.stop_token_ids;
        // Given ids replace the model's eos ids: those still stop beside this one.
        if (stops.empty()) stops = engine::StopTokens(model.model->config(), call.options);
        if (std::find(stops.begin(), stops.end(), ids[0]) == stops.end()) stops.push_back(ids[0]);
        RETURN_IF_ERROR(InField("stop", engine::CheckGenerationOptions(call.options)));
        continue;
      }
      for (int64_t id : ids) {
        if (!model.tokenizer->IsSpecial(id)) continue;
        return Invalid(absl::StrCat("stop[", i, "]"),
                       absl::StrCat("holds the special token ", QuoteUserText(model.tokenizer->TokenText(id)), " (id ",
                                    id, ") beside other text, which the generated text leaves out: ",
                                    "stop on the token alone, or give its id in generation.stop_token_ids"));
      }
    }
    call.stop.push_back(stop);
  }
  return call;
}

size_t FindStop(absl::string_view text, const std::vector<std::string>& stop) {
  size_t earliest = absl::string_view::npos;
  for (const std::string& s : stop) earliest = std::min(earliest, text.find(s));
  return earliest;
}

engine::StopCheck ToStopCheck(std::shared_ptr<const GenerateCall> call, const engine::Tokenizer& tokenizer) {
  if (call->stop.empty()) return nullptr;
  // Decoding the whole continuation afresh after each token cost the executor a time cubic in the
  // generation's length (512 new tokens: 11 s of CPU beside 1 s of model work).
  auto decoder = std::make_shared<engine::ContinuationDecoder>(tokenizer, call->prompt.encoding.ids);
  return [decoder, call](const std::vector<int64_t>& tokens) {
    for (size_t i = decoder->size(); i < tokens.size(); ++i) decoder->Add(tokens[i]);
    return FindStop(decoder->continuation().text, call->stop) != std::string::npos;
  };
}

void ToGenerateResponse(const engine::Generation& generation, const GenerateCall& call, const ServedModel& model,
                        v1::GenerateResponse* out) {
  out->set_model(model.spec.name);
  FillTokens(call.prompt, *model.tokenizer, out->mutable_prompt_tokens());
  ResolvedInput continuation = DecodeContinuation(generation.tokens, call.prompt.encoding.ids, *model.tokenizer);
  // A stop string ended it: the text ends before it; the tokens that reach past keep offsets at the end.
  if (const size_t cut = FindStop(continuation.text, call.stop); cut != std::string::npos) {
    continuation.text.resize(cut);
    for (engine::TokenSpan& span : continuation.encoding.spans) {
      span.begin = std::min<size_t>(span.begin, cut);
      span.end = std::min<size_t>(span.end, cut);
    }
  }
  FillTokens(continuation, *model.tokenizer, out->mutable_tokens());
  for (int i = 0; i < out->tokens_size(); ++i) out->mutable_tokens(i)->set_log_prob(generation.log_probs[i]);
  out->set_text(
      engine::DecodedText(*model.tokenizer, continuation.encoding.ids, continuation.text, continuation.encoding.spans));
  out->set_text_bytes(continuation.text);
  out->set_stopped(generation.stopped);
  out->set_seed(call.options.seed);
  out->set_model_digest(model.model_digest);
}

void ToStreamedToken(int64_t id, float log_prob, const ServedModel& model, v1::Token* out) {
  SetTokenText(id, *model.tokenizer, out);
  // As the answer's text leaves it out: a streaming client (attribution-cli --stream) that skips special tokens
  // then shows what the text says, and finds stop strings where the server does.
  out->set_special(model.tokenizer->SkippedInText(id));
  out->set_log_prob(log_prob);
}

absl::StatusOr<LogprobsCall> ToLogprobsCall(const v1::LogprobsRequest& proto, const ServedModel& model,
                                            int64_t max_top_k) {
  LogprobsCall call;
  RETURN_IF_ERROR(CheckWireTypes(proto));
  ASSIGN_OR_RETURN(call.prompt, ResolvePrompt(proto.prompt(), proto.no_special_tokens(), model));
  if (!IsSet(proto.target())) return Invalid("target", "must hold at least one token (set text or token_ids)");
  ASSIGN_OR_RETURN(call.target,
                   ResolveTarget(proto.target(), "target", call.prompt, proto.target_tokenization(), model));
  RETURN_IF_ERROR(CheckContinuationLength(call.prompt, call.target.encoding.ids.size(), "target", model));
  // A model of few tokens has fewer alternatives than the server's limit.
  const int64_t most = std::min(max_top_k, model.model->config().vocab_size);
  if (proto.top_k() < 0 || proto.top_k() > most) {
    return Invalid("top_k", absl::StrCat(proto.top_k(), " is outside [0, ", most, "]"));
  }
  call.top_k = proto.top_k();
  ASSIGN_OR_RETURN(call.priority, ToPriority(proto.priority()));
  return call;
}

void ToLogprobsResponse(const engine::TargetScores& scores, const LogprobsCall& call, const ServedModel& model,
                        v1::LogprobsResponse* out) {
  const engine::Tokenizer& tokenizer = *model.tokenizer;
  out->set_model(model.spec.name);
  out->set_model_digest(model.model_digest);
  FillTokens(call.prompt, tokenizer, out->mutable_prompt_tokens());
  google::protobuf::RepeatedPtrField<v1::Token> tokens;
  FillTokens(call.target, tokenizer, &tokens);
  double total = 0;
  for (int t = 0; t < tokens.size(); ++t) {
    v1::TokenLogprob* entry = out->add_target();
    *entry->mutable_token() = tokens[t];
    entry->mutable_token()->set_log_prob(static_cast<float>(scores.log_probs[t]));
    total += scores.log_probs[t];
    if (t >= static_cast<int>(scores.top_ids.size())) continue;  // no alternatives asked for
    for (size_t k = 0; k < scores.top_ids[t].size(); ++k) {
      v1::TopToken* top = entry->add_top();
      SetTokenText(scores.top_ids[t][k], tokenizer, top);
      top->set_log_prob(static_cast<float>(scores.top_log_probs[t][k]));
    }
  }
  out->set_total_log_prob(total);
}

void ToModelInfo(const ServedModel& model, int64_t max_top_k, v1::ModelInfo* out) {
  const engine::ModelConfig& config = model.model->config();
  out->set_name(model.spec.name);
  out->set_architecture(engine::ArchitectureName(config.architecture));
  out->set_dtype(model.spec.dtype);
  const engine::LoadOptions& loaded = model.model->options();
  out->set_quantization(engine::QuantizationName(loaded.quantization));
  v1::QuantizationInfo* quantization = out->mutable_quantization_info();
  quantization->set_type(engine::QuantizationName(loaded.quantization));
  if (engine::IsFourBit(loaded.quantization)) {
    quantization->set_block_size(loaded.four_bit.block_size);
    quantization->set_double_quantization(loaded.four_bit.double_quantization);
  }
  quantization->set_from_checkpoint(model.model->prequantized());
  if (config.checkpoint_quantization) {
    quantization->set_checkpoint_compute_dtype(config.checkpoint_quantization->compute_dtype);
  }
  out->set_device(model.spec.device);
  out->set_resident_weight_bytes(model.model->ResidentWeightBytes());
  out->set_weights_digest(model.weights_digest);
  out->set_model_digest(model.model_digest);
  out->set_vocab_size(config.vocab_size);
  out->set_num_layers(config.num_layers);
  out->set_hidden_size(config.hidden_size);
  const engine::AttributionLimits& l = model.spec.limits;
  v1::Limits* limits = out->mutable_limits();
  limits->set_max_steps(l.max_steps);
  limits->set_max_samples(l.max_samples);
  limits->set_max_features(l.max_features);
  limits->set_max_exact_shapley_features(l.max_exact_shapley_features);
  limits->set_max_tokens(MaxSequenceTokens(model));
  limits->set_max_new_tokens(l.max_new_tokens);
  limits->set_max_top_k(max_top_k);
  limits->set_max_choices(l.max_choices);
  limits->set_max_rows(model.attributor->limits().max_rows);
  limits->set_max_queued_tokens(model.attributor->limits().max_queued_tokens);
  limits->set_max_queued_bytes(model.engine->max_bytes_per_request());
  limits->set_max_kv_cache_tokens(model.engine->max_kv_cache_tokens());
  limits->set_max_pairs(engine::ComponentLimits().max_pairs);
}

void ToRunStats(const engine::Request::Stats& stats, absl::Time received, v1::RunStats* out) {
  out->set_rows(stats.rows_done);
  out->set_queue_seconds(absl::ToDoubleSeconds(stats.queue_time));
  out->set_device_seconds(absl::ToDoubleSeconds(stats.device_time));
  SetWallAndBuild(received, out);
}

void SetWallAndBuild(absl::Time received, v1::RunStats* out) {
  out->set_wall_seconds(absl::ToDoubleSeconds(MonotonicNow() - received));
  out->set_server_build(BuildCommit());
}

}  // namespace attribution::server
