// SPDX-License-Identifier: Apache-2.0
#include "engine/model/causal_lm.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/enum_names.h"
#include "engine/common/status_macros.h"
#include "engine/model/causal_lm_impl.h"
#include "engine/model/gated_silu.h"
#include "engine/model/head_scores.h"
#include "engine/model/lrp_rules.h"
#include "engine/model/rms_norm.h"
#include "engine/model/rope.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

// Runs `body`, turning LibTorch exceptions into statuses so none crosses our API.
template <typename Fn>
auto Guarded(const char* what, Fn&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    return StatusFromException(e, what);
  }
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  RETURN_IF_ERROR(CheckDeviceName(name));
  if (name == "cpu") return at::Device(at::kCPU);
  try {
    at::Device device(name);
    at::empty({1}, at::TensorOptions().device(device));  // fails fast without a usable device
    return device;
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("device \"", name, "\" is not usable here: ", ExceptionMessage(e)));
  }
}

// [B, 1, S, K] attention mask: query (r, s) at absolute position past[r] + s sees key slot j when
// j <= past[r] + s, j holds a real token (j < past[r] + length[r]) and j is inside the sliding window.
at::Tensor AttentionMask(const at::Tensor& past, const at::Tensor& lengths, int64_t queries, int64_t keys,
                         const std::optional<int64_t>& window) {
  const auto long_options = past.options();
  at::Tensor query_pos = past.unsqueeze(1) + at::arange(queries, long_options).unsqueeze(0);  // [B, S]
  at::Tensor key_pos = at::arange(keys, long_options).view({1, 1, keys});                     // [1, 1, K]
  at::Tensor q = query_pos.unsqueeze(2);                                                      // [B, S, 1]
  at::Tensor mask = (key_pos <= q).logical_and(key_pos < (past + lengths).view({-1, 1, 1}));
  if (window) mask = mask.logical_and(q - key_pos < *window);
  return mask.unsqueeze(1);
}

}  // namespace

const char* ComponentSiteName(ComponentSite site) {
  switch (site) {
    case ComponentSite::kResidPre:
      return "residual_pre";
    case ComponentSite::kHeads:
      return "attention_heads";
    case ComponentSite::kAttnOut:
      return "attention_output";
    case ComponentSite::kMlpOut:
      return "mlp_output";
  }
  return "unknown";
}

absl::StatusOr<ComponentSite> ParseComponentSite(const std::string& name) {
  return ParseByName("site", name, kAllComponentSites, &ComponentSiteName);
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  return absl::InvalidArgumentError(absl::StrCat("dtype \"", name, "\" is not supported (float32, bfloat16, float16)"));
}

std::string DtypeName(at::ScalarType dtype) {
  if (dtype == at::kFloat) return "float32";
  if (dtype == at::kBFloat16) return "bfloat16";
  if (dtype == at::kHalf) return "float16";
  return c10::toString(dtype);
}

absl::Status CheckDeviceName(const std::string& name) {
  const std::string ordinal = name.rfind("cuda:", 0) == 0 ? name.substr(5) : "";
  if (name == "cpu" || name == "cuda" ||
      (!ordinal.empty() && ordinal.size() <= 3 && std::all_of(ordinal.begin(), ordinal.end(), ::isdigit))) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("device \"", name, "\" is not supported (cpu, cuda, cuda:N)"));
}

at::Tensor CausalLM::Impl::Norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                PropagationRules rules) const {
  if (rules != PropagationRules::kGradient) {
    return uses_layer_norm() ? LayerNormIdentityRule(x, weight, bias, config.norm_eps)
                             : RmsNormIdentityRule(x, weight, config.norm_eps);
  }
  if (uses_layer_norm()) return at::layer_norm(x, {x.size(-1)}, weight, bias, config.norm_eps);
  return RmsNorm(x, weight, config.norm_eps);
}

