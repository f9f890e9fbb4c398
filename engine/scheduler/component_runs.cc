// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/component_runs.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/torch_errors.h"
#include "engine/scheduler/row_groups.h"

namespace attribution::engine {
namespace {

// The rows' objectives, positions counted from the first token each row computes.
std::vector<RowObjective> Objectives(const std::vector<const Row*>& rows, const std::vector<int64_t>& skipped = {}) {
  std::vector<RowObjective> objectives;
  for (size_t r = 0; r < rows.size(); ++r) {
    objectives.push_back(rows[r]->objective);
    if (!skipped.empty()) {
      for (int64_t& position : objectives.back().positions) position -= skipped[r];
    }
  }
  return objectives;
}

// The layer whose residual stream a row's forward starts from: its patch's (before it, the row's
// activations are its own run's, captured).
int64_t JoiningLayer(const Row& row) { return row.component.patch ? row.component.patch->layer : 0; }

absl::Status CheckPatch(const ComponentSelection& patch, const ModelConfig& config) {
  if (patch.layer < 0 || patch.layer >= config.num_layers || patch.head >= config.num_heads) {
    return absl::InvalidArgumentError(absl::StrCat("patch at layer ", patch.layer, ", head ", patch.head,
                                                   " is outside the model's ", config.num_layers, " layers and ",
                                                   config.num_heads, " heads"));
  }
  return absl::OkStatus();
}

// AtP*'s value + query + key terms (ComponentWork::exact_attention_weights) of one layer's heads, from
// the run's and the other run's q, k, v ([heads, S, D], float64: the terms are differences of nearly
// equal weights), the hidden (query, key) slots [S, S], d objective / d head output [heads, S, D] and the
// layer's AttentionScale: [heads, S]. The [heads, S, S] weights go a block of query rows at a time (every term is a sum
// over query rows, or one value per row), each of the ~10 temporaries of a block near 16 MB; `pause` runs between
// blocks: the whole grows with S², about a minute on a CPU for one 4096-token pair, and waiting short calls (and the
// check for a cancelled batch) must not wait for all of it.
at::Tensor ExactWeightTerms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& other_q,
                            const at::Tensor& other_k, const at::Tensor& other_v, const at::Tensor& hidden,
                            const at::Tensor& gradient, double attention_scale, const std::function<void()>& pause) {
  const int64_t heads = q.size(0), length = q.size(1);
  const at::Tensor scale = at::scalar_tensor(attention_scale, q.options());
  auto logits = [&](const at::Tensor& qs, const at::Tensor& ks) {
    return at::matmul(qs, ks.transpose(-1, -2)) * scale;
  };
  const int64_t block = std::max<int64_t>(1, (int64_t{16} << 20) / (heads * length * 8));
  at::Tensor value_term = at::zeros({heads, length}, q.options());
  at::Tensor key_term = at::zeros({heads, length}, q.options());
  std::vector<at::Tensor> query_terms;
  for (int64_t first = 0; first < length; first += block) {
    if (pause) pause();
    const int64_t rows = std::min(block, length - first);
    const at::Tensor hidden_rows = hidden.narrow(0, first, rows);  // [n, S]
    auto masked = [&](const at::Tensor& x) {
      return x.masked_fill(hidden_rows, -std::numeric_limits<double>::infinity());
    };
    const at::Tensor q_rows = q.narrow(1, first, rows), gradient_rows = gradient.narrow(1, first, rows);
    const at::Tensor own_logits = logits(q_rows, k);
    const at::Tensor log_weights = at::log_softmax(masked(own_logits), -1);  // [heads, n, S]
    const at::Tensor weights = log_weights.exp();
    const at::Tensor weight_gradient = at::matmul(gradient_rows, v.transpose(-1, -2));  // d objective / d a[t, s]
    const at::Tensor expected = (weights * weight_gradient).sum(-1, /*keepdim=*/true);
    // Values enter linearly: their first-order term is exact for this head's output.
    value_term += ((other_v - v) * at::matmul(weights.transpose(-1, -2), gradient_rows)).sum(-1);
    // The other run's query at t: row t's weights recomputed.
    query_terms.push_back(
        ((at::softmax(masked(logits(other_q.narrow(1, first, rows), k)), -1) - weights) * weight_gradient).sum(-1));
    // The other run's key at s shifts logit s of every row by δ, so row t's weights become a' with
    // a'[s] = a[s] e^δ / Z, a'[j] = a[j] / Z, Z = 1 − a[s] + a[s] e^δ, and
    // Σ_j (a'[j] − a[j]) g[j] = f · (g[s] − Σ_j a[j] g[j]) with f = (a[s] e^δ − a[s]) / Z.
    const at::Tensor shifted = log_weights + (logits(q_rows, other_k) - own_logits);  // log(a[s] e^δ)
    const at::Tensor small = shifted.clamp_max(0).exp(), large_inverse = (-shifted.clamp_min(0)).exp();
    const at::Tensor share = at::where(shifted > 0, (1 - weights * large_inverse) / (1 + (1 - weights) * large_inverse),
                                       (small - weights) / (1 - weights + small));
    key_term += at::where(hidden_rows, at::zeros_like(share), share * (weight_gradient - expected)).sum(1);
  }
  return value_term + at::cat(query_terms, 1) + key_term;
}

// ExactWeightTerms of every head of one layer of run `own` ([2, layers, heads, S, D] captures), given
// d objective / d head output [S, heads, D] and the layer's AttentionScale: [S, heads].
at::Tensor ExactWeightEstimates(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values,
                                const at::Tensor& visible, int own, int64_t layer, const at::Tensor& head_gradient,
                                double attention_scale, const std::function<void()>& pause) {
  const int64_t heads = queries.size(2);
  const int64_t group = heads / keys.size(2);  // query heads per key / value head
  // Run `run`'s query heads, or the key / value heads they read.
  auto take = [&](const at::Tensor& captured, int run, bool per_query_head) {
    const at::Tensor x = captured[run][layer];
    if (per_query_head) return x.to(at::kDouble);
    const at::Tensor index = at::arange(0, heads, at::kLong).div(group, "floor").to(x.device());
    return x.index_select(0, index).to(at::kDouble);
  };
  return ExactWeightTerms(take(queries, own, true), take(keys, own, false), take(values, own, false),
                          take(queries, 1 - own, true), take(keys, 1 - own, false), take(values, 1 - own, false),
                          visible.logical_not(), head_gradient.transpose(0, 1).to(at::kDouble), attention_scale, pause)
      .transpose(0, 1);
}

}  // namespace

