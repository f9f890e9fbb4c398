// SPDX-License-Identifier: Apache-2.0
#include "engine/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

using nlohmann::json;

absl::StatusOr<json> ParseJsonObject(const std::string& text, const std::string& source) {
  ASSIGN_OR_RETURN(json parsed, ParseBoundedJson(text, source));
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  return parsed;
}

// Reads a required positive integer field.
absl::StatusOr<int64_t> PositiveInt(const json& config, const char* key, const std::string& source) {
  if (!config.contains(key) || !config[key].is_number_integer() || config[key].get<int64_t>() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be a positive integer"));
  }
  return config[key].get<int64_t>();
}

// The largest checkpoints have about 130 layers; a count in the billions allocated per-layer tables of
// gigabytes before anything else was checked (--check_config too).
constexpr int64_t kMaxLayers = 4096;

absl::StatusOr<int64_t> LayerCount(const json& config, const char* key, const std::string& source) {
  ASSIGN_OR_RETURN(const int64_t layers, PositiveInt(config, key, source));
  if (layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"", key, "\" ", layers, " is more than ", kMaxLayers, " layers"));
  }
  return layers;
}

// transformers writes null for an option left unset ("pad_token_id": null, "rope_scaling": null), so a
// null value means the same as an absent key.
const json* Present(const json& config, const char* key) {
  auto it = config.find(key);
  return it == config.end() || it->is_null() ? nullptr : &*it;
}

absl::Status WrongType(const std::string& source, const char* key, const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be ", expected));
}

// An integer JSON value that int64 holds: nlohmann stores 2^63 and above as unsigned, which would wrap.
bool IsInt64(const json& value) {
  return value.is_number_integer() &&
         !(value.is_number_unsigned() && value.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()});
}

// The optional readers below refuse a present value of the wrong type rather than fall back to the
// default: a checkpoint served with a default it was not trained with answers wrongly without an error.
absl::StatusOr<std::optional<int64_t>> MaybeInt(const json& config, const char* key, const std::string& source) {
  const json* value = Present(config, key);
  if (value == nullptr) return std::nullopt;
  if (!IsInt64(*value)) return WrongType(source, key, "an integer");
  return value->get<int64_t>();
}

// Older Llama fine-tunes ship "pad_token_id": -1 for "none", which transformers serves (with a warning), and
// the server pads with its own id where a model names none.
absl::StatusOr<std::optional<int64_t>> MaybePadId(const json& config, const std::string& source) {
  ASSIGN_OR_RETURN(std::optional<int64_t> id, MaybeInt(config, "pad_token_id", source));
  if (id && *id < 0) return std::nullopt;
  return id;
}

absl::StatusOr<int64_t> OptionalInt(const json& config, const char* key, int64_t fallback, const std::string& source) {
  ASSIGN_OR_RETURN(std::optional<int64_t> value, MaybeInt(config, key, source));
  return value.value_or(fallback);
}

absl::StatusOr<double> OptionalNumber(const json& config, const char* key, double fallback, const std::string& source) {
  const json* value = Present(config, key);
  if (value == nullptr) return fallback;
  if (!value->is_number()) return WrongType(source, key, "a number");
  return value->get<double>();
}

absl::StatusOr<bool> OptionalBool(const json& config, const char* key, bool fallback, const std::string& source) {
  const json* value = Present(config, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) return WrongType(source, key, "true or false");
  return value->get<bool>();
}

absl::StatusOr<std::string> OptionalString(const json& config, const char* key, std::string fallback,
                                           const std::string& source) {
  const json* value = Present(config, key);
  if (value == nullptr) return fallback;
  if (!value->is_string()) return WrongType(source, key, "a string");
  return value->get<std::string>();
}

// eos_token_id is an int or a list of ints (Llama 3).
absl::StatusOr<std::vector<int64_t>> IdList(const json& config, const char* key, const std::string& source) {
  const json* value = Present(config, key);
  if (value == nullptr) return std::vector<int64_t>{};
  if (IsInt64(*value)) return std::vector<int64_t>{value->get<int64_t>()};
  if (!value->is_array() || !std::all_of(value->begin(), value->end(), IsInt64)) {
    return WrongType(source, key, "an integer or a list of integers");
  }
  return value->get<std::vector<int64_t>>();
}