at::Tensor CausalLM::Impl::Mlp(const DecoderLayer& layer, int64_t index, const at::Tensor& x, PropagationRules rules,
                               const ActivationHooks* hooks) const {
  if (config.mixture_of_experts) return ExpertsForward(layer.experts, index, x, rules, hooks);
  if (uses_layer_norm()) {  // GPT-2 and Falcon: no gate
    const Activation gelu = config.hidden_act == "gelu_new" ? Activation::kGeluTanh : Activation::kGeluExact;
    at::Tensor inner = layer.gate_up.Forward(x);
    inner = rules == PropagationRules::kGradient ? Activate(inner, gelu) : IdentityRuleActivation(inner, gelu);
    return layer.down.Forward(inner);
  }
  return GatedMlp(layer.gate_up, layer.down, x, rules);
}

at::Tensor CausalLM::Impl::GatedMlp(const Linear& gate_up_linear, const Linear& down, const at::Tensor& x,
                                    PropagationRules rules) const {
  if (rules == PropagationRules::kGradient) return down.Forward(GatedSilu(gate_up_linear.Forward(x)));
  const std::vector<at::Tensor> gate_up = gate_up_linear.ForwardParts(x);  // 2 x [..., intermediate]
  if (rules == PropagationRules::kAttnLrp) {
    return down.Forward(ScaleGradient(IdentityRuleActivation(gate_up[0], Activation::kSilu) * gate_up[1], 0.5));
  }
  return down.Forward(at::silu(gate_up[0].detach()) * gate_up[1]);  // kCpLrp
}

