// SPDX-License-Identifier: Apache-2.0
// Maps Hugging Face tensor names of each architecture onto CausalLM::Impl.
#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/bitsandbytes_checkpoint.h"
#include "engine/model/causal_lm_impl.h"
#include "engine/model/rope.h"
#include "engine/model/weight_store.h"

namespace attribution::engine {
namespace {

class Loader {
 public:
  Loader(WeightStore& store, CausalLM::Impl& impl)
      : store_(store), impl_(impl), options_(at::TensorOptions().dtype(impl.options.dtype).device(impl.device)) {}

  absl::StatusOr<at::Tensor> Tensor(const std::string& name, std::vector<int64_t> shape) {
    return Take(name, shape, options_);
  }

  absl::StatusOr<at::Tensor> Take(const std::string& name, const std::vector<int64_t>& shape,
                                  const at::TensorOptions& options) {
    return store_.Take(name, shape, options, impl_.options.allow_nonfinite_weights);
  }

  absl::StatusOr<at::Tensor> OptionalBias(bool present, const std::string& name, int64_t size) {
    if (!present) return at::Tensor();
    return Tensor(name, {size});
  }

  // A linear stored as nn.Linear ([out, in]) or, with conv1d_layout, as GPT-2's Conv1D ([in, out]);
  // `output_parts` as Linear::Create takes them.
  absl::StatusOr<Linear> MakeLinear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                                    bool conv1d_layout = false, std::vector<int64_t> output_parts = {}) {
    ASSIGN_OR_RETURN(at::Tensor b, OptionalBias(bias, prefix + ".bias", out));
    if (impl_.prequantized) return PrequantizedLinear(prefix, in, out, std::move(b), std::move(output_parts));
    std::vector<int64_t> shape = conv1d_layout ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in};
    ASSIGN_OR_RETURN(at::Tensor weight, Take(prefix + ".weight", shape, LinearWeightOptions()));
    if (conv1d_layout) weight = weight.t().contiguous();
    return CreateLinear(prefix + ".weight", std::move(weight), std::move(b), std::move(output_parts));
  }

  // Linear::Create with the load's quantization; its refusals (a weight of partial 4-bit blocks) name
  // the tensor, which Quantize does not know.
  absl::StatusOr<Linear> CreateLinear(const std::string& name, at::Tensor weight, at::Tensor bias,
                                      std::vector<int64_t> output_parts) {
    absl::StatusOr<Linear> linear = Linear::Create(std::move(weight), std::move(bias), impl_.options.quantization,
                                                   std::move(output_parts), impl_.options.four_bit);
    if (linear.ok()) return linear;
    return absl::Status(linear.status().code(), absl::StrCat("\"", name, "\": ", linear.status().message()));
  }

  // A linear of a bitsandbytes checkpoint: its codes and quant state as stored, or, for a module the
  // quantization skipped (llm_int8_skip_modules), its dense weight.
  absl::StatusOr<Linear> PrequantizedLinear(const std::string& prefix, int64_t in, int64_t out, at::Tensor bias,
                                            std::vector<int64_t> output_parts) {
    if (!IsBitsandbytesWeight(store_, prefix, impl_.options.quantization)) {
      ASSIGN_OR_RETURN(at::Tensor weight, Tensor(prefix + ".weight", {out, in}));
      return Linear::Create(std::move(weight), std::move(bias), Quantization::kNone, std::move(output_parts));
    }
    ASSIGN_OR_RETURN(QuantizedWeight weight,
                     ReadBitsandbytesWeight(store_, prefix, impl_.options.quantization, out, in, impl_.device));
    // What the tensors hold, not config.json's claim: ListModels and the settings digest report these.
    impl_.options.four_bit.block_size = weight.block_size;
    impl_.options.four_bit.double_quantization = weight.nested.has_value();
    return Linear::FromQuantized(std::move(weight), std::move(bias), std::move(output_parts));
  }

