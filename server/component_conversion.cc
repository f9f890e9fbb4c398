// SPDX-License-Identifier: Apache-2.0
#include "server/component_conversion.h"

#include "engine/common/status_macros.h"
#include "server/conversion_parts.h"

namespace attribution::server {
namespace {

using engine::ComponentGranularity;
using engine::ComponentMethod;
using engine::ComponentMetric;
using engine::ComponentSite;
using engine::PatchDirection;

absl::StatusOr<ComponentMethod> ToComponentMethod(v1::ComponentMethod method) {
  return FromProtoEnum("method", method, v1::ACTIVATION_PATCHING, v1::ComponentMethod_descriptor(),
                       &engine::ParseComponentMethod);
}

absl::StatusOr<ComponentMetric> ToComponentMetric(v1::ComponentMetric metric) {
  return FromProtoEnum("metric", metric, v1::LOGIT_DIFFERENCE, v1::ComponentMetric_descriptor(),
                       &engine::ParseComponentMetric);
}

absl::StatusOr<PatchDirection> ToDirection(v1::PatchDirection direction) {
  return FromProtoEnum("direction", direction, v1::DENOISING, v1::PatchDirection_descriptor(),
                       &engine::ParsePatchDirection);
}

absl::StatusOr<ComponentSite> ToSite(int site, absl::string_view field) {
  if (site == v1::COMPONENT_SITE_UNSPECIFIED) return Invalid(field, "COMPONENT_SITE_UNSPECIFIED names no site");
  return FromProtoEnum(field, site, site, v1::ComponentSite_descriptor(), &engine::ParseComponentSite);
}

// Unspecified: each site's own default (engine::DefaultGranularity).
absl::StatusOr<std::optional<ComponentGranularity>> ToGranularity(v1::ComponentGranularity granularity) {
  if (granularity == v1::COMPONENT_GRANULARITY_UNSPECIFIED) return std::nullopt;
  return FromProtoEnum("granularity", granularity, granularity, v1::ComponentGranularity_descriptor(),
                       &engine::ParseComponentGranularity);
}

// An answer: exactly one token, text read as the continuation of the first clean prompt.
absl::StatusOr<ResolvedInput> ResolveAnswer(const v1::Input& input, absl::string_view field, const ResolvedInput& clean,
                                            const ServedModel& model) {
  if (!IsSet(input)) return Invalid(field, "must be one token (set text or token_ids)");
  ASSIGN_OR_RETURN(ResolvedInput answer, ResolveContinuationOf(input, field, clean, model));
  if (answer.encoding.ids.size() != 1) {
    // The first few tokens only: a status message past gRPC's 8 KiB metadata limit reaches the caller as
    // RESOURCE_EXHAUSTED instead.
    constexpr size_t kTokensShown = 4;
    std::string tokens;
    for (size_t i = 0; i < std::min(kTokensShown, answer.encoding.ids.size()); ++i) {
      absl::StrAppend(&tokens, i == 0 ? "" : ", ", "\"",
                      engine::ToValidUtf8(model.tokenizer->TokenText(answer.encoding.ids[i])), "\"");
    }
    if (answer.encoding.ids.size() > kTokensShown) absl::StrAppend(&tokens, ", ...");
    return Invalid(field, absl::StrCat("must be one token; it is ", answer.encoding.ids.size(), " (", tokens, ")"));
  }
  return answer;
}

// The answer and, for the difference metrics, the wrong answer, read as continuations of the first clean prompt.
absl::Status ResolveAnswers(const v1::AttributeComponentsRequest& proto, const ServedModel& model,
                            ComponentsCall& call) {
  engine::ComponentRequest& request = call.request;
  ASSIGN_OR_RETURN(call.answer, ResolveAnswer(proto.answer(), "answer", call.clean[0], model));
  request.answer = call.answer.encoding.ids[0];
  if (engine::IsDifference(request.metric)) {
    ASSIGN_OR_RETURN(call.wrong_answer, ResolveAnswer(proto.wrong_answer(), "wrong_answer", call.clean[0], model));
    request.wrong_answer = call.wrong_answer.encoding.ids[0];
  } else if (IsSet(proto.wrong_answer())) {
    return Invalid("wrong_answer", absl::StrCat("is only read by the difference metrics, not ",
                                                engine::ComponentMetricName(request.metric)));
  }
  return absl::OkStatus();
}

// What pairs[0..k] alone add to the response: their tokens as it names them, and the values of their grids and of
// the average over them at 8 bytes each (a lower bound: the grids' shapes, the answers and the framing come on top).
class PairBytesSoFar {
 public:
  absl::Status Add(const ComponentsCall& call, const ServedModel& model, int64_t max_bytes) {
    v1::PairComponents tokens;
    FillTokens(call.clean.back(), *model.tokenizer, tokens.mutable_clean_tokens());
    FillTokens(call.corrupted.back(), *model.tokenizer, tokens.mutable_corrupted_tokens());
    token_bytes_ += static_cast<int64_t>(tokens.ByteSizeLong());
    const int64_t bytes = token_bytes_ + engine::CountGridValues(call.request, model.model->config()) * 8;
    if (bytes <= max_bytes) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "the response would be at least ", bytes, " bytes with pairs[0..", call.clean.size() - 1,
        "] alone (their tokens, their grids' values x 8 bytes), over this server's max_message_bytes of ", max_bytes,
        ": ask for less (fewer pairs or sites, shorter prompts, a coarser granularity), or raise max_message_bytes"));
  }