// The value is used in float32 (RoPE frequencies, norms): a double beyond its range would overflow there.
bool FiniteInFloat(double value) {
  return std::isfinite(value) && std::abs(value) <= std::numeric_limits<float>::max();
}

absl::Status ParseRopeScaling(const json& config, const std::string& source, ModelConfig& out) {
  const char* section = "rope_scaling";
  const json* scaling = Present(config, section);
  if (scaling == nullptr) {
    section = "rope_parameters";  // transformers >= 5 spelling
    scaling = Present(config, section);
  }
  if (scaling == nullptr) return absl::OkStatus();
  if (!scaling->is_object()) return WrongType(source, section, "an object");
  const std::string where = absl::StrCat(source, ": ", section);
  ASSIGN_OR_RETURN(out.rope_theta, OptionalNumber(*scaling, "rope_theta", out.rope_theta, where));
  ASSIGN_OR_RETURN(std::string type, OptionalString(*scaling, "type", "default", where));
  ASSIGN_OR_RETURN(type, OptionalString(*scaling, "rope_type", type, where));
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    if (Present(*scaling, "factor") == nullptr) {  // transformers refuses it too
      return absl::InvalidArgumentError(absl::StrCat(where, ": linear rope scaling needs a \"factor\""));
    }
    ASSIGN_OR_RETURN(out.linear_rope_factor, OptionalNumber(*scaling, "factor", 1.0, where));
    return absl::OkStatus();
  }
  if (type == "llama3") {
    for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (Present(*scaling, key) == nullptr) {  // transformers refuses it too
        return absl::InvalidArgumentError(absl::StrCat(where, ": llama3 rope scaling needs \"", key, "\""));
      }
    }
    Llama3RopeScaling s;
    ASSIGN_OR_RETURN(s.factor, OptionalNumber(*scaling, "factor", s.factor, where));
    ASSIGN_OR_RETURN(s.low_freq_factor, OptionalNumber(*scaling, "low_freq_factor", s.low_freq_factor, where));
    ASSIGN_OR_RETURN(s.high_freq_factor, OptionalNumber(*scaling, "high_freq_factor", s.high_freq_factor, where));
    ASSIGN_OR_RETURN(s.original_max_position_embeddings, OptionalInt(*scaling, "original_max_position_embeddings",
                                                                     s.original_max_position_embeddings, where));
    if (!(s.factor > 0 && s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor && FiniteInFloat(s.factor) &&
          FiniteInFloat(s.high_freq_factor))) {
      return absl::InvalidArgumentError(
          absl::StrCat(where,
                       ": llama3 rope scaling needs finite float32 factors with factor > 0 and high_freq_factor > "
                       "low_freq_factor > 0"));
    }
    if (s.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": llama3 rope scaling original_max_position_embeddings ",
                                                     s.original_max_position_embeddings, " must be positive"));
    }
    out.llama3_rope_scaling = s;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": rope scaling type \"", type, "\" is not supported (supported: default, linear, llama3)"));
}

// Which layers apply the sliding window, as transformers' Qwen2Config decides (layer_types as written,
// else the layers from max_window_layers on); Mistral and Mixtral window every layer.
absl::StatusOr<std::vector<bool>> WindowedLayers(const json& config, const std::string& source,
                                                 const ModelConfig& out) {
  if (out.architecture != Architecture::kQwen2) return std::vector<bool>(out.num_layers, true);
  std::vector<bool> windowed(out.num_layers, false);
  if (const json* types = Present(config, "layer_types")) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != out.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": layer_types must list one attention type per layer (", out.num_layers, ")"));
    }
    for (int64_t i = 0; i < out.num_layers; ++i) {
      const json& type = (*types)[i];
      if (type != "sliding_attention" && type != "full_attention") {
        return absl::InvalidArgumentError(absl::StrCat(source, ": layer_types[", i, "] ", type.dump(),
                                                       " is not \"sliding_attention\" or \"full_attention\""));
      }
      windowed[i] = type == "sliding_attention";
    }
    return windowed;
  }
  ASSIGN_OR_RETURN(const int64_t max_window_layers, OptionalInt(config, "max_window_layers", 28, source));
  for (int64_t i = std::max<int64_t>(max_window_layers, 0); i < out.num_layers; ++i) windowed[i] = true;
  return windowed;
}

