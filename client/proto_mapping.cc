// SPDX-License-Identifier: Apache-2.0
#include "client/proto_mapping.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attribution::client {
namespace {

// Looks `name` up (case-insensitive) in `table`, or names the option and the accepted values (`table`'s
// keys, and `also` when the option takes something besides them).
template <typename Enum>
absl::StatusOr<Enum> Lookup(const std::string& option, const std::string& name,
                            const std::map<std::string, Enum>& table, absl::string_view also = "") {
  auto it = table.find(absl::AsciiStrToLower(name));
  if (it != table.end()) return it->second;
  std::string accepted;
  for (const auto& [key, value] : table) absl::StrAppend(&accepted, accepted.empty() ? "" : ", ", key);
  return absl::InvalidArgumentError(absl::StrCat(option, ": unknown value \"", name, "\" (one of: ", accepted,
                                                 also.empty() ? "" : " or ", also, ")"));
}

void SetInput(const std::string& text, const std::vector<int64_t>& ids, v1::Input* out) {
  out->set_text(text);
  out->mutable_token_ids()->Assign(ids.begin(), ids.end());
}

void SetGeneration(const GenerationSettings& g, v1::GenerationSettings* out) {
  out->set_max_new_tokens(g.max_new_tokens);
  out->set_temperature(g.temperature);
  out->set_top_p(g.top_p);
  out->set_top_k(g.top_k);
  if (g.seed) out->set_seed(*g.seed);
  out->mutable_stop_token_ids()->Assign(g.stop_token_ids.begin(), g.stop_token_ids.end());
  out->set_ignore_stop_tokens(g.ignore_stop_tokens);
}

absl::StatusOr<v1::TargetTokenization> ToTargetTokenization(const std::string& name) {
  return Lookup<v1::TargetTokenization>(
      "target_tokenization", name,
      // The default sent as unset: a server names a tokenization set beside
      // no text among the settings that changed nothing.
      {{"continuation", v1::TARGET_TOKENIZATION_UNSPECIFIED}, {"separate", v1::SEPARATE}});
}

absl::StatusOr<v1::Priority> ToPriority(const std::string& name) {
  return Lookup<v1::Priority>("priority", name, {{"low", v1::LOW}, {"normal", v1::NORMAL}, {"high", v1::HIGH}});
}

const std::map<std::string, v1::IntegrationRule>& Rules() {
  static const auto* rules =
      new std::map<std::string, v1::IntegrationRule>{{"default", v1::INTEGRATION_RULE_UNSPECIFIED},
                                                     {"gausslegendre", v1::GAUSS_LEGENDRE},
                                                     {"fejer2", v1::FEJER2},
                                                     {"riemann_left", v1::RIEMANN_LEFT},
                                                     {"riemann_right", v1::RIEMANN_RIGHT},
                                                     {"riemann_middle", v1::RIEMANN_MIDDLE},
                                                     {"riemann_trapezoid", v1::RIEMANN_TRAPEZOID}};
  return *rules;
}

absl::StatusOr<v1::IntegrationRule> ToRule(const std::string& name) { return Lookup("rule", name, Rules()); }

// As AttributeOptions::rule names it; a rule this client does not know by its number.
std::string RuleName(v1::IntegrationRule rule) {
  for (const auto& [name, value] : Rules()) {
    if (value == rule) return name;
  }
  return absl::StrCat(static_cast<int>(rule));
}

SettingsUsed SettingsFromProto(const v1::SettingsUsed& s) {
  SettingsUsed out;
  if (s.has_n_steps()) out.n_steps = s.n_steps();
  if (s.has_rule()) out.rule = RuleName(s.rule());
  if (s.has_n_samples()) out.n_samples = s.n_samples();
  if (s.has_stdev()) out.stdev = s.stdev();
  if (s.has_seed()) out.seed = s.seed();
  if (s.has_baseline()) {
    out.baseline = s.baseline() == v1::ZERO_EMBEDDING ? "zero" : absl::StrCat(s.baseline_token_id());
  }
  return out;
}

absl::Status SetBaseline(const std::string& name, v1::AttributeRequest* out) {
  int64_t id = 0;
  if (absl::SimpleAtoi(name, &id)) {
    out->set_baseline(v1::TOKEN_ID);
    out->set_baseline_token_id(id);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::BaselineKind> kind = Lookup<v1::BaselineKind>("baseline", name,
                                                                   {{"default", v1::BASELINE_UNSPECIFIED},
                                                                    {"zero", v1::ZERO_EMBEDDING},
                                                                    {"pad", v1::PAD_TOKEN},
                                                                    {"unk", v1::UNK_TOKEN},
                                                                    {"eos", v1::EOS_TOKEN},
                                                                    {"bos", v1::BOS_TOKEN}},
                                                                   "a token id");
  if (!kind.ok()) return kind.status();
  out->set_baseline(*kind);
  return absl::OkStatus();
}

}  // namespace

// Metadata past gRPC's 8 KiB limit makes it drop the connection, failing the other calls on the channel
// as RESOURCE_EXHAUSTED (read as load), and a byte outside printable ASCII in a metadata value is an
// assertion failure in gRPC that aborts the process.
absl::Status CheckMetadataValue(absl::string_view field, absl::string_view value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value.size(), " bytes, more than the ", max_bytes, " it may have"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const auto byte = static_cast<unsigned char>(value[i]);
    if (byte < 0x20 || byte > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": byte ", i, " (0x", absl::Hex(byte, absl::kZeroPad2),
                                                     ") is not printable ASCII, which gRPC metadata must be"));
    }
  }
  return absl::OkStatus();
}