  absl::Status LoadLlamaFamily() {
    const ModelConfig& c = impl_.config;
    const int64_t h = c.hidden_size, q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
    ASSIGN_OR_RETURN(impl_.token_embedding, Tensor("model.embed_tokens.weight", {c.vocab_size, h}));
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      DecoderLayer layer;
      ASSIGN_OR_RETURN(layer.attention_norm_weight, Tensor(p + "input_layernorm.weight", {h}));
      ASSIGN_OR_RETURN(layer.mlp_norm_weight, Tensor(p + "post_attention_layernorm.weight", {h}));
      // Each projection is read (and quantized) on its own, then stacked: one part at a time is
      // transient beside the fused weight, never a second copy of the model.
      std::vector<Linear> qkv(3);
      ASSIGN_OR_RETURN(qkv[0], MakeLinear(p + "self_attn.q_proj", h, q_out, c.attention_bias));
      ASSIGN_OR_RETURN(qkv[1], MakeLinear(p + "self_attn.k_proj", h, kv_out, c.attention_bias));
      ASSIGN_OR_RETURN(qkv[2], MakeLinear(p + "self_attn.v_proj", h, kv_out, c.attention_bias));
      ASSIGN_OR_RETURN(layer.qkv, Linear::Concat(std::move(qkv)));
      ASSIGN_OR_RETURN(layer.o, MakeLinear(p + "self_attn.o_proj", q_out, h, c.output_bias));
      if (c.mixture_of_experts) {
        RETURN_IF_ERROR(LoadExperts(p + "block_sparse_moe.", layer.experts));
      } else {
        ASSIGN_OR_RETURN(layer.gate_up, LoadGateUp(p + "mlp.gate_proj", p + "mlp.up_proj", c.mlp_bias));
        ASSIGN_OR_RETURN(layer.down, MakeLinear(p + "mlp.down_proj", c.intermediate_size, h, c.mlp_bias));
      }
      impl_.layers.push_back(std::move(layer));
    }
    ASSIGN_OR_RETURN(impl_.final_norm_weight, Tensor("model.norm.weight", {h}));
    impl_.rope_inverse_frequencies = RopeInverseFrequencies(c, impl_.device);
    return LoadHead();
  }

  // Falcon: "transformer.h.N.*", LayerNorms with biases, one fused query_key_value whose rows are put
  // in our [q | k | v] order at load, a GELU MLP; parallel blocks have one norm ("input_layernorm") or,
  // in the new decoder architecture, one per branch ("ln_attn", "ln_mlp").
  absl::Status LoadFalcon() {
    const ModelConfig& c = impl_.config;
    const int64_t h = c.hidden_size, q_out = c.num_heads * c.head_dim;
    if (impl_.prequantized) {
      return absl::InvalidArgumentError(
          "config.json quantization_config: pre-quantized bitsandbytes checkpoints load for llama, mistral, qwen2 and "
          "mixtral; Falcon's fused query_key_value is not supported (serve the unquantized checkpoint with "
          "--quantization)");
    }
    ASSIGN_OR_RETURN(impl_.token_embedding, Tensor("transformer.word_embeddings.weight", {c.vocab_size, h}));
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("transformer.h.", i, ".");
      DecoderLayer layer;
      const std::string attention_norm = c.separate_parallel_norms ? "ln_attn" : "input_layernorm";
      ASSIGN_OR_RETURN(layer.attention_norm_weight, Tensor(p + attention_norm + ".weight", {h}));
      ASSIGN_OR_RETURN(layer.attention_norm_bias, Tensor(p + attention_norm + ".bias", {h}));
      if (c.separate_parallel_norms || !c.parallel_attention) {
        const std::string mlp_norm = c.separate_parallel_norms ? "ln_mlp" : "post_attention_layernorm";
        ASSIGN_OR_RETURN(layer.mlp_norm_weight, Tensor(p + mlp_norm + ".weight", {h}));
        ASSIGN_OR_RETURN(layer.mlp_norm_bias, Tensor(p + mlp_norm + ".bias", {h}));
      }
      ASSIGN_OR_RETURN(layer.qkv, LoadFusedQkv(p + "self_attention.query_key_value"));
      ASSIGN_OR_RETURN(layer.o, MakeLinear(p + "self_attention.dense", q_out, h, c.attention_bias));
      ASSIGN_OR_RETURN(layer.gate_up, MakeLinear(p + "mlp.dense_h_to_4h", h, c.intermediate_size, c.mlp_bias));
      ASSIGN_OR_RETURN(layer.down, MakeLinear(p + "mlp.dense_4h_to_h", c.intermediate_size, h, c.mlp_bias));
      impl_.layers.push_back(std::move(layer));
    }
    ASSIGN_OR_RETURN(impl_.final_norm_weight, Tensor("transformer.ln_f.weight", {h}));
    ASSIGN_OR_RETURN(impl_.final_norm_bias, Tensor("transformer.ln_f.bias", {h}));
    impl_.rope_inverse_frequencies = RopeInverseFrequencies(c, impl_.device);
    return LoadHead();
  }

  absl::Status LoadGpt2() {
    const ModelConfig& c = impl_.config;
    const int64_t h = c.hidden_size;
    if (impl_.prequantized) {
      return absl::InvalidArgumentError(
          "config.json quantization_config: pre-quantized bitsandbytes checkpoints load for llama, mistral, qwen2 "
          "and mixtral; GPT-2's Conv1D layers are not supported (serve the unquantized checkpoint with "
          "--quantization)");
    }
    // GPT2LMHeadModel saves "transformer.*"; bare GPT2Model checkpoints drop the prefix.
    const std::string root = store_.Contains("transformer.wte.weight") ? "transformer." : "";
    ASSIGN_OR_RETURN(impl_.token_embedding, Tensor(root + "wte.weight", {c.vocab_size, h}));
    ASSIGN_OR_RETURN(impl_.position_embedding, Tensor(root + "wpe.weight", {c.max_position_embeddings, h}));
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat(root, "h.", i, ".");
      DecoderLayer layer;
      ASSIGN_OR_RETURN(layer.attention_norm_weight, Tensor(p + "ln_1.weight", {h}));
      ASSIGN_OR_RETURN(layer.attention_norm_bias, Tensor(p + "ln_1.bias", {h}));
      ASSIGN_OR_RETURN(layer.mlp_norm_weight, Tensor(p + "ln_2.weight", {h}));
      ASSIGN_OR_RETURN(layer.mlp_norm_bias, Tensor(p + "ln_2.bias", {h}));
      RETURN_IF_ERROR(LoadGpt2Attention(p + "attn.", layer));
      ASSIGN_OR_RETURN(layer.gate_up, MakeLinear(p + "mlp.c_fc", h, c.intermediate_size, true, true));
      ASSIGN_OR_RETURN(layer.down, MakeLinear(p + "mlp.c_proj", c.intermediate_size, h, true, true));
      impl_.layers.push_back(std::move(layer));
    }
    ASSIGN_OR_RETURN(impl_.final_norm_weight, Tensor(root + "ln_f.weight", {h}));
    ASSIGN_OR_RETURN(impl_.final_norm_bias, Tensor(root + "ln_f.bias", {h}));
    return LoadHead();
  }

 private:
  // Weights about to be quantized are read in float32, so quantization sees full precision.
  at::TensorOptions LinearWeightOptions() const {
    return impl_.options.quantization == Quantization::kNone ? options_ : options_.dtype(at::kFloat);
  }

  // transformers' rule (PreTrainedModel.tie_weights): a tied config without a stored head ties it; a stored head
  // is used unless the config ties it and it equals the embedding (a copy many tied checkpoints carry). An untied
  // config without one is refused: transformers would start that head from random values.
  absl::Status LoadHead() {
    const ModelConfig& c = impl_.config;
    for (Quantization kind : {Quantization::kNf4, Quantization::kFp4}) {
      if (!impl_.prequantized || !IsBitsandbytesWeight(store_, "lm_head", kind)) continue;
      // Logits and the token-logit shortcut read the head as a dense matrix.
      return absl::InvalidArgumentError(absl::StrCat(
          "\"lm_head.weight\" is saved quantized by bitsandbytes as ", QuantizationName(kind),
          ": a quantized lm_head is not supported (save the checkpoint with \"lm_head\" in llm_int8_skip_modules, "
          "as transformers does when none are given)"));
    }
    if (!store_.Contains("lm_head.weight")) {
      if (c.tie_word_embeddings) return TieHead();
      return absl::InvalidArgumentError(
          "config.json: tie_word_embeddings is false but the checkpoint holds no lm_head.weight (transformers would "
          "start the output head from random values)");
    }
    const std::vector<int64_t> shape = {c.vocab_size, c.hidden_size};
    at::Tensor head;
    if (c.tie_word_embeddings) {  // compared on the host: a copy the head then drops never takes device memory
      ASSIGN_OR_RETURN(head, Take("lm_head.weight", shape, options_.device(at::kCPU)));
      if (at::equal(head, impl_.token_embedding.to(at::kCPU))) return TieHead();
      head = head.to(impl_.device);
      impl_.load_warnings.push_back(
          "config.json ties the output head to the token embedding (tie_word_embeddings), but the checkpoint's "
          "lm_head.weight differs from it: the stored head is used, as transformers does (set tie_word_embeddings "
          "to false to say so)");
    } else {
      ASSIGN_OR_RETURN(head, Tensor("lm_head.weight", shape));
    }
    impl_.tied_head = false;
    ASSIGN_OR_RETURN(impl_.lm_head, Linear::Create(std::move(head), at::Tensor(), Quantization::kNone));
    return absl::OkStatus();
  }

  // The head's weight is the token embedding's tensor itself (shared, not copied).
  absl::Status TieHead() {
    impl_.tied_head = true;
    ASSIGN_OR_RETURN(impl_.lm_head, Linear::Create(impl_.token_embedding, at::Tensor(), Quantization::kNone));
    return absl::OkStatus();
  }

  // A gated MLP's gate and up projections, fused into one matmul.
  absl::StatusOr<Linear> LoadGateUp(const std::string& gate, const std::string& up, bool bias) {
    const ModelConfig& c = impl_.config;
    std::vector<Linear> parts(2);
    ASSIGN_OR_RETURN(parts[0], MakeLinear(gate, c.hidden_size, c.intermediate_size, bias));
    ASSIGN_OR_RETURN(parts[1], MakeLinear(up, c.hidden_size, c.intermediate_size, bias));
    return Linear::Concat(std::move(parts));
  }

  // Mixtral's "block_sparse_moe.": the router ("gate", kept dense: a quantized router would pick other
  // experts) and each expert's w1 (gate), w3 (up) and w2 (down).
  absl::Status LoadExperts(const std::string& p, ExpertsMlp& experts) {
    const ModelConfig& c = impl_.config;
    const int64_t h = c.hidden_size, count = c.mixture_of_experts->num_experts;
    if (impl_.prequantized && IsBitsandbytesWeight(store_, p + "gate", impl_.options.quantization)) {
      ASSIGN_OR_RETURN(experts.router, PrequantizedLinear(p + "gate", h, count, at::Tensor(), {}));
    } else {
      ASSIGN_OR_RETURN(at::Tensor router, Tensor(p + "gate.weight", {count, h}));
      ASSIGN_OR_RETURN(experts.router, Linear::Create(std::move(router), at::Tensor(), Quantization::kNone));
    }
    for (int64_t e = 0; e < count; ++e) {
      const std::string expert = absl::StrCat(p, "experts.", e, ".");
      ASSIGN_OR_RETURN(Linear gate_up, LoadGateUp(expert + "w1", expert + "w3", false));
      ASSIGN_OR_RETURN(Linear down, MakeLinear(expert + "w2", c.intermediate_size, h, false));
      experts.gate_up.push_back(std::move(gate_up));
      experts.down.push_back(std::move(down));
    }
    return absl::OkStatus();
  }

  // Falcon's query_key_value, its rows reordered into [q heads | k heads | v heads] (see FusedQkvLayout)
  // before quantization, so 4-bit blocks follow the rows wherever the input width is a multiple of 64.
  absl::StatusOr<Linear> LoadFusedQkv(const std::string& prefix) {
    const ModelConfig& c = impl_.config;
    const int64_t h = c.hidden_size, d = c.head_dim, heads = c.num_heads, kv = c.num_kv_heads;
    const int64_t out = (heads + 2 * kv) * d;
    ASSIGN_OR_RETURN(at::Tensor weight, Take(prefix + ".weight", {out, h}, LinearWeightOptions()));
    ASSIGN_OR_RETURN(at::Tensor bias, OptionalBias(c.attention_bias, prefix + ".bias", out));
    if (c.qkv_layout != FusedQkvLayout::kConsecutive) {  // multi-query weights are stored in our order
      // bitsandbytes' 4-bit blocks run flat over the stored rows: a block that spans two head slots would
      // hold other weights once the slots are reordered, and its codes would not be bitsandbytes'.
      const int64_t block = impl_.options.four_bit.block_size;
      if (IsFourBit(impl_.options.quantization) && (d * h) % block != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "\"", prefix, ".weight\": a head's rows hold ", d * h, " weights, not whole 4-bit blocks of ", block,
            ", so Falcon's reordered query_key_value cannot keep bitsandbytes' blocks (a smaller block size, one ",
            "that divides ", d * h, ", can)"));
      }
      const at::Tensor rows = FusedQkvRowOrder(c).to(weight.device());
      weight = weight.index_select(0, rows);
      if (bias.defined()) bias = bias.index_select(0, rows);
    }
    return CreateLinear(prefix + ".weight", std::move(weight), std::move(bias), {heads * d, kv * d, kv * d});
  }

  // The stored rows of each of our [q heads | k heads | v heads] rows, for the per-head and per-KV-group
  // layouts of Falcon's query_key_value.
  static at::Tensor FusedQkvRowOrder(const ModelConfig& c) {
    const int64_t d = c.head_dim, heads = c.num_heads, kv = c.num_kv_heads, group = heads / kv;
    std::vector<int64_t> slots;  // stored head slots (d rows each), in our order
    auto add = [&](auto slot_of, int64_t count) {
      for (int64_t j = 0; j < count; ++j) slots.push_back(slot_of(j));
    };
    if (c.qkv_layout == FusedQkvLayout::kPerHead) {  // [heads, (q, k, v), d]
      for (int64_t part = 0; part < 3; ++part) add([&](int64_t j) { return 3 * j + part; }, heads);
    } else {  // kPerKvGroup: [kv, (the group's q heads, k, v), d]
      add([&](int64_t j) { return (j / group) * (group + 2) + j % group; }, heads);
      add([&](int64_t j) { return j * (group + 2) + group; }, kv);
      add([&](int64_t j) { return j * (group + 2) + group + 1; }, kv);
    }
    return (at::tensor(slots, at::kLong).mul(d).unsqueeze(1) + at::arange(d, at::kLong).unsqueeze(0)).reshape(-1);
  }

  // GPT-2 stores q, k, v fused in one Conv1D ([hidden, 3 * hidden]), as our layers hold them. 4-bit
  // blocks never straddle two of the parts: each holds hidden * hidden weights, whole blocks of 64
  // whenever hidden is a multiple of 8.
  absl::Status LoadGpt2Attention(const std::string& p, DecoderLayer& layer) {
    const int64_t h = impl_.config.hidden_size;
    ASSIGN_OR_RETURN(layer.qkv, MakeLinear(p + "c_attn", h, 3 * h, true, true, {h, h, h}));
    ASSIGN_OR_RETURN(layer.o, MakeLinear(p + "c_proj", h, h, true, true));
    return absl::OkStatus();
  }

  WeightStore& store_;
  CausalLM::Impl& impl_;
  at::TensorOptions options_;
};

// Buffers that older transformers versions saved beside the weights (GPT-2's causal masks, Llama's
// rotary frequencies): known, recomputed by us, not worth a warning.
bool IsSavedBuffer(const std::string& name) {
  for (const char* suffix : {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"}) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

}  // namespace

absl::Status LoadWeights(const std::string& dir, CausalLM::Impl& impl) {
  ASSIGN_OR_RETURN(auto store, WeightStore::Open(dir));
  Loader loader(*store, impl);
  switch (impl.config.architecture) {
    case Architecture::kGpt2:
      RETURN_IF_ERROR(loader.LoadGpt2());
      break;
    case Architecture::kFalcon:
      RETURN_IF_ERROR(loader.LoadFalcon());
      break;
    default:
      RETURN_IF_ERROR(loader.LoadLlamaFamily());
  }
  for (const std::string& name : store->Untaken()) {
    if (!IsSavedBuffer(name)) impl.unused_weights.push_back(name);
  }
  return absl::OkStatus();
}

}  // namespace attribution::engine