// What transformers' config class of each architecture assumes for a key config.json leaves out.
struct DecoderDefaults {
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<int64_t> sliding_window;  // Qwen2's applies only with use_sliding_window
  std::optional<int64_t> num_kv_heads;    // none: num_attention_heads (LlamaConfig's rule)
};

DecoderDefaults DefaultsOf(Architecture architecture) {
  switch (architecture) {
    case Architecture::kMistral:
      return {.max_position_embeddings = 131072, .sliding_window = 4096, .num_kv_heads = 8};
    case Architecture::kMixtral:
      return {.max_position_embeddings = 131072, .rms_norm_eps = 1e-5, .rope_theta = 1e6, .num_kv_heads = 8};
    case Architecture::kQwen2:
      return {.max_position_embeddings = 32768, .sliding_window = 4096, .num_kv_heads = 32};
    case Architecture::kLlama:
    case Architecture::kGpt2:    // ParseGpt2Fields
    case Architecture::kFalcon:  // ParseFalconFields
      return {};
  }
  return {};
}

absl::Status ParseDecoderFields(const json& config, const std::string& source, ModelConfig& out) {
  const DecoderDefaults defaults = DefaultsOf(out.architecture);
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "hidden_size", source));
  ASSIGN_OR_RETURN(out.intermediate_size, PositiveInt(config, "intermediate_size", source));
  ASSIGN_OR_RETURN(out.num_layers, LayerCount(config, "num_hidden_layers", source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, "num_attention_heads", source));
  // An absent key takes the config class's default (8 for Mistral); null, which only transformers 4 read,
  // meant num_attention_heads there.
  const bool kv_heads_absent = !config.contains("num_key_value_heads");
  const int64_t kv_heads_fallback = kv_heads_absent ? defaults.num_kv_heads.value_or(out.num_heads) : out.num_heads;
  ASSIGN_OR_RETURN(out.num_kv_heads, OptionalInt(config, "num_key_value_heads", kv_heads_fallback, source));
  if (kv_heads_absent && out.num_heads % out.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": num_key_value_heads is absent, and this architecture's default (", out.num_kv_heads,
                     ", as transformers' config class has it) does not divide num_attention_heads ", out.num_heads));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, MaybeInt(config, "head_dim", source));
  if (!head_dim && out.hidden_size % out.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size ", out.hidden_size,
                                                   " is not divisible by num_attention_heads ", out.num_heads,
                                                   " (and no head_dim is given)"));
  }
  out.head_dim = head_dim.value_or(out.hidden_size / out.num_heads);
  ASSIGN_OR_RETURN(out.max_position_embeddings,
                   OptionalInt(config, "max_position_embeddings", defaults.max_position_embeddings, source));
  ASSIGN_OR_RETURN(out.norm_eps, OptionalNumber(config, "rms_norm_eps", defaults.rms_norm_eps, source));
  ASSIGN_OR_RETURN(out.rope_theta, OptionalNumber(config, "rope_theta", defaults.rope_theta, source));
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "hidden_act", "silu", source));
  if (out.hidden_act == "swish") out.hidden_act = "silu";  // transformers' name for the same function
  if (out.hidden_act != "silu") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_act \"", out.hidden_act,
                                                   "\" is not supported for this architecture (silu, swish)"));
  }
  if (out.architecture == Architecture::kQwen2) {
    out.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else if (out.architecture == Architecture::kLlama) {
    ASSIGN_OR_RETURN(out.attention_bias, OptionalBool(config, "attention_bias", false, source));
    out.output_bias = out.attention_bias;
    ASSIGN_OR_RETURN(out.mlp_bias, OptionalBool(config, "mlp_bias", false, source));
  }
  // LlamaConfig has no sliding window; Qwen2 applies its window only with use_sliding_window.
  if (out.architecture != Architecture::kLlama) {
    const bool mistral_like = out.architecture == Architecture::kMistral || out.architecture == Architecture::kMixtral;
    std::optional<int64_t> window = defaults.sliding_window;  // absent: the default; null: no window
    if (config.contains("sliding_window")) {
      ASSIGN_OR_RETURN(window, MaybeInt(config, "sliding_window", source));
    }
    ASSIGN_OR_RETURN(bool use_window, OptionalBool(config, "use_sliding_window", false, source));
    if (mistral_like || use_window) out.sliding_window = window;
    if (out.sliding_window) {
      ASSIGN_OR_RETURN(out.windowed_layers, WindowedLayers(config, source, out));
    }
  }
  return ParseRopeScaling(config, source, out);
}