at::Tensor CausalLM::Impl::Forward(const ForwardBatch& batch) const {
  at::Tensor x = batch.inputs_embeds.defined() ? batch.inputs_embeds : at::embedding(token_embedding, batch.input_ids);
  const int64_t b = x.size(0), s = x.size(1);
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  std::vector<int64_t> lengths = batch.lengths.empty() ? std::vector<int64_t>(b, s) : batch.lengths;
  std::vector<int64_t> past = batch.cache ? batch.cache->lengths() : std::vector<int64_t>(b, 0);
  at::Tensor past_t = at::tensor(past, at::kLong).to(device);
  at::Tensor lengths_t = at::tensor(lengths, at::kLong).to(device);
  // Padding reads token 0's embedding, which a model served with --allow_nonfinite_weights may hold as NaN, and
  // attention's zero weight on a NaN value is NaN: a batch mate's padding failed a call whose own tokens are
  // finite. Zeros there change no real row's value.
  if (!batch.inputs_embeds.defined() && std::any_of(lengths.begin(), lengths.end(), [s](int64_t n) { return n < s; })) {
    x = x.masked_fill((at::arange(s, long_options).unsqueeze(0) >= lengths_t.unsqueeze(1)).unsqueeze(-1), 0);
  }
  at::Tensor positions = past_t.unsqueeze(1) + at::arange(s, long_options).unsqueeze(0);  // [B, S]
  const std::vector<int64_t>& joining = batch.first_layers;
  if (is_gpt2() && joining.empty()) {
    // Padded slots may run past the table; they are masked, so clamping them is harmless.
    at::Tensor clamped = positions.clamp_max(config.max_position_embeddings - 1);
    x = x + at::embedding(position_embedding, clamped);
  }
  // Attention runs over the key slots some row fills, no more: rows on cached prefixes of different lengths (a
  // perturbation's coalitions) would pad to max(past) + s, and padded key slots, masked or not, change what
  // PyTorch's CPU flash kernel computes in bfloat16 from 16 keys on (a full prompt scored one bf16 step away
  // from its own forward without a cache; bench/RESULTS.md).
  int64_t key_count = s;
  if (batch.cache != nullptr) {
    key_count = 0;
    for (size_t r = 0; r < past.size(); ++r) key_count = std::max(key_count, past[r] + lengths[r]);
  }
  const at::Tensor all_rows_mask = AttentionMask(past_t, lengths_t, s, key_count, std::nullopt);
  const at::Tensor all_rows_window_mask =
      config.sliding_window ? AttentionMask(past_t, lengths_t, s, key_count, config.sliding_window) : all_rows_mask;
  const int64_t heads = config.num_heads, kv_heads = config.num_kv_heads, head_dim = config.head_dim;
  RopeAngles all_rows_rope;
  if (uses_rope()) all_rows_rope = RopeAnglesAt(positions, rope_inverse_frequencies, x.scalar_type());
  // Joining rows: the first `active` rows have joined; x holds theirs only.
  const at::Tensor entering = x;
  int64_t active = joining.empty() ? b : 0;
  auto join_until = [&](int64_t layer) {
    const int64_t joined = std::upper_bound(joining.begin(), joining.end(), layer) - joining.begin();
    if (joined == active) return;
    x = active == 0 ? entering.narrow(0, 0, joined) : at::cat({x, entering.narrow(0, active, joined - active)});
    active = joined;
  };
  const size_t first_layer = joining.empty() ? 0 : static_cast<size_t>(joining.front());
  // Lets the hooks read or replace the activation at `site` of layer i.
  auto at_site = [&batch](ComponentSite site, size_t i, at::Tensor& activation) {
    if (batch.hooks == nullptr || !batch.hooks->at_site) return;
    if (at::Tensor replaced = batch.hooks->at_site(site, static_cast<int64_t>(i), activation); replaced.defined()) {
      activation = std::move(replaced);
    }
  };
  auto pause = [&batch](const at::Tensor& residual) {
    if (!batch.pause_point) return;
    batch.pause_point();
    if (residual.requires_grad())
      residual.register_hook([pause_point = batch.pause_point](const at::TensorBase&) { pause_point(); });
  };
  for (size_t i = first_layer; i < layers.size(); ++i) {
    const DecoderLayer& layer = layers[i];
    const int64_t index = static_cast<int64_t>(i);
    if (!joining.empty()) join_until(index);
    pause(x);
    const int64_t rows = active;
    auto active_rows = [rows](const at::Tensor& t) { return rows == t.size(0) ? t : t.narrow(0, 0, rows); };
    const bool windowed = config.sliding_window && config.windowed_layers[i];
    const at::Tensor mask = active_rows(windowed ? all_rows_window_mask : all_rows_mask);
    RopeAngles rope;
    if (uses_rope()) rope = {active_rows(all_rows_rope.cos), active_rows(all_rows_rope.signed_sin)};
    at_site(ComponentSite::kResidPre, i, x);
    at::Tensor h = Norm(x, layer.attention_norm_weight, layer.attention_norm_bias, batch.rules);
    // [B, H, S, D], [B, KV, S, D], [B, KV, S, D]; rope is empty (no rotation) for GPT-2.
    auto [q, k, v] = SplitHeads(layer.qkv.Forward(h), heads, kv_heads, head_dim, rope);
    if (batch.hooks != nullptr && batch.hooks->attention_inputs) {
      batch.hooks->attention_inputs(static_cast<int64_t>(i), q, k, v, mask);
    }
    if (batch.rules == PropagationRules::kAttnLrp) {  // q·kᵀ and A·v each split their gradient in two
      q = ScaleGradient(q, 0.25);
      k = ScaleGradient(k, 0.25);
      v = ScaleGradient(v, 0.5);
    } else if (batch.rules == PropagationRules::kCpLrp) {  // the attention weights are constants
      q = q.detach();
      k = k.detach();
    }
    if (batch.cache != nullptr) {
      std::tie(k, v) = batch.cache->Append(static_cast<int64_t>(i), k, v);
      k = k.narrow(2, 0, key_count);
      v = v.narrow(2, 0, key_count);
    }
    at::Tensor attended = at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, AttentionScale(config, index),
                                                           /*enable_gqa=*/kv_heads != heads);
    at::Tensor per_head = attended.transpose(1, 2);  // [B, S, H, D]
    at_site(ComponentSite::kHeads, i, per_head);
    at::Tensor attention_out = layer.o.Forward(per_head.reshape({rows, s, heads * head_dim}));
    at_site(ComponentSite::kAttnOut, i, attention_out);
    if (config.parallel_attention) {  // Falcon: the MLP reads the block's input too
      const at::Tensor mlp_in =
          layer.mlp_norm_weight.defined() ? Norm(x, layer.mlp_norm_weight, layer.mlp_norm_bias, batch.rules) : h;
      at::Tensor mlp_out = Mlp(layer, index, mlp_in, batch.rules, batch.hooks);
      at_site(ComponentSite::kMlpOut, i, mlp_out);
      x = x + attention_out + mlp_out;
    } else {
      x = x + attention_out;
      pause(x);  // the MLP reads the attention's output: a layer's two halves are separate stretches
      at::Tensor mlp_out =
          Mlp(layer, index, Norm(x, layer.mlp_norm_weight, layer.mlp_norm_bias, batch.rules), batch.rules, batch.hooks);
      at_site(ComponentSite::kMlpOut, i, mlp_out);
      x = x + mlp_out;
    }
    if (batch.hooks && batch.hooks->after_layer) {
      if (at::Tensor replaced = batch.hooks->after_layer(index, x); replaced.defined()) {
        x = replaced;
      }
    }
  }
  if (!joining.empty()) join_until(config.num_layers);
  pause(x);
  if (batch.cache != nullptr) batch.cache->Advance(lengths);
  return Norm(x, final_norm_weight, final_norm_bias, batch.rules);
}