absl::StatusOr<const ComponentRuns::Captured*> ComponentRuns::Capture(const Row& row) {
  const std::shared_ptr<const PromptPair>& pair = row.component.pair;
  const bool attention = row.component.exact_attention_weights;
  auto held = pairs_.find(pair.get());
  if (held != pairs_.end() && (!attention || held->second.queries.defined())) return &held->second;
  const bool sites = held == pairs_.end();
  // Kept across batches, some of which take gradients: never inference tensors.
  c10::InferenceMode not_inference(/*enabled=*/false);
  c10::AutoGradMode no_grad(false);
  std::array<std::vector<at::Tensor>, kComponentSites> per_layer;
  std::array<std::vector<at::Tensor>, 3> attention_inputs;  // queries, keys, values
  std::vector<at::Tensor> visible;
  std::vector<size_t> visible_of_layer;
  ActivationHooks hooks;
  if (sites) {
    hooks.at_site = [&per_layer](ComponentSite site, int64_t, const at::Tensor& activation) {
      per_layer[static_cast<int>(site)].push_back(activation.detach());
      return at::Tensor();
    };
  }
  if (attention) {
    hooks.attention_inputs = [&](int64_t, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& mask) {
      attention_inputs[0].push_back(q.detach());
      attention_inputs[1].push_back(k.detach());
      attention_inputs[2].push_back(v.detach());
      // Each layer's own: with the last layer's for all, a model mixing full and windowed layers got the
      // other kind's weights in half its layers (errors as large as the grid).
      const at::Tensor layer_visible = mask[0][0];
      size_t kind = 0;
      while (kind < visible.size() && !at::equal(visible[kind], layer_visible)) ++kind;
      if (kind == visible.size()) visible.push_back(layer_visible);
      visible_of_layer.push_back(kind);
    };
  }
  ForwardBatch batch{.input_ids = at::stack({at::tensor(pair->clean_ids), at::tensor(pair->corrupted_ids)}),
                     .hooks = &hooks};
  RETURN_IF_ERROR(model_->Hidden(batch).status());
  Captured& captured = sites ? pairs_.emplace(pair.get(), Captured{.pair = pair}).first->second : held->second;
  if (attention) {
    captured.queries = at::stack(attention_inputs[0], 1);
    captured.keys = at::stack(attention_inputs[1], 1);
    captured.values = at::stack(attention_inputs[2], 1);
    captured.visible = std::move(visible);
    captured.visible_of_layer = std::move(visible_of_layer);
  }
  if (!sites) return &captured;
  for (int site = 0; site < kComponentSites; ++site) captured.activations[site] = at::stack(per_layer[site], 1);
  // The tokens both prompts share before they first differ (all but the last when they never do): no
  // patch changes anything there, so score rows take those positions' keys and values from here.
  captured.shared_length = std::min(pair->shared_length(), pair->length() - 1);
  if (captured.shared_length > 0) {
    captured.shared_prefix = std::make_unique<KvCache>(model_->config().num_layers, 1);
    ForwardBatch prefix{.input_ids = at::tensor(std::vector<int64_t>(pair->clean_ids.begin(),
                                                                     pair->clean_ids.begin() + captured.shared_length))
                                         .unsqueeze(0),
                        .cache = captured.shared_prefix.get()};
    RETURN_IF_ERROR(model_->Hidden(prefix).status());
  }
  return &captured;
}