// GPT-2's n_inner, Falcon's ffn_hidden_size: null or absent means 4 * hidden, as transformers reads them.
absl::StatusOr<int64_t> MlpWidth(const json& config, const char* key, const char* hidden_key, int64_t hidden,
                                 const std::string& source) {
  if (config.contains(key) && !config[key].is_null()) return PositiveInt(config, key, source);
  if (hidden > std::numeric_limits<int64_t>::max() / 4) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", hidden_key, " ", hidden, " is too large"));
  }
  return 4 * hidden;
}

// Mixtral: a Mistral whose MLPs are sparse mixtures of experts.
absl::Status ParseMixtureOfExperts(const json& config, const std::string& source, ModelConfig& out) {
  MixtureOfExperts moe;
  ASSIGN_OR_RETURN(moe.num_experts, OptionalInt(config, "num_local_experts", 8, source));
  ASSIGN_OR_RETURN(moe.experts_per_token, OptionalInt(config, "num_experts_per_tok", 2, source));
  if (moe.num_experts <= 0 || moe.experts_per_token <= 0 || moe.experts_per_token > moe.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_experts_per_tok ", moe.experts_per_token,
                                                   " must be in [1, num_local_experts ", moe.num_experts, "]"));
  }
  out.mixture_of_experts = moe;
  return absl::OkStatus();
}

// The first of `keys` present (FalconConfig accepts the older n_layer / n_head / n_head_kv spellings).
const char* FirstPresent(const json& config, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (config.contains(key) && !config[key].is_null()) return key;
  }
  return *keys.begin();
}