CausalLM::CausalLM(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CausalLM::~CausalLM() = default;

namespace {

// Bytes of every weight the model holds, packed copies included; a tied head's weight counts once.
int64_t CountResidentBytes(const CausalLM::Impl& m) {
  auto bytes = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; };
  int64_t total =
      bytes(m.token_embedding) + bytes(m.position_embedding) + bytes(m.final_norm_weight) + bytes(m.final_norm_bias);
  for (const DecoderLayer& l : m.layers) {
    total += bytes(l.attention_norm_weight) + bytes(l.attention_norm_bias) + bytes(l.mlp_norm_weight) +
             bytes(l.mlp_norm_bias);
  }
  ForEachLinear(m, [&](const Linear& linear) { total += linear.ResidentBytes(); });
  // A tied head's weight is the embedding, counted above.
  return m.tied_head ? total - bytes(m.token_embedding) : total;
}

// A checkpoint saved quantized decides its own format: asking for another one is an error, since it
// would mean re-quantizing already rounded weights.
absl::Status ResolveQuantization(const std::string& dir, CausalLM::Impl& impl) {
  LoadOptions& options = impl.options;
  if (IsFourBit(options.quantization)) RETURN_IF_ERROR(ValidateFourBitOptions(options.four_bit));
  if (!impl.config.checkpoint_quantization) return absl::OkStatus();
  const CheckpointQuantization& saved = *impl.config.checkpoint_quantization;
  ASSIGN_OR_RETURN(Quantization kind, ParseQuantization(saved.quant_type));
  if (options.quantization != Quantization::kNone && options.quantization != kind) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " is saved quantized by bitsandbytes as ", saved.quant_type,
                                                   " (config.json quantization_config); ", "quantization ",
                                                   QuantizationName(options.quantization),
                                                   " would re-quantize it: ask for none or ", saved.quant_type));
  }
  options.quantization = kind;
  options.four_bit.double_quantization = saved.double_quantization;
  impl.prequantized = true;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const std::string& dir, const LoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  RETURN_IF_ERROR(Guarded("reading config.json", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(impl->config, ReadModelConfig(dir));
    return absl::OkStatus();
  }));
  if (const std::vector<std::string>& unapplied = impl->config.unapplied_generation_settings; !unapplied.empty()) {
    impl->load_warnings.push_back(absl::StrCat(
        "generation_config.json sets ", absl::StrJoin(unapplied, ", "),
        ", which transformers' generate() applies by default and Generate does not: it decodes with its request's "
        "settings only (greedy unless the request sends a temperature)"));
  }
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16 && options.dtype != at::kHalf) {
    return absl::InvalidArgumentError("dtype must be float32, bfloat16 or float16");
  }
  impl->options = options;
  RETURN_IF_ERROR(ResolveQuantization(dir, *impl));
  ASSIGN_OR_RETURN(impl->device, ParseDevice(options.device));
  RETURN_IF_ERROR(Guarded("loading weights", [&]() -> absl::Status {
    c10::AutoGradMode no_grad(false);
    RETURN_IF_ERROR(LoadWeights(dir, *impl));
    if (impl->options.pack_weights_for_few_rows) ForEachLinear(*impl, [](Linear& linear) { linear.PackForFewRows(); });
    // Counted once here, where a LibTorch error becomes a status; callers (the startup log line,
    // ListModels, metrics) then read a number that cannot throw.
    impl->resident_weight_bytes = CountResidentBytes(*impl);
    return absl::OkStatus();
  }));
  return std::unique_ptr<CausalLM>(new CausalLM(std::move(impl)));
}

