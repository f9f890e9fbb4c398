// SPDX-License-Identifier: Apache-2.0
// A causal language model loaded from a Hugging Face directory (Llama, Mistral, Qwen2, GPT-2), with a
// forward pass shaped for attribution: input ids or input embeddings, right-padded batches whose rows
// never influence each other, the LM head applied only where asked, activation hooks, gradients with
// respect to inputs (never parameters), and a KV cache for decoding.
//
//   ASSIGN_OR_RETURN(auto model, CausalLM::Load("/models/tiny", {.dtype = at::kBFloat16}));
//   ForwardBatch batch{.input_ids = ids, .lengths = {5, 3}};
//   ASSIGN_OR_RETURN(TokenScores scores, model->ScoreTokens(batch, queries));
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model_config.h"
#include "engine/model/propagation_rules.h"
#include "engine/model/quantization.h"

namespace attribution::engine {

struct ScoredEntries;  // head_scores.h
struct HeadScores;

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // compute dtype: float32, bfloat16 or float16
  std::string device = "cpu";         // "cpu" or "cuda:N"
  Quantization quantization = Quantization::kNone;
  FourBitOptions four_bit;  // nf4 / fp4 settings
  // NaN or infinite weights fail the load unless this is set (a checkpoint known to carry them, e.g.
  // -inf masks stored as weights).
  bool allow_nonfinite_weights = false;
  // float32 on the CPU: keep a second copy of each dense linear weight in MKL's packed layout, which makes
  // products of few rows (short score rows, decode steps) 1.5-2.5x faster (PackedWeight).
  bool pack_weights_for_few_rows = true;
  // Vocabulary-sized floats of scored positions held at once (logits, log-softmax, top-k; a gradient's backward
  // recomputes them), 64 MiB: 524 positions of a 32,000-token vocabulary.
  int64_t scored_chunk_floats = int64_t{16} << 20;
};

// "float32" | "bfloat16" | "float16" (also "fp32", "bf16", "fp16").
absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name);
// The name ParseDtype reads first for a dtype it returns ("float32" for kFloat); other dtypes by LibTorch's name.
std::string DtypeName(at::ScalarType dtype);

// "cpu" | "cuda" | "cuda:N": the spelling only (whether the device works is known once LibTorch starts it, at
// Load), so a config can be checked without a device.
absl::Status CheckDeviceName(const std::string& name);

// The points of each decoder layer where component attribution reads and replaces activations, in
// forward order (TransformerLens's hook_resid_pre, hook_z, hook_attn_out, hook_mlp_out).
enum class ComponentSite {
  kResidPre = 0,  // the residual stream entering the layer: [B, S, hidden] (GPT-2: positions added)
  kHeads = 1,     // each query head's attention output before the output projection: [B, S, heads, head_dim]
  kAttnOut = 2,   // what the attention block adds to the residual stream (projection and bias): [B, S, hidden]
  kMlpOut = 3,    // what the MLP adds to the residual stream: [B, S, hidden]
};
inline constexpr int kComponentSites = 4;
inline constexpr ComponentSite kAllComponentSites[kComponentSites] = {ComponentSite::kResidPre, ComponentSite::kHeads,
                                                                      ComponentSite::kAttnOut, ComponentSite::kMlpOut};
// The API's names in lower case: residual_pre, attention_heads, attention_output, mlp_output.
const char* ComponentSiteName(ComponentSite site);
absl::StatusOr<ComponentSite> ParseComponentSite(const std::string& name);

// Callbacks into the forward pass. Each receives a tensor and may return a replacement of the same
// shape (e.g. a leaf that requires grad, or a patched activation), or an undefined tensor to keep it.
// With ForwardBatch::first_layers, B is the rows that have joined by that layer (the batch's first B).
struct ActivationHooks {
  // The residual stream after decoder layer `layer`: [B, S, hidden].
  std::function<at::Tensor(int64_t layer, const at::Tensor& residual)> after_layer;
  // Every component site of every layer, in forward order.
  std::function<at::Tensor(ComponentSite site, int64_t layer, const at::Tensor& activation)> at_site;
  // Read only: what each layer's attention computes from this forward's tokens, queries and keys with
  // positions applied: q [B, heads, S, D], k and v [B, kv_heads, S, D], and the mask [B, 1, S, K] of
  // the keys each query sees. The attention weights are softmax(q·kᵀ / √D) over the visible keys.
  std::function<void(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask)>
      attention_inputs;
  // Read only: a mixture-of-experts layer's router logits [B, S, num_experts] (Mixtral), before the
  // softmax and top-k choice.
  std::function<void(int64_t layer, const at::Tensor& router_logits)> router_logits;
};

// One forward's inputs. Rows are right-padded to S; lengths[r] tokens of row r are real.
struct ForwardBatch {
  at::Tensor input_ids;          // [B, S] int64, or undefined when inputs_embeds is given
  at::Tensor inputs_embeds;      // [B, S, hidden] compute dtype: token embeddings (GPT-2 adds positions)
  std::vector<int64_t> lengths;  // empty: every row has S real tokens
  KvCache* cache = nullptr;      // when set, row r continues the sequence held in the cache
  const ActivationHooks* hooks = nullptr;
  // Non-empty: row r of inputs_embeds is the residual stream entering decoder layer first_layers[r] (a
  // cached activation, GPT-2's positions included), and the row joins the forward there: layers before
  // it, and the position embeddings, skip the row. Non-decreasing, so the rows a layer runs are the
  // batch's first rows and its matmuls hold every row that has joined (rows patched at different
  // layers share one forward). A cache given with it keeps no keys of a row's skipped layers.
  std::vector<int64_t> first_layers;
  // What the backward propagates (forward values are the same under every rule).
  PropagationRules rules = PropagationRules::kGradient;
  // Called as each decoder layer begins, between its attention and its MLP (unless they run in parallel,
  // as Falcon's do), and before the final norm, and, when the batch takes
  // gradients, again as the backward reaches each of those points (on autograd's thread for the
  // device): the engine runs short waiting work there, so one long batch does not hold it up. Values
  // and gradients are the same with it or without.
  std::function<void()> pause_point;
};