// Falcon (FalconConfig): LayerNorm blocks with a GELU MLP, rotary positions, one fused query_key_value
// whose row order depends on the layout (multi-query 7B, grouped new_decoder_architecture, per head).
absl::Status ParseFalconFields(const json& config, const std::string& source, ModelConfig& out) {
  ASSIGN_OR_RETURN(const bool alibi, OptionalBool(config, "alibi", false, source));
  if (alibi) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": \"alibi\": true: Falcon models with ALiBi position biases are not supported (rotary ones are)"));
  }
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "hidden_size", source));
  ASSIGN_OR_RETURN(out.num_layers, LayerCount(config, FirstPresent(config, {"num_hidden_layers", "n_layer"}), source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, FirstPresent(config, {"num_attention_heads", "n_head"}), source));
  if (out.hidden_size % out.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size ", out.hidden_size,
                                                   " is not divisible by num_attention_heads ", out.num_heads));
  }
  out.head_dim = out.hidden_size / out.num_heads;
  ASSIGN_OR_RETURN(out.parallel_attention, OptionalBool(config, "parallel_attn", true, source));
  const char* norms_key = "num_ln_in_parallel_attn";
  ASSIGN_OR_RETURN(const int64_t parallel_norms, OptionalInt(config, norms_key, 0, source));  // 0: null or absent
  ASSIGN_OR_RETURN(const bool new_decoder, OptionalBool(config, "new_decoder_architecture", false, source));
  if (new_decoder) {
    if (!out.parallel_attention) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": new_decoder_architecture with \"parallel_attn\": false is not a layout transformers runs"));
    }
    if (parallel_norms != 0 && parallel_norms != 1 && parallel_norms != 2) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"", norms_key, "\" must be 1 or 2"));
    }
    const char* kv_key = FirstPresent(config, {"num_kv_heads", "n_head_kv"});
    out.num_kv_heads = out.num_heads;  // FalconConfig's default
    if (config.contains(kv_key) && !config[kv_key].is_null()) {
      ASSIGN_OR_RETURN(out.num_kv_heads, PositiveInt(config, kv_key, source));
    }
    out.qkv_layout = FusedQkvLayout::kPerKvGroup;
    out.separate_parallel_norms = parallel_norms != 1;
  } else {
    if (out.parallel_attention && parallel_norms == 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": \"", norms_key, "\": 2 needs new_decoder_architecture (transformers runs it only there)"));
    }
    ASSIGN_OR_RETURN(const bool multi_query, OptionalBool(config, "multi_query", true, source));
    out.num_kv_heads = multi_query ? 1 : out.num_heads;
    out.qkv_layout = multi_query ? FusedQkvLayout::kConsecutive : FusedQkvLayout::kPerHead;
  }
  ASSIGN_OR_RETURN(out.intermediate_size, MlpWidth(config, "ffn_hidden_size", "hidden_size", out.hidden_size, source));
  ASSIGN_OR_RETURN(out.max_position_embeddings, OptionalInt(config, "max_position_embeddings", 2048, source));
  ASSIGN_OR_RETURN(out.norm_eps, OptionalNumber(config, "layer_norm_epsilon", 1e-5, source));
  ASSIGN_OR_RETURN(out.rope_theta, OptionalNumber(config, "rope_theta", 10000.0, source));
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "activation", "gelu", source));
  if (out.hidden_act != "gelu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": activation \"", out.hidden_act, "\" is not supported for falcon (gelu)"));
  }
  ASSIGN_OR_RETURN(out.attention_bias, OptionalBool(config, "bias", false, source));
  out.output_bias = out.mlp_bias = out.attention_bias;
  ASSIGN_OR_RETURN(out.tie_word_embeddings, OptionalBool(config, "tie_word_embeddings", true, source));
  return ParseRopeScaling(config, source, out);
}

absl::Status ParseGpt2Fields(const json& config, const std::string& source, ModelConfig& out) {
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "n_embd", source));
  ASSIGN_OR_RETURN(out.num_layers, LayerCount(config, "n_layer", source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, "n_head", source));
  ASSIGN_OR_RETURN(out.max_position_embeddings, PositiveInt(config, "n_positions", source));
  out.num_kv_heads = out.num_heads;
  out.head_dim = out.hidden_size / out.num_heads;
  ASSIGN_OR_RETURN(out.intermediate_size, MlpWidth(config, "n_inner", "n_embd", out.hidden_size, source));
  ASSIGN_OR_RETURN(out.norm_eps, OptionalNumber(config, "layer_norm_epsilon", 1e-5, source));
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "activation_function", "gelu_new", source));
  // PyTorch's tanh approximation of GELU is gelu_new's formula.
  if (out.hidden_act == "gelu_pytorch_tanh") out.hidden_act = "gelu_new";
  if (out.hidden_act != "gelu_new" && out.hidden_act != "gelu") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": activation_function \"", out.hidden_act,
                                                   "\" is not supported (gelu_new, gelu_pytorch_tanh, gelu)"));
  }
  out.attention_bias = true;
  out.output_bias = true;
  out.mlp_bias = true;
  ASSIGN_OR_RETURN(out.tie_word_embeddings, OptionalBool(config, "tie_word_embeddings", true, source));
  ASSIGN_OR_RETURN(out.scale_attention_by_head_dim, OptionalBool(config, "scale_attn_weights", true, source));
  ASSIGN_OR_RETURN(out.scale_attention_by_layer,
                   OptionalBool(config, "scale_attn_by_inverse_layer_idx", false, source));
  out.qkv_layout = FusedQkvLayout::kConsecutive;
  return absl::OkStatus();
}