 private:
  int64_t token_bytes_ = 0;
};

void ToProtoGrid(const engine::ComponentGrid& grid, v1::ComponentGrid* out) {
  out->set_site(ToProtoEnum(engine::ComponentSiteName(grid.site), &v1::ComponentSite_Parse));
  out->set_granularity(
      ToProtoEnum(engine::ComponentGranularityName(grid.granularity), &v1::ComponentGranularity_Parse));
  out->mutable_shape()->Add(grid.shape.begin(), grid.shape.end());
  out->add_axes("layer");
  if (grid.granularity != ComponentGranularity::kLayerHead) out->add_axes("position");
  if (grid.granularity != ComponentGranularity::kLayerPosition) out->add_axes("head");
  out->mutable_values()->Add(grid.values.begin(), grid.values.end());
  out->mutable_convergence_deltas()->Add(grid.convergence_deltas.begin(), grid.convergence_deltas.end());
}

}  // namespace

absl::StatusOr<ComponentsCall> ToComponentsCall(const v1::AttributeComponentsRequest& proto, const ServedModel& model,
                                                absl::Time deadline, int64_t max_response_bytes,
                                                const std::function<absl::Status()>& interrupted) {
  RETURN_IF_ERROR(CheckWireTypes(proto));
  ComponentsCall call;
  engine::ComponentRequest& request = call.request;
  const engine::AttributionLimits& limits = model.attributor->limits();
  call.limits = {.max_tokens = limits.max_tokens,
                 .max_steps = limits.max_steps,
                 .max_rows = limits.max_rows,
                 .max_queued_tokens = limits.max_queued_tokens};
  ASSIGN_OR_RETURN(request.metric, ToComponentMetric(proto.metric()));
  ASSIGN_OR_RETURN(request.method, ToComponentMethod(proto.method()));
  ASSIGN_OR_RETURN(request.direction, ToDirection(proto.direction()));
  if (proto.sites_size() > 0) request.sites.clear();
  for (int i = 0; i < proto.sites_size(); ++i) {
    ASSIGN_OR_RETURN(ComponentSite site, ToSite(proto.sites(i), absl::StrCat("sites[", i, "]")));
    request.sites.push_back(site);
  }
  ASSIGN_OR_RETURN(request.granularity, ToGranularity(proto.granularity()));
  // Checked whatever the method (only layer integrated gradients reads it), as every field is.
  RETURN_IF_ERROR(
      engine::CheckWithinLimit(proto.n_steps(), 0, call.limits.max_steps, "n_steps", "max_steps"));  // 0: 16
  // Unset: the default, or the operator's lower limit.
  request.n_steps = proto.n_steps() > 0 ? proto.n_steps() : std::min(request.n_steps, call.limits.max_steps);
  ASSIGN_OR_RETURN(request.rule, ToRule(proto.rule()));
  // Accepted beside any method, as Attribute's settings are (one job's settings may serve several methods), and
  // named in the answer: they changed nothing.
  if (request.method != engine::ComponentMethod::kLayerIntegratedGradients) {
    static const std::string kSteps = "n_steps", kRule = "rule";  // literals trip GCC 12's -Warray-bounds
    if (proto.n_steps() != 0) call.unread_settings.push_back(kSteps);
    if (proto.rule() != v1::INTEGRATION_RULE_UNSPECIFIED) call.unread_settings.push_back(kRule);
  }
  ASSIGN_OR_RETURN(request.priority, ToPriority(proto.priority()));
  if (proto.pairs_size() == 0) return Invalid("pairs", "give at least one clean/corrupted pair");
  if (proto.pairs_size() > call.limits.max_pairs) {
    return Invalid("pairs", absl::StrCat(proto.pairs_size(), " pairs exceed this model's limits.max_pairs of ",
                                         call.limits.max_pairs));
  }
  // The request as far as its first pair (the answers read as its continuation) is checked whole before the next
  // pair is tokenized, and each later pair as it is read, with the response it makes so far: 64 pairs of 15 KB
  // were all read (2 to 6 s of CPU) to refuse an answer, the first pair's lengths, or a response of 12 MB.
  PairBytesSoFar response_bytes;
  for (int k = 0; k < proto.pairs_size(); ++k) {
    // A call cancelled while its 64 pairs were read kept its admission slot for seconds, then was logged as
    // answered; a drain waited for it past its grace period.
    RETURN_IF_ERROR(interrupted());
    const v1::PromptPair& pair = proto.pairs(k);
    for (bool clean : {true, false}) {
      const std::string field = absl::StrCat("pairs[", k, "].", clean ? "clean" : "corrupted");
      const v1::Input& input = clean ? pair.clean() : pair.corrupted();
      if (!IsSet(input)) return Invalid(field, "must not be empty (set text or token_ids)");
      ASSIGN_OR_RETURN(ResolvedInput resolved, Resolve(input, field, model, !proto.no_special_tokens()));
      (clean ? call.clean : call.corrupted).push_back(std::move(resolved));
    }
    request.pairs.push_back(
        {.clean_ids = call.clean.back().encoding.ids, .corrupted_ids = call.corrupted.back().encoding.ids});
    RETURN_IF_ERROR(
        engine::CheckPromptPair(request.pairs.back(), k, request.metric, model.model->config(), call.limits));
    if (k == 0) {
      RETURN_IF_ERROR(ResolveAnswers(proto, model, call));
      RETURN_IF_ERROR(engine::ValidateComponentRequest(request, model.model->config(), call.limits));
    }
    RETURN_IF_ERROR(response_bytes.Add(call, model, max_response_bytes));
  }
  request.deadline = deadline;
  RETURN_IF_ERROR(engine::ValidateComponentRequest(request, model.model->config(), call.limits));
  return call;
}