at::Tensor ComponentRuns::Gather(const std::vector<const Captured*>& captured, const std::vector<const Row*>& rows,
                                 ComponentSite site, const std::vector<int64_t>& layers, bool own, int64_t longest,
                                 const std::vector<int64_t>& skipped) const {
  std::vector<at::Tensor> padded;
  for (size_t r = 0; r < layers.size(); ++r) {
    const bool clean = (rows[r]->component.run == PairRun::kClean) == own;
    at::Tensor activation = captured[r]->activations[static_cast<int>(site)][clean ? 0 : 1][layers[r]];  // [S, ...]
    if (!skipped.empty()) activation = activation.narrow(0, skipped[r], activation.size(0) - skipped[r]);
    std::vector<int64_t> padding(2 * (activation.dim() - 1), 0);  // last dimensions first, as at::pad reads them
    padding.push_back(0);
    padding.push_back(longest - activation.size(0));
    padded.push_back(at::constant_pad_nd(activation, padding));
  }
  return at::stack(padded);
}

absl::Status ComponentRuns::RunScore(const std::vector<const Row*>& rows, std::vector<RowResult>& results) {
  return RunPatched(rows, results, /*gradients=*/false);
}

absl::Status ComponentRuns::RunGrad(const std::vector<const Row*>& rows, std::vector<RowResult>& results) {
  return RunInGroups(
      rows, results, [](const Row& row) { return row.component.patch.has_value(); },
      [this](bool patched, const std::vector<const Row*>& some, std::vector<RowResult>& out) {
        return patched ? RunPatched(some, out, /*gradients=*/true) : RunSiteEstimates(some, out);
      });
}

