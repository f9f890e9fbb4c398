// SPDX-License-Identifier: Apache-2.0
#include "engine/model/model_config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

using nlohmann::json;

absl::StatusOr<json> ParseJsonObject(const std::string& text, const std::string& source) {
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
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

int64_t OptionalInt(const json& config, const char* key, int64_t fallback) {
  return config.contains(key) && config[key].is_number_integer() ? config[key].get<int64_t>() : fallback;
}

double OptionalNumber(const json& config, const char* key, double fallback) {
  return config.contains(key) && config[key].is_number() ? config[key].get<double>() : fallback;
}

bool OptionalBool(const json& config, const char* key, bool fallback) {
  return config.contains(key) && config[key].is_boolean() ? config[key].get<bool>() : fallback;
}

// Reads an optional string field; a value of another type is an error naming the field, not a throw.
absl::StatusOr<std::string> OptionalString(const json& config, const char* key, std::string fallback,
                                           const std::string& source) {
  if (!config.contains(key)) return fallback;
  if (!config[key].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": \"", key, "\" must be a string"));
  }
  return config[key].get<std::string>();
}

std::optional<int64_t> OptionalId(const json& config, const char* key) {
  if (config.contains(key) && config[key].is_number_integer()) return config[key].get<int64_t>();
  return std::nullopt;
}

// eos_token_id is an int or a list of ints (Llama 3).
std::vector<int64_t> IdList(const json& config, const char* key) {
  std::vector<int64_t> ids;
  if (!config.contains(key)) return ids;
  if (config[key].is_number_integer()) ids.push_back(config[key].get<int64_t>());
  if (config[key].is_array()) {
    for (const auto& id : config[key]) {
      if (id.is_number_integer()) ids.push_back(id.get<int64_t>());
    }
  }
  return ids;
}