// An id outside the vocabulary is never produced (an eos that never stops generation) or indexes past the
// embedding (a bos or pad put into a prompt); `ids` holds those `source` names.
absl::Status CheckSpecialTokenIds(const std::string& source, const ModelConfig& ids, int64_t vocab_size) {
  const std::pair<const char*, std::optional<int64_t>> single[] = {
      {"bos_token_id", ids.bos_token_id}, {"pad_token_id", ids.pad_token_id}, {"unk_token_id", ids.unk_token_id}};
  for (const auto& [key, id] : single) {
    if (id && (*id < 0 || *id >= vocab_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ", key, ": special token id ", *id, " is outside the vocabulary of ", vocab_size));
    }
  }
  for (int64_t id : ids.eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": eos_token_id: special token id ", id, " is outside the vocabulary of ", vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckConsistency(const std::string& source, const ModelConfig& c) {
  if (c.max_position_embeddings <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": max_position_embeddings ", c.max_position_embeddings, " must be positive"));
  }
  if (c.sliding_window && *c.sliding_window <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": sliding_window ", *c.sliding_window, " must be positive"));
  }
  if (c.sliding_window && static_cast<int64_t>(c.windowed_layers.size()) != c.num_layers) {
    return absl::InternalError(absl::StrCat(source, ": the sliding window's layers are not known"));
  }
  // Added to a variance in the compute dtype: above 1 it swamps any activation's (and 1e300 is inf in float32).
  if (!(std::isfinite(c.norm_eps) && c.norm_eps >= 0 && c.norm_eps <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the norm epsilon (rms_norm_eps / layer_norm_epsilon) ",
                                                   c.norm_eps, " must be a finite number in [0, 1]"));
  }
  // RoPE frequencies are computed in float32: a theta finite as a double (1e308) overflows there.
  if (!(FiniteInFloat(c.rope_theta) && c.rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": rope_theta ", c.rope_theta,
                                                   " must be a number > 0 that float32 holds (at most ",
                                                   std::numeric_limits<float>::max(), ")"));
  }
  if (c.linear_rope_factor && !(FiniteInFloat(*c.linear_rope_factor) && *c.linear_rope_factor > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": linear rope scaling factor ", *c.linear_rope_factor,
                                                   " must be a number > 0 that float32 holds"));
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  if (c.architecture == Architecture::kGpt2 && c.hidden_size % c.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": n_embd ", c.hidden_size, " is not divisible by n_head ", c.num_heads));
  }
  // Rotary embeddings turn pairs of dimensions; GPT-2's learned positions take any head width (n_embd 24, n_head 8).
  const bool rotary = c.architecture != Architecture::kGpt2;
  if (c.head_dim <= 0 || (rotary && c.head_dim % 2 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": head_dim ", c.head_dim,
                                                   rotary ? " must be a positive even number (rotary embeddings turn "
                                                            "pairs of dimensions)"
                                                          : " must be positive"));
  }
  // Products of these size every projection: 2^62 wrapped int64 (num_heads × head_dim), and the shape check
  // then asked for [0, 64].
  constexpr int64_t kMaxWidth = int64_t{1} << 20;
  if (c.head_dim > kMaxWidth || c.num_heads > kMaxWidth || c.hidden_size > kMaxWidth) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": head_dim ", c.head_dim, ", num_attention_heads ",
                                                   c.num_heads, " and hidden_size ", c.hidden_size,
                                                   " must each be at most ", kMaxWidth));
  }
  return CheckSpecialTokenIds(source, c, c.vocab_size);
}