absl::Status ComponentRuns::RunPatched(const std::vector<const Row*>& rows, std::vector<RowResult>& results,
                                       bool gradients) {
  // A row patched at layer l reads the run's own activations up to there: it joins the forward at
  // layer l from the cached residual stream, so rows patched at every layer share one forward whose
  // later layers run all of them together. The forward takes them in order of that layer.
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&rows](size_t a, size_t b) { return JoiningLayer(*rows[a]) < JoiningLayer(*rows[b]); });
  std::vector<const Row*> joining;
  for (size_t r : order) joining.push_back(rows[r]);
  std::vector<RowResult> joining_results(rows.size());
  RETURN_IF_ERROR(RunPatchedJoining(joining, joining_results, gradients));
  for (size_t i = 0; i < order.size(); ++i) results[order[i]] = std::move(joining_results[i]);
  return absl::OkStatus();
}

absl::Status ComponentRuns::RunPatchedJoining(const std::vector<const Row*>& rows, std::vector<RowResult>& results,
                                              bool gradients) {
  const ModelConfig& config = model_->config();
  std::vector<const Captured*> captured;
  // The rows patched at each (site, layer).
  std::map<std::pair<int, int64_t>, std::vector<int64_t>> patched_at;
  std::vector<double> alphas;
  std::vector<int64_t> first_layers;
  for (size_t r = 0; r < rows.size(); ++r) {
    ASSIGN_OR_RETURN(const Captured* pair, Capture(*rows[r]));
    captured.push_back(pair);
    alphas.push_back(rows[r]->component.alpha);
    first_layers.push_back(JoiningLayer(*rows[r]));
    if (const std::optional<ComponentSelection>& patch = rows[r]->component.patch) {
      RETURN_IF_ERROR(CheckPatch(*patch, config));
      patched_at[{static_cast<int>(patch->site), patch->layer}].push_back(static_cast<int64_t>(r));
    }
  }
  // Score rows start after their pair's shared prefix (gradient rows run whole: their backward would
  // flow into the cached keys and values).
  std::vector<int64_t> skipped(rows.size(), 0);
  std::vector<KvRow> prefixes(rows.size());
  for (size_t r = 0; r < rows.size() && !gradients; ++r) {
    skipped[r] = captured[r]->shared_length;
    prefixes[r].cache = captured[r]->shared_prefix.get();
  }
  ForwardBatch batch = PadRowIds(rows, skipped);
  const int64_t longest = batch.input_ids.size(1);
  const auto options = at::TensorOptions().dtype(model_->dtype()).device(model_->device());
  batch.inputs_embeds = Gather(captured, rows, ComponentSite::kResidPre, first_layers, /*own=*/true, longest, skipped);
  batch.input_ids = at::Tensor();
  batch.first_layers = first_layers;
  batch.pause_point = gradients && pause_point_ ? pause_point_ : abandon_point_;
  KvCache stacked(0, 0);
  if (std::any_of(skipped.begin(), skipped.end(), [](int64_t n) { return n > 0; })) {
    stacked = KvCache::Stack(prefixes, skipped, /*room=*/longest);
    batch.cache = &stacked;
  }
  struct SitePatch {
    at::Tensor other;  // [B, S_max, ...] the other run's activation
    at::Tensor mask;   // broadcastable to it: 1 where a row's patch applies
  };
  std::map<std::pair<int, int64_t>, SitePatch> patches;
  c10::InferenceMode not_inference(/*enabled=*/false);
  c10::AutoGradMode grad_mode(gradients);
  for (const auto& [key, patched_rows] : patched_at) {
    const auto site = static_cast<ComponentSite>(key.first);
    // The rows that have joined the forward by this layer.
    const std::vector<int64_t> layers(first_layers.begin(),
                                      std::upper_bound(first_layers.begin(), first_layers.end(), key.second));
    SitePatch patch{.other = Gather(captured, rows, site, layers, /*own=*/false, longest, skipped)};
    std::vector<int64_t> mask_shape = {static_cast<int64_t>(layers.size()), longest};
    if (site == ComponentSite::kHeads) mask_shape.push_back(config.num_heads);
    mask_shape.push_back(1);
    patch.mask = at::zeros(mask_shape, at::kFloat);
    for (int64_t r : patched_rows) {
      const ComponentSelection& selection = *rows[r]->component.patch;
      const int64_t position = selection.position - skipped[r];
      if (selection.position >= 0 && position < 0) continue;  // a shared position: nothing to patch
      at::Tensor selected =
          selection.position >= 0 ? patch.mask[r].narrow(0, position, 1) : patch.mask[r].narrow(0, 0, batch.lengths[r]);
      if (selection.head >= 0) selected = selected.narrow(1, selection.head, 1);
      selected.fill_(1);
    }
    patch.mask = patch.mask.to(options);
    patches.emplace(key, std::move(patch));
  }
  const bool all_whole = std::all_of(alphas.begin(), alphas.end(), [](double a) { return a == 1.0; });
  at::Tensor alpha = at::tensor(alphas, at::kDouble).to(at::kFloat).to(model_->device());
  if (gradients) alpha.requires_grad_(true);
  ActivationHooks hooks{.at_site = [&](ComponentSite site, int64_t layer, const at::Tensor& activation) {
    auto it = patches.find({static_cast<int>(site), layer});
    if (it == patches.end()) return at::Tensor();
    const SitePatch& patch = it->second;
    // A whole move takes the other run's value exactly, with no rounding through the interpolation.
    if (!gradients && all_whole) return at::where(patch.mask.to(at::kBool), patch.other, activation);
    std::vector<int64_t> alpha_shape(activation.dim(), 1);
    alpha_shape[0] = activation.size(0);
    const at::Tensor joined_alpha = alpha.narrow(0, 0, activation.size(0));
    const at::Tensor moved = patch.mask * joined_alpha.view(alpha_shape).to(activation.scalar_type());
    return activation + moved * (patch.other - activation);
  }};
  batch.hooks = &hooks;
  if (!gradients) {
    c10::InferenceMode inference;
    ASSIGN_OR_RETURN(at::Tensor values, model_->ObjectiveValues(batch, Objectives(rows, skipped)));
    values = values.cpu();
    for (size_t r = 0; r < rows.size(); ++r) results[r].value = values[static_cast<int64_t>(r)].item<double>();
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(at::Tensor values, model_->ObjectiveValues(batch, Objectives(rows)));
  try {
    at::Tensor alpha_gradients = torch::autograd::grad({values.sum()}, {alpha}, /*grad_outputs=*/{},
                                                       /*retain_graph=*/false, /*create_graph=*/false,
                                                       /*allow_unused=*/true)[0];
    if (!alpha_gradients.defined()) alpha_gradients = at::zeros_like(alpha);
    values = values.detach().cpu();
    alpha_gradients = alpha_gradients.cpu();
    for (size_t r = 0; r < rows.size(); ++r) {
      results[r].value = values[static_cast<int64_t>(r)].item<double>();
      results[r].alpha_gradient = alpha_gradients[static_cast<int64_t>(r)].item<double>();
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "patch gradients");
  }
  return absl::OkStatus();
}

absl::Status ComponentRuns::RunSiteEstimates(const std::vector<const Row*>& rows, std::vector<RowResult>& results) {
  std::vector<const Captured*> captured;
  for (const Row* row : rows) {
    ASSIGN_OR_RETURN(const Captured* pair, Capture(*row));
    captured.push_back(pair);
  }
  ForwardBatch batch = PadRowIds(rows);
  const int64_t longest = batch.input_ids.size(1);
  c10::InferenceMode not_inference(/*enabled=*/false);
  c10::AutoGradMode grad_mode(true);
  // GradDrop: per layer, [B, 1, 1] with 0 for the rows whose backward skips that layer's outputs.
  std::map<int64_t, at::Tensor> gradient_kept;
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t dropped = rows[r]->component.gradient_dropped_layer;
    if (dropped < 0) continue;
    at::Tensor& kept = gradient_kept[dropped];
    if (!kept.defined()) kept = at::ones({static_cast<int64_t>(rows.size()), 1, 1}, at::kFloat);
    kept[static_cast<int64_t>(r)].fill_(0);
  }
  for (auto& [layer, kept] : gradient_kept) kept = kept.to(model_->device(), model_->dtype());
  // A zero added at every site: its gradient is the activation's, and the graph still flows through.
  std::vector<at::Tensor> zeros;
  std::vector<std::pair<ComponentSite, int64_t>> zero_sites;
  ActivationHooks hooks{.at_site = [&](ComponentSite site, int64_t layer, const at::Tensor& activation) {
    zeros.push_back(at::zeros_like(activation).requires_grad_(true));
    zero_sites.emplace_back(site, layer);
    at::Tensor out = activation + zeros.back();
    auto kept = gradient_kept.find(layer);
    if (kept != gradient_kept.end() && (site == ComponentSite::kAttnOut || site == ComponentSite::kMlpOut)) {
      out = out * kept->second + out.detach() * (1 - kept->second);  // the same value, a gated gradient
    }
    return out;
  }};
  batch.hooks = &hooks;
  batch.pause_point = pause_point_ ? pause_point_ : abandon_point_;
  ASSIGN_OR_RETURN(at::Tensor values, model_->ObjectiveValues(batch, Objectives(rows)));
  try {
    const std::vector<at::Tensor> gradients = torch::autograd::grad({values.sum()}, zeros, /*grad_outputs=*/{},
                                                                    /*retain_graph=*/false, /*create_graph=*/false,
                                                                    /*allow_unused=*/true);
    c10::AutoGradMode no_grad(false);
    std::array<std::vector<at::Tensor>, kComponentSites> per_layer;  // each [B, S_max(, heads)]
    for (size_t i = 0; i < zeros.size(); ++i) {
      const auto [site, layer] = zero_sites[i];
      const std::vector<int64_t> layers(rows.size(), layer);
      const at::Tensor difference = Gather(captured, rows, site, layers, /*own=*/false, longest).to(at::kFloat) -
                                    Gather(captured, rows, site, layers, /*own=*/true, longest).to(at::kFloat);
      const at::Tensor gradient = gradients[i].defined() ? gradients[i].to(at::kFloat) : at::zeros_like(difference);
      at::Tensor estimates = (difference * gradient).sum(-1);
      for (size_t r = 0; r < rows.size() && site == ComponentSite::kHeads; ++r) {
        if (!rows[r]->component.exact_attention_weights) continue;
        const int64_t length = rows[r]->length();
        estimates[static_cast<int64_t>(r)]
            .narrow(0, 0, length)
            .copy_(ExactWeightEstimates(captured[r]->queries, captured[r]->keys, captured[r]->values,
                                        captured[r]->visible[captured[r]->visible_of_layer[static_cast<size_t>(layer)]],
                                        rows[r]->component.run == PairRun::kClean ? 0 : 1, layer,
                                        gradient[static_cast<int64_t>(r)].narrow(0, 0, length),
                                        AttentionScale(model_->config(), layer), pause_point_));
      }
      per_layer[static_cast<int>(site)].push_back(estimates);
    }
    values = values.detach().cpu();
    for (size_t r = 0; r < rows.size(); ++r) results[r].value = values[static_cast<int64_t>(r)].item<double>();
    for (int site = 0; site < kComponentSites; ++site) {
      const at::Tensor estimates = at::stack(per_layer[site], 1).cpu();  // [B, layers, S_max(, heads)]
      for (size_t r = 0; r < rows.size(); ++r) {
        results[r].site_estimates.push_back(estimates[static_cast<int64_t>(r)].narrow(1, 0, rows[r]->length()));
      }
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "site estimates");
  }
  return absl::OkStatus();
}

void ComponentRuns::ReleaseUnused() {
  for (auto it = pairs_.begin(); it != pairs_.end();) {
    it = it->second.pair.use_count() == 1 ? pairs_.erase(it) : std::next(it);
  }
}

}  // namespace attribution::engine