absl::Status ParseRopeScaling(const json& config, const std::string& source, ModelConfig& out) {
  const json* scaling = nullptr;
  if (config.contains("rope_scaling") && config["rope_scaling"].is_object()) {
    scaling = &config["rope_scaling"];
  } else if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    scaling = &config["rope_parameters"];  // transformers >= 5 spelling
  }
  if (scaling == nullptr) return absl::OkStatus();
  out.rope_theta = OptionalNumber(*scaling, "rope_theta", out.rope_theta);
  ASSIGN_OR_RETURN(std::string type, OptionalString(*scaling, "type", "default", source));
  ASSIGN_OR_RETURN(type, OptionalString(*scaling, "rope_type", type, source));
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    out.linear_rope_factor = OptionalNumber(*scaling, "factor", 1.0);
    return absl::OkStatus();
  }
  if (type == "llama3") {
    Llama3RopeScaling s;
    s.factor = OptionalNumber(*scaling, "factor", s.factor);
    s.low_freq_factor = OptionalNumber(*scaling, "low_freq_factor", s.low_freq_factor);
    s.high_freq_factor = OptionalNumber(*scaling, "high_freq_factor", s.high_freq_factor);
    s.original_max_position_embeddings =
        OptionalInt(*scaling, "original_max_position_embeddings", s.original_max_position_embeddings);
    if (s.factor <= 0 || s.low_freq_factor <= 0 || s.high_freq_factor <= s.low_freq_factor) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0"));
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

absl::Status ParseDecoderFields(const json& config, const std::string& source, ModelConfig& out) {
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "hidden_size", source));
  ASSIGN_OR_RETURN(out.intermediate_size, PositiveInt(config, "intermediate_size", source));
  ASSIGN_OR_RETURN(out.num_layers, PositiveInt(config, "num_hidden_layers", source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, "num_attention_heads", source));
  out.num_kv_heads = OptionalInt(config, "num_key_value_heads", out.num_heads);
  const bool head_dim_given = config.contains("head_dim") && config["head_dim"].is_number_integer();
  if (!head_dim_given && out.hidden_size % out.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size ", out.hidden_size,
                                                   " is not divisible by num_attention_heads ", out.num_heads,
                                                   " (and no head_dim is given)"));
  }
  out.head_dim = head_dim_given ? config["head_dim"].get<int64_t>() : out.hidden_size / out.num_heads;
  out.max_position_embeddings = OptionalInt(config, "max_position_embeddings", 4096);
  out.norm_eps = OptionalNumber(config, "rms_norm_eps", 1e-6);
  out.rope_theta = OptionalNumber(config, "rope_theta", 10000.0);
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "hidden_act", "silu", source));
  if (out.hidden_act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": hidden_act \"", out.hidden_act, "\" is not supported for this architecture (silu)"));
  }
  if (out.architecture == Architecture::kQwen2) {
    out.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else if (out.architecture == Architecture::kLlama) {
    out.attention_bias = OptionalBool(config, "attention_bias", false);
    out.output_bias = out.attention_bias;
    out.mlp_bias = OptionalBool(config, "mlp_bias", false);
  }
  const bool mistral_like = out.architecture == Architecture::kMistral || out.architecture == Architecture::kMixtral;
  if (out.architecture != Architecture::kLlama && config.contains("sliding_window") &&
      config["sliding_window"].is_number_integer() &&
      (mistral_like || OptionalBool(config, "use_sliding_window", false))) {
    out.sliding_window = config["sliding_window"].get<int64_t>();
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
  moe.num_experts = OptionalInt(config, "num_local_experts", 8);
  moe.experts_per_token = OptionalInt(config, "num_experts_per_tok", 2);
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
  if (OptionalBool(config, "alibi", false)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": \"alibi\": true: Falcon models with ALiBi position biases are not supported (rotary ones are)"));
  }
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "hidden_size", source));
  ASSIGN_OR_RETURN(out.num_layers, PositiveInt(config, FirstPresent(config, {"num_hidden_layers", "n_layer"}), source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, FirstPresent(config, {"num_attention_heads", "n_head"}), source));
  if (out.hidden_size % out.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size ", out.hidden_size,
                                                   " is not divisible by num_attention_heads ", out.num_heads));
  }
  out.head_dim = out.hidden_size / out.num_heads;
  out.parallel_attention = OptionalBool(config, "parallel_attn", true);
  const char* norms_key = "num_ln_in_parallel_attn";
  const int64_t parallel_norms = OptionalInt(config, norms_key, 0);  // 0: null or absent
  if (OptionalBool(config, "new_decoder_architecture", false)) {
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
    const bool multi_query = OptionalBool(config, "multi_query", true);
    out.num_kv_heads = multi_query ? 1 : out.num_heads;
    out.qkv_layout = multi_query ? FusedQkvLayout::kConsecutive : FusedQkvLayout::kPerHead;
  }
  ASSIGN_OR_RETURN(out.intermediate_size, MlpWidth(config, "ffn_hidden_size", "hidden_size", out.hidden_size, source));
  out.max_position_embeddings = OptionalInt(config, "max_position_embeddings", 2048);
  out.norm_eps = OptionalNumber(config, "layer_norm_epsilon", 1e-5);
  out.rope_theta = OptionalNumber(config, "rope_theta", 10000.0);
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "activation", "gelu", source));
  if (out.hidden_act != "gelu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": activation \"", out.hidden_act, "\" is not supported for falcon (gelu)"));
  }
  out.attention_bias = out.output_bias = out.mlp_bias = OptionalBool(config, "bias", false);
  out.tie_word_embeddings = OptionalBool(config, "tie_word_embeddings", true);
  return ParseRopeScaling(config, source, out);
}