void ToComponentsResponse(const engine::ComponentResult& result, const ComponentsCall& call, const ServedModel& model,
                          v1::AttributeComponentsResponse* out) {
  const engine::ComponentRequest& request = call.request;
  out->set_model(model.spec.name);
  out->set_model_digest(model.model_digest);
  out->set_method(ToProtoEnum(engine::ComponentMethodName(request.method), &v1::ComponentMethod_Parse));
  out->set_metric(ToProtoEnum(engine::ComponentMetricName(request.metric), &v1::ComponentMetric_Parse));
  out->set_direction(ToProtoEnum(engine::PatchDirectionName(request.direction), &v1::PatchDirection_Parse));
  for (const std::string& setting : call.unread_settings) out->add_unread_settings(setting);
  v1::SettingsUsed* used = out->mutable_settings_used();  // set even when empty: this server reports them
  if (request.method == engine::ComponentMethod::kLayerIntegratedGradients) {
    used->set_n_steps(static_cast<int32_t>(request.n_steps));
    used->set_rule(ToProtoRule(request.rule));
  }
  for (const engine::ComponentGrid& grid : result.grids) ToProtoGrid(grid, out->add_grids());
  for (size_t k = 0; k < result.pairs.size(); ++k) {
    v1::PairComponents* pair = out->add_pairs();
    pair->set_clean_metric(result.pairs[k].clean_metric);
    pair->set_corrupted_metric(result.pairs[k].corrupted_metric);
    for (const engine::ComponentGrid& grid : result.pairs[k].grids) ToProtoGrid(grid, pair->add_grids());
    FillTokens(call.clean[k], *model.tokenizer, pair->mutable_clean_tokens());
    FillTokens(call.corrupted[k], *model.tokenizer, pair->mutable_corrupted_tokens());
  }
  SetTokenText(request.answer, *model.tokenizer, out->mutable_answer());
  if (!call.wrong_answer.empty()) SetTokenText(request.wrong_answer, *model.tokenizer, out->mutable_wrong_answer());
  v1::RunStats* stats = out->mutable_stats();
  stats->set_rows(result.rows);
  stats->set_forward_passes(result.forward_passes);
  stats->set_backward_passes(result.backward_passes);
}

}  // namespace attribution::server