namespace {

// The server logs 128 bytes of an id.
absl::Status CheckRequestId(const std::string& request_id) {
  return CheckMetadataValue("request_id", request_id, kMaxRequestIdBytes);
}

// The fields every request with a prompt shares: model, prompt, special tokens, priority.
template <typename Options, typename Request>
absl::Status SetPromptFields(const Options& o, Request* out) {
  if (absl::Status s = CheckRequestId(o.request_id); !s.ok()) return s;
  out->set_model(o.model);
  SetInput(o.prompt, o.prompt_ids, out->mutable_prompt());
  out->set_no_special_tokens(o.no_special_tokens);
  absl::StatusOr<v1::Priority> priority = ToPriority(o.priority);
  if (!priority.ok()) return priority.status();
  out->set_priority(*priority);
  return absl::OkStatus();
}

RunStats StatsFromProto(const v1::RunStats& s) {
  return {.rows = s.rows(),
          .forward_passes = s.forward_passes(),
          .backward_passes = s.backward_passes(),
          .queue_seconds = s.queue_seconds(),
          .device_seconds = s.device_seconds(),
          .wall_seconds = s.wall_seconds(),
          .server_build = s.server_build()};
}

std::vector<Token> TokensFromProto(const google::protobuf::RepeatedPtrField<v1::Token>& tokens) {
  std::vector<Token> out;
  for (const v1::Token& t : tokens) out.push_back(client::FromProto(t));
  return out;
}

// DATA_LOSS naming the response field whose shape breaks what the server promises (a buggy or hostile
// server, or a version skew): the renderers index by these shapes and must not read out of bounds.
absl::Status Malformed(absl::string_view field, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(field, ": ", what));
}