absl::Status ParseGpt2Fields(const json& config, const std::string& source, ModelConfig& out) {
  ASSIGN_OR_RETURN(out.hidden_size, PositiveInt(config, "n_embd", source));
  ASSIGN_OR_RETURN(out.num_layers, PositiveInt(config, "n_layer", source));
  ASSIGN_OR_RETURN(out.num_heads, PositiveInt(config, "n_head", source));
  ASSIGN_OR_RETURN(out.max_position_embeddings, PositiveInt(config, "n_positions", source));
  out.num_kv_heads = out.num_heads;
  out.head_dim = out.hidden_size / out.num_heads;
  ASSIGN_OR_RETURN(out.intermediate_size, MlpWidth(config, "n_inner", "n_embd", out.hidden_size, source));
  out.norm_eps = OptionalNumber(config, "layer_norm_epsilon", 1e-5);
  ASSIGN_OR_RETURN(out.hidden_act, OptionalString(config, "activation_function", "gelu_new", source));
  if (out.hidden_act != "gelu_new" && out.hidden_act != "gelu") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": activation_function \"", out.hidden_act, "\" is not supported (gelu_new, gelu)"));
  }
  out.attention_bias = true;
  out.output_bias = true;
  out.mlp_bias = true;
  out.tie_word_embeddings = true;
  out.qkv_layout = FusedQkvLayout::kConsecutive;
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
  // Added to a variance in the compute dtype: above 1 it swamps any activation's (and 1e300 is inf in float32).
  if (!(std::isfinite(c.norm_eps) && c.norm_eps >= 0 && c.norm_eps <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the norm epsilon (rms_norm_eps / layer_norm_epsilon) ",
                                                   c.norm_eps, " must be a finite number in [0, 1]"));
  }
  if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": rope_theta ", c.rope_theta, " must be a finite number > 0"));
  }
  if (c.linear_rope_factor && !(std::isfinite(*c.linear_rope_factor) && *c.linear_rope_factor > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": linear rope scaling factor ", *c.linear_rope_factor, " must be a finite number > 0"));
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  if (c.architecture == Architecture::kGpt2 && c.hidden_size % c.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": n_embd ", c.hidden_size, " is not divisible by n_head ", c.num_heads));
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": head_dim ", c.head_dim, " must be a positive even number"));
  }
  for (auto id : {c.bos_token_id, c.pad_token_id, c.unk_token_id}) {
    if (id && (*id < 0 || *id >= c.vocab_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": special token id ", *id, " is outside the vocabulary of ", c.vocab_size));
    }
  }
  return absl::OkStatus();
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
  if (OptionalBool(q, "load_in_8bit", false)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where,
        ".load_in_8bit: bitsandbytes LLM.int8 checkpoints (weights with SCB scales) are not supported; serve "
        "the unquantized checkpoint with --quantization int8"));
  }
  if (!OptionalBool(q, "load_in_4bit", false)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".load_in_4bit is not true: nothing says how it is quantized"));
  }
  CheckpointQuantization quantization;
  ASSIGN_OR_RETURN(quantization.quant_type, OptionalString(q, "bnb_4bit_quant_type", "fp4", where));
  if (quantization.quant_type != "nf4" && quantization.quant_type != "fp4") {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".bnb_4bit_quant_type \"", quantization.quant_type, "\" is not supported (nf4, fp4)"));
  }
  quantization.double_quantization = OptionalBool(q, "bnb_4bit_use_double_quant", false);
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
    out.tie_word_embeddings = OptionalBool(config, "tie_word_embeddings", false);
    if (out.architecture == Architecture::kMixtral) RETURN_IF_ERROR(ParseMixtureOfExperts(config, source, out));
  }
  out.bos_token_id = OptionalId(config, "bos_token_id");
  out.eos_token_ids = IdList(config, "eos_token_id");
  out.pad_token_id = OptionalId(config, "pad_token_id");
  RETURN_IF_ERROR(ParseQuantizationConfig(config, source, out));
  RETURN_IF_ERROR(CheckConsistency(source, out));
  return out;
}

}  // namespace

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
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, path));
  // generation_config.json overrides the ids used for generation where it names them.
  const std::string generation_path = dir + "/generation_config.json";
  if (auto generation_text = ReadFile(generation_path); generation_text.ok()) {
    ASSIGN_OR_RETURN(json generation, ParseJsonObject(*generation_text, generation_path));
    if (auto bos = OptionalId(generation, "bos_token_id")) config.bos_token_id = bos;
    if (auto eos = IdList(generation, "eos_token_id"); !eos.empty()) config.eos_token_ids = eos;
    if (auto pad = OptionalId(generation, "pad_token_id")) config.pad_token_id = pad;
  }
  RETURN_IF_ERROR(CheckConsistency(path, config));
  return config;
}

}  // namespace attribution::engine