// quantization_config: bitsandbytes 4-bit checkpoints load as they are; anything else is refused by name.
absl::Status ParseQuantizationConfig(const json& config, const std::string& source, ModelConfig& out) {
  if (!config.contains("quantization_config") || config["quantization_config"].is_null()) return absl::OkStatus();
  const json& q = config["quantization_config"];
  const std::string where = absl::StrCat(source, ": quantization_config");
  if (!q.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  ASSIGN_OR_RETURN(std::string method, OptionalString(q, "quant_method", "bitsandbytes", where));
  if (method != "bitsandbytes") {
    return absl::InvalidArgumentError(absl::StrCat(where, ".quant_method \"", method,
                                                   "\" is not supported (pre-quantized checkpoints load only from "
                                                   "bitsandbytes 4-bit; serve the unquantized checkpoint instead)"));
  }
  ASSIGN_OR_RETURN(const bool eight_bit, OptionalBool(q, "load_in_8bit", false, where));
  if (eight_bit) {
    return absl::InvalidArgumentError(absl::StrCat(
        where,
        ".load_in_8bit: bitsandbytes LLM.int8 checkpoints (weights with SCB scales) are not supported; serve "
        "the unquantized checkpoint with --quantization int8"));
  }
  ASSIGN_OR_RETURN(const bool four_bit, OptionalBool(q, "load_in_4bit", false, where));
  if (!four_bit) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".load_in_4bit is not true: nothing says how it is quantized"));
  }
  CheckpointQuantization quantization;
  ASSIGN_OR_RETURN(quantization.quant_type, OptionalString(q, "bnb_4bit_quant_type", "fp4", where));
  if (quantization.quant_type != "nf4" && quantization.quant_type != "fp4") {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".bnb_4bit_quant_type \"", quantization.quant_type, "\" is not supported (nf4, fp4)"));
  }
  ASSIGN_OR_RETURN(quantization.double_quantization, OptionalBool(q, "bnb_4bit_use_double_quant", false, where));
  ASSIGN_OR_RETURN(quantization.compute_dtype, OptionalString(q, "bnb_4bit_compute_dtype", "float32", where));
  out.checkpoint_quantization = std::move(quantization);
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseConfigObject(const std::string& json_text, const std::string& source) {
  ASSIGN_OR_RETURN(json config, ParseJsonObject(json_text, source));
  if (!config.contains("model_type") || !config["model_type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"model_type\""));
  }
  const std::string type = config["model_type"].get<std::string>();
  ModelConfig out;
  if (type == "llama")
    out.architecture = Architecture::kLlama;
  else if (type == "mistral")
    out.architecture = Architecture::kMistral;
  else if (type == "qwen2")
    out.architecture = Architecture::kQwen2;
  else if (type == "gpt2")
    out.architecture = Architecture::kGpt2;
  else if (type == "falcon")
    out.architecture = Architecture::kFalcon;
  else if (type == "mixtral")
    out.architecture = Architecture::kMixtral;
  else {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": model_type \"", type,
                     "\" is not supported (supported: llama, mistral, qwen2, gpt2, falcon, mixtral)"));
  }
  ASSIGN_OR_RETURN(out.vocab_size, PositiveInt(config, "vocab_size", source));
  if (out.architecture == Architecture::kGpt2) {
    RETURN_IF_ERROR(ParseGpt2Fields(config, source, out));
  } else if (out.architecture == Architecture::kFalcon) {
    RETURN_IF_ERROR(ParseFalconFields(config, source, out));
  } else {
    RETURN_IF_ERROR(ParseDecoderFields(config, source, out));
    ASSIGN_OR_RETURN(out.tie_word_embeddings, OptionalBool(config, "tie_word_embeddings", false, source));
    if (out.architecture == Architecture::kMixtral) RETURN_IF_ERROR(ParseMixtureOfExperts(config, source, out));
  }
  ASSIGN_OR_RETURN(out.bos_token_id, MaybeInt(config, "bos_token_id", source));
  ASSIGN_OR_RETURN(out.eos_token_ids, IdList(config, "eos_token_id", source));
  ASSIGN_OR_RETURN(out.pad_token_id, MaybePadId(config, source));
  RETURN_IF_ERROR(ParseQuantizationConfig(config, source, out));
  RETURN_IF_ERROR(CheckConsistency(source, out));
  return out;
}