// Features are non-empty spans of prompt tokens, disjoint and in order (the server refuses groups that
// are not), and sequence_attribution holds one value per feature.
absl::Status CheckFeatures(const v1::AttributeResponse& r) {
  const int64_t prompt = r.prompt_tokens_size();
  int64_t previous_end = 0;
  for (int f = 0; f < r.features_size(); ++f) {
    const int64_t begin = r.features(f).token_begin(), end = r.features(f).token_end();
    const std::string field = absl::StrCat("AttributeResponse.features[", f, "]");
    if (begin < 0 || end > prompt || begin >= end) {
      return Malformed(field, absl::StrCat("tokens [", begin, ", ", end, ") are not a non-empty span of the ", prompt,
                                           " prompt tokens"));
    }
    if (begin < previous_end) {
      return Malformed(field, absl::StrCat("starts at token ", begin, ", before the previous feature ends (",
                                           previous_end, "): features are disjoint and in order"));
    }
    previous_end = end;
  }
  if (r.sequence_attribution_size() != r.features_size()) {
    return Malformed(
        "AttributeResponse.sequence_attribution",
        absl::StrCat(r.sequence_attribution_size(), " values, expected ", r.features_size(), " (one per feature)"));
  }
  for (int i = 0; i < r.fixed_tokens_size(); ++i) {
    if (r.fixed_tokens(i) < 0 || r.fixed_tokens(i) >= prompt) {
      return Malformed(absl::StrCat("AttributeResponse.fixed_tokens[", i, "]"),
                       absl::StrCat("token ", r.fixed_tokens(i), " is outside the ", prompt, " prompt tokens"));
    }
  }
  return absl::OkStatus();
}

// The token matrix, when sent, is [target tokens][features].
absl::Status CheckTokenMatrix(const v1::AttributeResponse& r) {
  if (r.token_matrix_size() == 0) return absl::OkStatus();
  if (r.token_matrix_size() != r.target_tokens_size()) {
    return Malformed("AttributeResponse.token_matrix", absl::StrCat(r.token_matrix_size(), " rows, expected ",
                                                                    r.target_tokens_size(), " (one per target token)"));
  }
  for (int t = 0; t < r.token_matrix_size(); ++t) {
    if (r.token_matrix(t).values_size() != r.features_size()) {
      return Malformed("AttributeResponse.token_matrix",
                       absl::StrCat("row ", t, " has ", r.token_matrix(t).values_size(), " values, expected ",
                                    r.features_size(), " (one per feature)"));
    }
  }
  return absl::OkStatus();
}