// (row, position, token) triples: the score of `token` as the next token after `position`.
struct TokenQueries {
  std::vector<int64_t> rows;
  std::vector<int64_t> positions;
  std::vector<int64_t> tokens;
};

struct TokenScores {
  at::Tensor logits;         // [N] float32
  at::Tensor log_probs;      // [N] float32
  at::Tensor top_ids;        // [N, k] int64 when top_k > 0
  at::Tensor top_log_probs;  // [N, k] float32 when top_k > 0
};

enum class TokenQuantity { kLogProb, kProb, kLogit };

// The scalar a row contributes: sum_i weights[i] * quantity(tokens[i] after positions[i]), or, with
// exp_of_sum, the exponential of that sum (the probability of a whole multi-token target).
struct RowObjective {
  std::vector<int64_t> positions;
  std::vector<int64_t> tokens;
  std::vector<double> weights;  // empty: all 1
  TokenQuantity quantity = TokenQuantity::kLogProb;
  bool exp_of_sum = false;
  // Non-empty: log-probs (and probs) are over these tokens only, log_softmax of their logits: the
  // probability of an answer renormalised over the answer choices.
  std::vector<int64_t> choice_tokens;
};

// Per-token scores behind row objectives, flattened in row order (row 0's tokens first).
struct ObjectiveDetails {
  at::Tensor log_probs;      // [N] float32
  at::Tensor logits;         // [N] float32
  at::Tensor top_ids;        // [N, k] int64 when top_k > 0
  at::Tensor top_log_probs;  // [N, k] float32 when top_k > 0
};

struct InputGradients {
  at::Tensor values;     // [B] float32, each row's objective
  at::Tensor gradients;  // [B, S, hidden] d values[r] / d inputs_embeds[r], compute dtype
};

// Immutable after Load: every method is const and may run concurrently on different batches.
class CausalLM {
 public:
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const std::string& dir, const LoadOptions& options);
  ~CausalLM();

  const ModelConfig& config() const;
  // The options in effect: a checkpoint saved quantized by bitsandbytes sets quantization and four_bit.
  const LoadOptions& options() const;
  // Whether the linears were loaded quantized from the checkpoint (not quantized at load).
  bool prequantized() const;
  at::ScalarType dtype() const;
  at::Device device() const;
  // Bytes of every weight held on the device (quantized linears count their codes and scales).
  int64_t ResidentWeightBytes() const;
  // Tensors of the checkpoint that the architecture does not use (loaded past, not an error: callers
  // warn, since they may mean a config for another architecture or a damaged export).
  const std::vector<std::string>& unused_weights() const;
  // What loading did that the config did not say (a stored head used although the config ties it): callers warn.
  const std::vector<std::string>& load_warnings() const;

  // Token embeddings: [B, S] int64 -> [B, S, hidden] (no position embeddings), never requiring grad.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids) const;

  // Final hidden states after the last norm: [B, S, hidden]. Differentiable when grad mode is on.
  absl::StatusOr<at::Tensor> Hidden(const ForwardBatch& batch) const;

  // LM head at the given rows/positions of `hidden` ([B, S, hidden]): [N, vocab] float32 logits.
  at::Tensor LogitsAt(const at::Tensor& hidden, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& positions) const;

  // The scores of entries.tokens[i] at (rows[i], positions[i]) of `hidden`, from vocabulary-sized logits made a
  // chunk of scored_chunk_floats at a time (ScoreWithHead), differentiable when `hidden` requires a gradient.
  HeadScores ScoresAt(const at::Tensor& hidden, const std::vector<int64_t>& rows, const std::vector<int64_t>& positions,
                      const ScoredEntries& entries, int64_t top_k) const;

  // The logits of tokens[i] at (rows[i], positions[i]) of `hidden`: [N] float32, from those tokens'
  // rows of the LM head only (a logit difference reads two of the vocabulary's logits).
  at::Tensor TokenLogitsAt(const at::Tensor& hidden, const std::vector<int64_t>& rows,
                           const std::vector<int64_t>& positions, const std::vector<int64_t>& tokens) const;

  // Forward only: scores of the queried tokens, plus the top_k alternatives at each queried position.
  absl::StatusOr<TokenScores> ScoreTokens(const ForwardBatch& batch, const TokenQueries& queries,
                                          int64_t top_k = 0) const;

  // Each row's objective as a differentiable [B] float32 tensor (objectives.size() must be B).
  // When `details` is given it also receives every scored token's log-prob and logit (detached, on
  // the CPU) and the top_k alternatives at each scored position.
  absl::StatusOr<at::Tensor> ObjectiveValues(const ForwardBatch& batch, const std::vector<RowObjective>& objectives,
                                             ObjectiveDetails* details = nullptr, int64_t top_k = 0) const;

  // Forward + backward with respect to batch.inputs_embeds (which must be given).
  absl::StatusOr<InputGradients> ObjectiveGradients(const ForwardBatch& batch,
                                                    const std::vector<RowObjective>& objectives) const;

  class Impl;  // opaque outside engine/model

 private:
  explicit CausalLM(std::unique_ptr<Impl> impl);
  absl::Status Validate(const ForwardBatch& batch) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attribution::engine