const ModelConfig& CausalLM::config() const { return impl_->config; }
const LoadOptions& CausalLM::options() const { return impl_->options; }
bool CausalLM::prequantized() const { return impl_->prequantized; }
at::ScalarType CausalLM::dtype() const { return impl_->options.dtype; }
at::Device CausalLM::device() const { return impl_->device; }

int64_t CausalLM::ResidentWeightBytes() const { return impl_->resident_weight_bytes; }
const std::vector<std::string>& CausalLM::unused_weights() const { return impl_->unused_weights; }
const std::vector<std::string>& CausalLM::load_warnings() const { return impl_->load_warnings; }

namespace {

// Shape, dtype and vocabulary range of token ids.
absl::Status CheckInputIds(const at::Tensor& ids, int64_t vocab) {
  if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("input_ids must be a [batch, seq] int64 tensor");
  }
  if (ids.numel() > 0 && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= vocab)) {
    return absl::InvalidArgumentError(absl::StrCat("input_ids: token id outside [0, ", vocab, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> CausalLM::Embed(const at::Tensor& ids) const {
  RETURN_IF_ERROR(CheckInputIds(ids, impl_->config.vocab_size));
  return Guarded("embedding", [&]() -> absl::StatusOr<at::Tensor> {
    c10::AutoGradMode no_grad(false);
    return at::embedding(impl_->token_embedding, ids.to(impl_->device));
  });
}

absl::Status CausalLM::Validate(const ForwardBatch& batch) const {
  const ModelConfig& c = impl_->config;
  const bool has_ids = batch.input_ids.defined(), has_embeds = batch.inputs_embeds.defined();
  if (has_ids == has_embeds) return absl::InvalidArgumentError("give exactly one of input_ids or inputs_embeds");
  int64_t b = 0, s = 0;
  if (has_ids) {
    RETURN_IF_ERROR(CheckInputIds(batch.input_ids, c.vocab_size));
    b = batch.input_ids.size(0), s = batch.input_ids.size(1);
  } else {
    const at::Tensor& e = batch.inputs_embeds;
    if (e.dim() != 3 || e.size(2) != c.hidden_size || e.scalar_type() != dtype() || e.device() != device()) {
      return absl::InvalidArgumentError(
          absl::StrCat("inputs_embeds must be [batch, seq, ", c.hidden_size, "] in the model's dtype on its device"));
    }
    b = e.size(0), s = e.size(1);
  }
  if (b == 0 || s == 0) return absl::InvalidArgumentError("batch and sequence must not be empty");
  if (!batch.first_layers.empty()) {
    const std::vector<int64_t>& first = batch.first_layers;
    if (!has_embeds) return absl::InvalidArgumentError("first_layers needs the residual stream as inputs_embeds");
    if (static_cast<int64_t>(first.size()) != b) {
      return absl::InvalidArgumentError(absl::StrCat("first_layers has ", first.size(), " entries for ", b,
                                                     " rows of residual stream (inputs_embeds)"));
    }
    if (first.front() < 0 || first.back() > c.num_layers || !std::is_sorted(first.begin(), first.end())) {
      return absl::InvalidArgumentError(
          absl::StrCat("first_layers must be non-decreasing within [0, ", c.num_layers, "]"));
    }
  }
  if (!batch.lengths.empty()) {
    if (static_cast<int64_t>(batch.lengths.size()) != b) {
      return absl::InvalidArgumentError(
          absl::StrCat("lengths has ", batch.lengths.size(), " entries for ", b, " rows"));
    }
    for (int64_t len : batch.lengths) {
      if (len < 1 || len > s)
        return absl::InvalidArgumentError(absl::StrCat("lengths: ", len, " outside [1, ", s, "]"));
    }
  }
  int64_t longest_past = 0;
  if (batch.cache != nullptr) {
    if (batch.cache->batch() != b) {
      return absl::InvalidArgumentError(absl::StrCat("cache holds ", batch.cache->batch(), " rows, batch has ", b));
    }
    longest_past = *std::max_element(batch.cache->lengths().begin(), batch.cache->lengths().end());
  }
  if (longest_past + s > c.max_position_embeddings && impl_->is_gpt2()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence of ", longest_past + s, " positions exceeds the model's ", c.max_position_embeddings));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> CausalLM::Hidden(const ForwardBatch& batch) const {
  RETURN_IF_ERROR(Validate(batch));
  return Guarded("forward", [&]() -> absl::StatusOr<at::Tensor> {
    if (!batch.input_ids.defined() || batch.input_ids.device() == impl_->device) return impl_->Forward(batch);
    ForwardBatch moved = batch;
    moved.input_ids = batch.input_ids.to(impl_->device);
    return impl_->Forward(moved);
  });
}

namespace {

// hidden[rows[i], positions[i]]: [N, hidden].
at::Tensor HiddenAt(const at::Tensor& hidden, const std::vector<int64_t>& rows, const std::vector<int64_t>& positions) {
  return hidden.index(
      {at::tensor(rows, at::kLong).to(hidden.device()), at::tensor(positions, at::kLong).to(hidden.device())});
}

}  // namespace

at::Tensor CausalLM::LogitsAt(const at::Tensor& hidden, const std::vector<int64_t>& rows,
                              const std::vector<int64_t>& positions) const {
  const at::Tensor selected = HiddenAt(hidden, rows, positions);
  return impl_->lm_head.Forward(selected).to(at::kFloat);
}

HeadScores CausalLM::ScoresAt(const at::Tensor& hidden, const std::vector<int64_t>& rows,
                              const std::vector<int64_t>& positions, const ScoredEntries& entries,
                              int64_t top_k) const {
  return ScoreWithHead(impl_->lm_head, HiddenAt(hidden, rows, positions), entries,
                       options().scored_chunk_floats / config().vocab_size, top_k);
}

at::Tensor CausalLM::TokenLogitsAt(const at::Tensor& hidden, const std::vector<int64_t>& rows,
                                   const std::vector<int64_t>& positions, const std::vector<int64_t>& tokens) const {
  // The loader keeps the head dense in every format.
  const at::Tensor& head = impl_->lm_head.dense_weight();
  const at::Tensor head_rows = head.index_select(0, at::tensor(tokens, at::kLong).to(hidden.device()));
  // Accumulated in float32 and rounded to the compute dtype as the head's matmul does, so these logits
  // are LogitsAt's up to summation order (a patched row's and its unpatched run's are differenced).
  const at::Tensor logits = (HiddenAt(hidden, rows, positions).to(at::kFloat) * head_rows.to(at::kFloat)).sum(-1);
  return logits.to(hidden.scalar_type()).to(at::kFloat);
}

}  // namespace attribution::engine