// The curves have one point per percent, each removing between none and all of the features.
absl::Status CheckFaithfulness(const v1::AttributeResponse& r) {
  if (!r.has_faithfulness()) return absl::OkStatus();
  const v1::Faithfulness& f = r.faithfulness();
  const int points = f.percents_size();
  for (const auto& [name, size] : {std::pair<const char*, int>{"features_at", f.features_at_size()},
                                   {"deletion", f.deletion_size()},
                                   {"insertion", f.insertion_size()}}) {
    if (size != points) {
      return Malformed(absl::StrCat("AttributeResponse.faithfulness.", name),
                       absl::StrCat(size, " values, expected ", points, " (one per percent)"));
    }
  }
  for (int i = 0; i < points; ++i) {
    if (f.features_at(i) < 0 || f.features_at(i) > r.features_size()) {
      return Malformed(absl::StrCat("AttributeResponse.faithfulness.features_at[", i, "]"),
                       absl::StrCat(f.features_at(i), " features, outside [0, ", r.features_size(), "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Token FromProto(const v1::Token& t) {
  return {.id = t.id(),
          .text = t.text(),
          .bytes = t.token_bytes(),
          .char_begin = t.char_begin(),
          .char_end = t.char_end(),
          .log_prob = t.log_prob(),
          .special = t.special()};
}

absl::StatusOr<v1::AttributeRequest> ToProto(const AttributeOptions& o) {
  v1::AttributeRequest out;
  if (absl::Status s = SetPromptFields(o, &out); !s.ok()) return s;
  if (!o.target.empty() || !o.target_ids.empty()) SetInput(o.target, o.target_ids, out.mutable_target());
  absl::StatusOr<v1::TargetTokenization> tokenization = ToTargetTokenization(o.target_tokenization);
  if (!tokenization.ok()) return tokenization.status();
  out.set_target_tokenization(*tokenization);
  out.set_include_special_tokens(o.include_special_tokens);
  SetGeneration(o.generation, out.mutable_generation());
  absl::StatusOr<v1::Method> method = Lookup<v1::Method>("method", o.method,
                                                         {{"integrated_gradients", v1::INTEGRATED_GRADIENTS},
                                                          {"ig", v1::INTEGRATED_GRADIENTS},
                                                          {"gradient_shap", v1::GRADIENT_SHAP},
                                                          {"saliency", v1::SALIENCY},
                                                          {"input_x_gradient", v1::INPUT_X_GRADIENT},
                                                          {"feature_ablation", v1::FEATURE_ABLATION},
                                                          {"shapley_values", v1::SHAPLEY_VALUES},
                                                          {"shapley_value_sampling", v1::SHAPLEY_VALUE_SAMPLING},
                                                          {"lime", v1::LIME},
                                                          {"kernel_shap", v1::KERNEL_SHAP},
                                                          {"attn_lrp", v1::ATTN_LRP},
                                                          {"cp_lrp", v1::CP_LRP}});
  if (!method.ok()) return method.status();
  out.set_method(*method);
  absl::StatusOr<v1::Quantity> quantity = Lookup<v1::Quantity>(
      "quantity", o.quantity, {{"log_prob", v1::LOG_PROB}, {"prob", v1::PROB}, {"logit", v1::LOGIT}});
  if (!quantity.ok()) return quantity.status();
  out.set_quantity(*quantity);
  if (!o.foil.empty() || !o.foil_ids.empty()) {
    out.set_contrastive(true);
    SetInput(o.foil, o.foil_ids, out.mutable_foil());
  }
  for (const std::string& choice : o.choices) SetInput(choice, {}, out.add_choices());
  for (int64_t id : o.choice_ids) SetInput("", {id}, out.add_choices());
  if (o.feature_range) {
    out.mutable_feature_range()->set_token_begin(o.feature_range->first);
    out.mutable_feature_range()->set_token_end(o.feature_range->second);
  }
  for (const FeatureGroup& g : o.feature_groups) {
    v1::FeatureGroup* group = out.add_feature_groups();
    group->set_token_begin(g.token_begin);
    group->set_token_end(g.token_end);
    if (g.baseline_text || g.baseline_ids) {  // given but empty: the group is deleted
      SetInput(g.baseline_text.value_or(""), g.baseline_ids.value_or(std::vector<int64_t>{}),
               group->mutable_baseline());
    }
  }
  if (absl::Status s = SetBaseline(o.baseline, &out); !s.ok()) return s;
  out.set_n_steps(o.n_steps);
  out.set_completeness_tolerance(o.completeness_tolerance);
  absl::StatusOr<v1::IntegrationRule> rule = ToRule(o.rule);
  if (!rule.ok()) return rule.status();
  out.set_rule(*rule);
  out.set_n_samples(o.n_samples);
  out.set_stdev(o.stdev);
  out.set_seed(o.seed);
  out.set_signed_saliency(o.signed_saliency);
  out.set_want_token_matrix(o.want_token_matrix);
  out.set_want_faithfulness(o.want_faithfulness);
  return out;
}

absl::StatusOr<v1::GenerateRequest> ToProto(const GenerateOptions& o) {
  v1::GenerateRequest out;
  if (absl::Status s = SetPromptFields(o, &out); !s.ok()) return s;
  SetGeneration(o.generation, out.mutable_generation());
  for (const std::string& stop : o.stop) out.add_stop(stop);
  return out;
}

absl::StatusOr<v1::LogprobsRequest> ToProto(const LogprobsOptions& o) {
  v1::LogprobsRequest out;
  if (absl::Status s = SetPromptFields(o, &out); !s.ok()) return s;
  SetInput(o.target, o.target_ids, out.mutable_target());
  absl::StatusOr<v1::TargetTokenization> tokenization = ToTargetTokenization(o.target_tokenization);
  if (!tokenization.ok()) return tokenization.status();
  out.set_target_tokenization(*tokenization);
  out.set_top_k(o.top_k);
  return out;
}

absl::StatusOr<Attribution> FromProto(const v1::AttributeResponse& r) {
  if (absl::Status s = CheckFeatures(r); !s.ok()) return s;
  if (absl::Status s = CheckTokenMatrix(r); !s.ok()) return s;
  if (absl::Status s = CheckFaithfulness(r); !s.ok()) return s;
  Attribution out;
  out.model = r.model();
  out.model_digest = r.model_digest();
  // A newer server's method reads as its number, as the component enums' do (NameOf).
  const std::string& method = v1::Method_Name(r.method());
  out.method = method.empty() ? absl::StrCat(static_cast<int>(r.method())) : absl::AsciiStrToLower(method);
  out.prompt_tokens = TokensFromProto(r.prompt_tokens());
  out.target_tokens = TokensFromProto(r.target_tokens());
  out.foil_tokens = TokensFromProto(r.foil_tokens());
  for (const v1::Feature& f : r.features()) out.features.push_back({f.token_begin(), f.token_end(), f.text()});
  out.fixed_tokens.assign(r.fixed_tokens().begin(), r.fixed_tokens().end());
  out.sequence.assign(r.sequence_attribution().begin(), r.sequence_attribution().end());
  for (const v1::AttributionRow& row : r.token_matrix())
    out.token_matrix.emplace_back(row.values().begin(), row.values().end());
  out.objective = r.objective();
  if (r.has_convergence_delta()) out.convergence_delta = r.convergence_delta();
  out.integration_steps = r.integration_steps();
  if (r.has_tolerance_met()) out.tolerance_met = r.tolerance_met();
  out.unread_settings.assign(r.unread_settings().begin(), r.unread_settings().end());
  out.settings_used = SettingsFromProto(r.settings_used());
  if (r.has_faithfulness()) {
    const v1::Faithfulness& f = r.faithfulness();
    out.faithfulness = Faithfulness{.percents = {f.percents().begin(), f.percents().end()},
                                    .features_at = {f.features_at().begin(), f.features_at().end()},
                                    .full = f.full(),
                                    .empty = f.empty(),
                                    .deletion = {f.deletion().begin(), f.deletion().end()},
                                    .insertion = {f.insertion().begin(), f.insertion().end()},
                                    .comprehensiveness_aopc = f.comprehensiveness_aopc(),
                                    .sufficiency_aopc = f.sufficiency_aopc()};
  }
  out.stats = StatsFromProto(r.stats());
  return out;
}

absl::StatusOr<Generation> FromProto(const v1::GenerateResponse& r) {
  return Generation{.prompt_tokens = TokensFromProto(r.prompt_tokens()),
                    .tokens = TokensFromProto(r.tokens()),
                    .text = r.text(),
                    .text_bytes = r.text_bytes(),
                    .stopped = r.stopped(),
                    .stats = StatsFromProto(r.stats()),
                    .seed = r.seed(),
                    .model_digest = r.model_digest()};
}

absl::StatusOr<Logprobs> FromProto(const v1::LogprobsResponse& r) {
  Logprobs out;
  out.prompt_tokens = TokensFromProto(r.prompt_tokens());
  for (int i = 0; i < r.target_size(); ++i) {
    const v1::TokenLogprob& t = r.target(i);
    if (!t.has_token()) return Malformed(absl::StrCat("LogprobsResponse.target[", i, "].token"), "missing");
    TokenLogprob entry{.token = client::FromProto(t.token())};
    for (const v1::TopToken& top : t.top()) {
      entry.top.push_back({.id = top.id(), .text = top.text(), .bytes = top.token_bytes(), .log_prob = top.log_prob()});
    }
    out.target.push_back(std::move(entry));
  }
  out.total_log_prob = r.total_log_prob();
  out.model_digest = r.model_digest();
  out.stats = StatsFromProto(r.stats());
  return out;
}

absl::StatusOr<std::vector<ModelInfo>> FromProto(const v1::ListModelsResponse& r) {
  std::vector<ModelInfo> out;
  std::set<std::string> names;
  for (int i = 0; i < r.models_size(); ++i) {
    const v1::ModelInfo& m = r.models(i);
    // Callers pick a model by its name (the first one's, or one given): it must name exactly one.
    const std::string field = absl::StrCat("ListModelsResponse.models[", i, "].name");
    if (m.name().empty()) return Malformed(field, "empty");
    if (!names.insert(m.name()).second)
      return Malformed(field, absl::StrCat("\"", m.name(), "\" names an earlier model too"));
    const v1::Limits& l = m.limits();
    out.push_back({.name = m.name(),
                   .architecture = m.architecture(),
                   .dtype = m.dtype(),
                   .quantization = m.quantization(),
                   .device = m.device(),
                   .quantization_block_size = m.quantization_info().block_size(),
                   .double_quantization = m.quantization_info().double_quantization(),
                   .quantization_from_checkpoint = m.quantization_info().from_checkpoint(),
                   .checkpoint_compute_dtype = m.quantization_info().checkpoint_compute_dtype(),
                   .resident_weight_bytes = m.resident_weight_bytes(),
                   .vocab_size = m.vocab_size(),
                   .num_layers = m.num_layers(),
                   .hidden_size = m.hidden_size(),
                   .max_steps = l.max_steps(),
                   .max_samples = l.max_samples(),
                   .max_features = l.max_features(),
                   .max_tokens = l.max_tokens(),
                   .max_new_tokens = l.max_new_tokens(),
                   .max_top_k = l.max_top_k(),
                   .max_exact_shapley_features = l.max_exact_shapley_features(),
                   .max_choices = l.max_choices(),
                   .max_rows = l.max_rows(),
                   .max_pairs = l.max_pairs(),
                   .max_queued_tokens = l.max_queued_tokens(),
                   .max_queued_bytes = l.max_queued_bytes(),
                   .max_kv_cache_tokens = l.max_kv_cache_tokens(),
                   .weights_digest = m.weights_digest(),
                   .model_digest = m.model_digest()});
  }
  return out;
}

namespace {

const std::map<std::string, v1::ComponentSite>& SiteNames() {
  static const auto* names = new std::map<std::string, v1::ComponentSite>{{"heads", v1::ATTENTION_HEADS},
                                                                          {"attn_out", v1::ATTENTION_OUTPUT},
                                                                          {"mlp_out", v1::MLP_OUTPUT},
                                                                          {"resid_pre", v1::RESIDUAL_PRE}};
  return *names;
}

const std::map<std::string, v1::ComponentGranularity>& GranularityNames() {
  static const auto* names =
      new std::map<std::string, v1::ComponentGranularity>{{"default", v1::COMPONENT_GRANULARITY_UNSPECIFIED},
                                                          {"layer_head", v1::LAYER_HEAD},
                                                          {"layer_position", v1::LAYER_POSITION},
                                                          {"layer_position_head", v1::LAYER_POSITION_HEAD}};
  return *names;
}

// The client's spelling of a proto enum value (the key of `table` that maps to it).
template <typename Enum>
std::string NameOf(Enum value, const std::map<std::string, Enum>& table) {
  for (const auto& [name, v] : table) {
    if (v == value) return name;
  }
  return absl::StrCat(static_cast<int>(value));
}

void SetAnswer(const std::string& text, const std::optional<int64_t>& id, v1::Input* out) {
  out->set_text(text);
  if (id) out->add_token_ids(*id);
}

// A grid's axes are one of the layouts the server sends, shape has one size per axis and values one per
// component (row-major), and convergence_deltas none or one per component.
absl::Status CheckGrid(const v1::ComponentGrid& g, const std::string& field) {
  static const auto* layouts = new std::vector<std::vector<std::string>>{
      {"layer", "head"}, {"layer", "position"}, {"layer", "position", "head"}};
  const std::vector<std::string> axes(g.axes().begin(), g.axes().end());
  if (std::find(layouts->begin(), layouts->end(), axes) == layouts->end()) {
    return Malformed(absl::StrCat(field, ".axes"),
                     absl::StrCat("[", absl::StrJoin(axes, ", "),
                                  "] is not [layer, head], [layer, position] or [layer, position, head]"));
  }
  if (g.shape_size() != g.axes_size()) {
    return Malformed(absl::StrCat(field, ".shape"),
                     absl::StrCat(g.shape_size(), " sizes, expected ", g.axes_size(), " (one per axis)"));
  }
  int64_t components = 1;
  bool overflow = false;
  for (int d = 0; d < g.shape_size(); ++d) {
    // Every axis has at least one entry (a layer, a position, a head): a size of 0 beside sizes of 2^30 made the
    // product 0, matched by no values, and the renderers then sized their tables by the other axes.
    if (g.shape(d) < 1) return Malformed(absl::StrCat(field, ".shape[", d, "]"), absl::StrCat(g.shape(d), " < 1"));
    overflow = overflow || components > std::numeric_limits<int64_t>::max() / g.shape(d);
    if (!overflow) components *= g.shape(d);
  }
  if (overflow || g.values_size() != components) {
    return Malformed(
        absl::StrCat(field, ".values"),
        absl::StrCat(g.values_size(), " values, expected the product of shape [", absl::StrJoin(g.shape(), ", "), "]",
                     overflow ? "" : absl::StrCat(" = ", components)));
  }
  if (g.convergence_deltas_size() != 0 && g.convergence_deltas_size() != g.values_size()) {
    return Malformed(
        absl::StrCat(field, ".convergence_deltas"),
        absl::StrCat(g.convergence_deltas_size(), " values, expected 0 or ", g.values_size(), " (one per component)"));
  }
  return absl::OkStatus();
}

// Every grid, and each pair's two prompts as long as each other (their tokens label the positions).
absl::Status CheckComponents(const v1::AttributeComponentsResponse& r) {
  for (int i = 0; i < r.grids_size(); ++i) {
    if (absl::Status s = CheckGrid(r.grids(i), absl::StrCat("AttributeComponentsResponse.grids[", i, "]")); !s.ok())
      return s;
  }
  for (int k = 0; k < r.pairs_size(); ++k) {
    const v1::PairComponents& p = r.pairs(k);
    const std::string field = absl::StrCat("AttributeComponentsResponse.pairs[", k, "]");
    for (int i = 0; i < p.grids_size(); ++i) {
      if (absl::Status s = CheckGrid(p.grids(i), absl::StrCat(field, ".grids[", i, "]")); !s.ok()) return s;
    }
    if (p.corrupted_tokens_size() != p.clean_tokens_size()) {
      return Malformed(absl::StrCat(field, ".corrupted_tokens"),
                       absl::StrCat(p.corrupted_tokens_size(), " tokens, expected ", p.clean_tokens_size(),
                                    " (as many as clean_tokens)"));
    }
  }
  return absl::OkStatus();
}

ComponentGrid GridFromProto(const v1::ComponentGrid& g) {
  return {.site = NameOf(g.site(), SiteNames()),
          .granularity = NameOf(g.granularity(), GranularityNames()),
          .shape = {g.shape().begin(), g.shape().end()},
          .axes = {g.axes().begin(), g.axes().end()},
          .values = {g.values().begin(), g.values().end()},
          .convergence_deltas = {g.convergence_deltas().begin(), g.convergence_deltas().end()}};
}

const std::map<std::string, v1::ComponentMethod> kComponentMethods = {
    {"activation_patching", v1::ACTIVATION_PATCHING},
    {"layer_integrated_gradients", v1::LAYER_INTEGRATED_GRADIENTS},
    {"attribution_patching", v1::ATTRIBUTION_PATCHING},
    {"attribution_patching_star", v1::ATTRIBUTION_PATCHING_STAR}};
const std::map<std::string, v1::ComponentMetric> kComponentMetrics = {
    {"logit_difference", v1::LOGIT_DIFFERENCE},
    {"normalized_logit_difference", v1::NORMALIZED_LOGIT_DIFFERENCE},
    {"log_prob", v1::ANSWER_LOG_PROB},
    {"prob", v1::ANSWER_PROB},
    {"prob_difference", v1::PROB_DIFFERENCE}};
const std::map<std::string, v1::PatchDirection> kDirections = {{"denoising", v1::DENOISING}, {"noising", v1::NOISING}};

}  // namespace

absl::StatusOr<v1::AttributeComponentsRequest> ToProto(const ComponentOptions& o) {
  v1::AttributeComponentsRequest out;
  if (absl::Status s = CheckRequestId(o.request_id); !s.ok()) return s;
  out.set_model(o.model);
  for (const PromptPair& pair : o.pairs) {
    v1::PromptPair* p = out.add_pairs();
    SetInput(pair.clean, pair.clean_ids, p->mutable_clean());
    SetInput(pair.corrupted, pair.corrupted_ids, p->mutable_corrupted());
  }
  out.set_no_special_tokens(o.no_special_tokens);
  SetAnswer(o.answer, o.answer_id, out.mutable_answer());
  SetAnswer(o.wrong_answer, o.wrong_answer_id, out.mutable_wrong_answer());
  absl::StatusOr<v1::ComponentMetric> metric = Lookup("metric", o.metric, kComponentMetrics);
  if (!metric.ok()) return metric.status();
  out.set_metric(*metric);
  absl::StatusOr<v1::ComponentMethod> method = Lookup("method", o.method, kComponentMethods);
  if (!method.ok()) return method.status();
  out.set_method(*method);
  absl::StatusOr<v1::PatchDirection> direction = Lookup("direction", o.direction, kDirections);
  if (!direction.ok()) return direction.status();
  out.set_direction(*direction);
  for (const std::string& name : o.sites) {
    absl::StatusOr<v1::ComponentSite> site = Lookup("sites", name, SiteNames());
    if (!site.ok()) return site.status();
    out.add_sites(*site);
  }
  absl::StatusOr<v1::ComponentGranularity> granularity = Lookup("granularity", o.granularity, GranularityNames());
  if (!granularity.ok()) return granularity.status();
  out.set_granularity(*granularity);
  out.set_n_steps(o.n_steps);
  absl::StatusOr<v1::IntegrationRule> rule = ToRule(o.rule);
  if (!rule.ok()) return rule.status();
  out.set_rule(*rule);
  absl::StatusOr<v1::Priority> priority = ToPriority(o.priority);
  if (!priority.ok()) return priority.status();
  out.set_priority(*priority);
  return out;
}

absl::StatusOr<ComponentAttribution> FromProto(const v1::AttributeComponentsResponse& r) {
  if (absl::Status s = CheckComponents(r); !s.ok()) return s;
  ComponentAttribution out{.model = r.model(),
                           .method = NameOf(r.method(), kComponentMethods),
                           .metric = NameOf(r.metric(), kComponentMetrics),
                           .direction = NameOf(r.direction(), kDirections),
                           .answer = FromProto(r.answer()),
                           .wrong_answer = FromProto(r.wrong_answer()),
                           .stats = StatsFromProto(r.stats()),
                           .model_digest = r.model_digest()};
  out.unread_settings.assign(r.unread_settings().begin(), r.unread_settings().end());
  out.settings_used = SettingsFromProto(r.settings_used());
  for (const v1::ComponentGrid& g : r.grids()) out.grids.push_back(GridFromProto(g));
  for (const v1::PairComponents& p : r.pairs()) {
    PairComponents pair{.clean_metric = p.clean_metric(),
                        .corrupted_metric = p.corrupted_metric(),
                        .clean_tokens = TokensFromProto(p.clean_tokens()),
                        .corrupted_tokens = TokensFromProto(p.corrupted_tokens())};
    for (const v1::ComponentGrid& g : p.grids()) pair.grids.push_back(GridFromProto(g));
    out.pairs.push_back(std::move(pair));
  }
  return out;
}

}  // namespace attribution::client