// The keys of transformers' GenerationConfig that change which tokens generate() picks, where the file gives them a
// value other than transformers' own default (null: unset; a hand-written "do_sample": false or "num_beams": 1
// changes nothing), sorted as json objects keep them.
std::vector<std::string> DecodingSettings(const json& generation) {
  static const json kDefaults = {{"bad_words_ids", nullptr},
                                 {"begin_suppress_tokens", nullptr},
                                 {"diversity_penalty", 0.0},
                                 {"do_sample", false},
                                 {"epsilon_cutoff", 0.0},
                                 {"eta_cutoff", 0.0},
                                 {"exponential_decay_length_penalty", nullptr},
                                 {"forced_bos_token_id", nullptr},
                                 {"forced_eos_token_id", nullptr},
                                 {"guidance_scale", nullptr},
                                 {"max_length", 20},
                                 {"max_new_tokens", nullptr},
                                 {"min_length", 0},
                                 {"min_new_tokens", nullptr},
                                 {"min_p", nullptr},
                                 {"no_repeat_ngram_size", 0},
                                 {"num_beam_groups", 1},
                                 {"num_beams", 1},
                                 {"penalty_alpha", nullptr},
                                 {"repetition_penalty", 1.0},
                                 {"sequence_bias", nullptr},
                                 {"stop_strings", nullptr},
                                 {"suppress_tokens", nullptr},
                                 {"temperature", 1.0},
                                 {"top_k", 50},
                                 {"top_p", 1.0},
                                 {"typical_p", 1.0}};
  std::vector<std::string> settings;
  for (const auto& [key, value] : generation.items()) {
    const auto known = kDefaults.find(key);
    if (known == kDefaults.end() || value.is_null()) continue;
    // json compares 1 and 1.0 as equal numbers
    if (value != *known) settings.push_back(key);
  }
  return settings;
}

}  // namespace

double AttentionScale(const ModelConfig& config, int64_t layer) {
  double scale = config.scale_attention_by_head_dim ? 1 / std::sqrt(static_cast<double>(config.head_dim)) : 1.0;
  if (config.scale_attention_by_layer) scale /= static_cast<double>(layer + 1);
  return scale;
}

const char* ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kLlama:
      return "llama";
    case Architecture::kMistral:
      return "mistral";
    case Architecture::kQwen2:
      return "qwen2";
    case Architecture::kGpt2:
      return "gpt2";
    case Architecture::kFalcon:
      return "falcon";
    case Architecture::kMixtral:
      return "mixtral";
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  // The parsers above check each field's type; this net turns a check they lack (a JSON type error)
  // into a status naming the file, so no config crashes the server.
  try {
    return ParseConfigObject(json_text, source);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  ASSIGN_OR_RETURN(std::string text, ReadModelFile(path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, path));
  // generation_config.json overrides the ids used for generation where it names them; its ids are checked
  // here so that an error names the file they came from.
  const std::string generation_path = dir + "/generation_config.json";
  if (FileExists(generation_path)) {  // one that cannot be read is named, not passed over
    ASSIGN_OR_RETURN(std::string generation_text, ReadModelFile(generation_path));
    ASSIGN_OR_RETURN(json generation, ParseJsonObject(generation_text, generation_path));
    ModelConfig ids;
    ASSIGN_OR_RETURN(ids.bos_token_id, MaybeInt(generation, "bos_token_id", generation_path));
    ASSIGN_OR_RETURN(ids.eos_token_ids, IdList(generation, "eos_token_id", generation_path));
    ASSIGN_OR_RETURN(ids.pad_token_id, MaybePadId(generation, generation_path));
    RETURN_IF_ERROR(CheckSpecialTokenIds(generation_path, ids, config.vocab_size));
    if (ids.bos_token_id) config.bos_token_id = ids.bos_token_id;
    if (!ids.eos_token_ids.empty()) config.eos_token_ids = ids.eos_token_ids;
    if (ids.pad_token_id) config.pad_token_id = ids.pad_token_id;
    config.unapplied_generation_settings = DecodingSettings(generation);
  }
  return config;
}

}  // namespace attribution::engine
