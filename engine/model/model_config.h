// SPDX-License-Identifier: Apache-2.0
// The hyper-parameters of a Hugging Face causal LM, read from config.json (and generation_config.json /
// tokenizer_config.json for special token ids) and checked for consistency before any weight is read.
//
//   ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig("/models/tiny-llama"));
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

enum class Architecture { kLlama, kMistral, kQwen2, kGpt2, kFalcon, kMixtral };

// Returns the Hugging Face model_type spelling ("llama", "mistral", "qwen2", "gpt2", "falcon", "mixtral").
const char* ArchitectureName(Architecture arch);

// Llama-3 style frequency-dependent RoPE scaling ("rope_type": "llama3").
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// How Falcon's fused query_key_value weight orders its rows (transformers' FalconAttention._split_heads).
enum class FusedQkvLayout {
  kSeparate,     // not fused: q_proj, k_proj, v_proj (every architecture but GPT-2 and Falcon)
  kConsecutive,  // [q heads | k heads | v heads]: GPT-2's c_attn, Falcon multi_query
  kPerHead,      // [heads, (q, k, v), head_dim]: Falcon without multi_query
  kPerKvGroup,   // [kv_heads, (q of the group's heads, k, v), head_dim]: new_decoder_architecture
};

// A Mixtral sparse mixture-of-experts MLP: a router picks experts_per_token of num_experts per token.
struct MixtureOfExperts {
  int64_t num_experts = 0;        // num_local_experts
  int64_t experts_per_token = 0;  // num_experts_per_tok
};

// config.json's quantization_config of a checkpoint saved quantized by bitsandbytes (4-bit): its linears
// are stored as codes and quant states, and load as they are.
struct CheckpointQuantization {
  std::string quant_type;            // bnb_4bit_quant_type: "nf4" or "fp4"
  bool double_quantization = false;  // bnb_4bit_use_double_quant
  std::string compute_dtype;         // bnb_4bit_compute_dtype, as written (the server's --dtype decides)
  // llm_int8_skip_modules needs no field: a skipped linear is stored dense, without a quant state.
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-6;  // rms_norm_eps, or layer_norm_epsilon for GPT-2 and Falcon
  double rope_theta = 10000.0;
  std::optional<Llama3RopeScaling> llama3_rope_scaling;
  std::optional<double> linear_rope_factor;  // "rope_type": "linear"
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama's attention_bias) carry biases
  bool output_bias = false;     // o_proj carries a bias (Llama attention_bias=true)
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // Mistral; keys further back than this are masked
  // With a sliding_window, the layers that apply it (num_layers entries): every layer of Mistral and
  // Mixtral; Qwen2's from max_window_layers on, or those its layer_types name "sliding_attention".
  std::vector<bool> windowed_layers;
  std::string hidden_act = "silu";
  // Falcon: the attention and the MLP both read the block's input (parallel_attn or
  // new_decoder_architecture), each through its own LayerNorm when separate_parallel_norms.
  bool parallel_attention = false;
  bool separate_parallel_norms = false;
  // GPT-2's scale_attn_weights and scale_attn_by_inverse_layer_idx (see AttentionScale).
  bool scale_attention_by_head_dim = true;
  bool scale_attention_by_layer = false;
  FusedQkvLayout qkv_layout = FusedQkvLayout::kSeparate;
  std::optional<MixtureOfExperts> mixture_of_experts;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  // Decoding settings generation_config.json gives (do_sample, temperature, repetition_penalty, ...): transformers'
  // generate() applies them by default, Generate applies only its request's, so loading warns of them.
  std::vector<std::string> unapplied_generation_settings;
  std::optional<int64_t> unk_token_id;
  std::optional<CheckpointQuantization> checkpoint_quantization;
};

// The factor of layer `layer`'s (from 0) attention logits q·kᵀ: 1/sqrt(head_dim), as every architecture has it
// unless a GPT-2 config turns it off (scale_attn_weights: false) or also divides by the layer's number from 1
// (scale_attn_by_inverse_layer_idx, Stanford CRFM's checkpoints), as transformers' GPT2Attention does.
double AttentionScale(const ModelConfig& config, int64_t layer);

// Reads <dir>/config.json (+ generation_config.json, tokenizer_config.json where present).
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& dir);

// Parses an already loaded config.json text; `source` names it in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);

}  // namespace attribution::engine
