// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/component_attribution.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/attribution/attribution_request.h"
#include "engine/attribution/submit_rows.h"
#include "engine/common/enum_names.h"
#include "engine/common/status_macros.h"
#include "engine/model/torch_errors.h"

namespace attribution::engine {
namespace {

// A grid's components, entry i in row-major order.
struct GridLayout {
  ComponentSite site;
  ComponentGranularity granularity;
  std::vector<int64_t> shape;

  GridLayout(ComponentSite s, ComponentGranularity g, const ModelConfig& config, int64_t length)
      : site(s), granularity(g) {
    switch (g) {
      case ComponentGranularity::kLayerHead:
        shape = {config.num_layers, config.num_heads};
        break;
      case ComponentGranularity::kLayerPosition:
        shape = {config.num_layers, length};
        break;
      case ComponentGranularity::kLayerPositionHead:
        shape = {config.num_layers, length, config.num_heads};
        break;
    }
  }
  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  ComponentSelection Select(int64_t i) const {
    switch (granularity) {
      case ComponentGranularity::kLayerHead:
        return {.site = site, .layer = i / shape[1], .head = i % shape[1]};
      case ComponentGranularity::kLayerPosition:
        return {.site = site, .layer = i / shape[1], .position = i % shape[1]};
      case ComponentGranularity::kLayerPositionHead:
        return {.site = site,
                .layer = i / (shape[1] * shape[2]),
                .position = (i / shape[2]) % shape[1],
                .head = i % shape[2]};
    }
    return {};
  }
};

std::vector<GridLayout> Layouts(const ComponentRequest& request, const ModelConfig& config, int64_t length) {
  std::vector<GridLayout> layouts;
  for (ComponentSite site : request.sites) {
    layouts.emplace_back(site, request.granularity.value_or(DefaultGranularity(site)), config, length);
  }
  return layouts;
}

// The metric as a row objective at the last of `length` positions (normalisation is applied later).
RowObjective MetricObjective(const ComponentRequest& request, int64_t length) {
  RowObjective objective{.positions = {length - 1}, .tokens = {request.answer}, .weights = {1.0}};
  switch (request.metric) {
    case ComponentMetric::kLogitDifference:
    case ComponentMetric::kNormalizedLogitDifference:
      objective.quantity = TokenQuantity::kLogit;
      break;
    case ComponentMetric::kLogProb:
      objective.quantity = TokenQuantity::kLogProb;
      break;
    case ComponentMetric::kProb:
    case ComponentMetric::kProbDifference:
      objective.quantity = TokenQuantity::kProb;
      break;
  }
  if (IsDifference(request.metric)) {
    objective.positions.push_back(length - 1);
    objective.tokens.push_back(request.wrong_answer);
    objective.weights.push_back(-1.0);
  }
  return objective;
}

// Whether a component sits at a position before the pair's prompts first differ: a causal model
// computes the same value there in both runs, so patching it changes nothing (exactly 0, no row).
bool Unchanged(const ComponentSelection& selection, const PromptPair& pair) {
  return selection.position >= 0 && selection.position < pair.shared_length();
}

bool HasSite(const ComponentRequest& request, ComponentSite site) {
  return std::find(request.sites.begin(), request.sites.end(), site) != request.sites.end();
}

int64_t RowsPerComponent(const ComponentRequest& request) {
  switch (request.method) {
    case ComponentMethod::kActivationPatching:
      return 1;
    case ComponentMethod::kLayerIntegratedGradients:
      return 1 + request.n_steps;  // the patch itself gives the convergence delta
    case ComponentMethod::kAttributionPatching:
    case ComponentMethod::kAttributionPatchingStar:
      return 0;  // a pair's estimate rows estimate every component
  }
  return 0;
}

// Rows per pair that estimate every component at once: AtP's one, AtP*'s one per dropped layer.
int64_t EstimateRows(ComponentMethod method, const ModelConfig& config) {
  if (method == ComponentMethod::kAttributionPatching) return 1;
  return method == ComponentMethod::kAttributionPatchingStar ? config.num_layers : 0;
}

int64_t CountRows(const ComponentRequest& request, const ModelConfig& config) {
  int64_t rows = 0;
  for (const PromptPair& pair : request.pairs) {
    rows += 2 + EstimateRows(request.method, config);
    for (const GridLayout& layout : Layouts(request, config, pair.length())) {
      rows += layout.size() * RowsPerComponent(request);
    }
  }
  return rows;
}

// One request's rows and their reduction.
class ComponentRun : public std::enable_shared_from_this<ComponentRun> {
 public:
  ComponentRun(std::shared_ptr<Request> handle, const ModelConfig& config, ComponentRequest request, ComponentDone done,
               ComponentProgress progress)
      : handle_(std::move(handle)),
        config_(config),
        request_(std::move(request)),
        done_(std::move(done)),
        progress_(std::move(progress)) {}

  // Refuses (before any row is built: each holds its own copy of a prompt) a request whose rows would
  // hold more tokens than the engine takes from one request; then builds and submits them.
  void Start(BatchingEngine& engine, int64_t max_queued_tokens) {
    std::vector<std::shared_ptr<const PromptPair>> pairs;
    for (const PromptPair& p : request_.pairs) pairs.push_back(std::make_shared<const PromptPair>(p));
    int64_t tokens = 0, counted_rows = 0;
    VisitRows(pairs,
              [&](const std::shared_ptr<const PromptPair>&, RowKind, const std::vector<int64_t>& ids, ComponentWork) {
                tokens += static_cast<int64_t>(ids.size());
                ++counted_rows;
              });
    if (tokens > max_queued_tokens) {
      return done_(absl::InvalidArgumentError(absl::StrCat(
          "the request's ", counted_rows, " rows would run ", tokens,
          " tokens (each row one prompt of its pair), over this model's limits.max_queued_tokens (", max_queued_tokens,
          "): ask for fewer pairs, sites or steps, shorter prompts, or a coarser granularity")));
    }
    std::vector<Row> rows;
    VisitRows(pairs, [&](const std::shared_ptr<const PromptPair>& pair, RowKind kind, const std::vector<int64_t>& ids,
                         ComponentWork work) {
      rows.push_back(Row{.kind = kind,
                         .input_ids = ids,
                         .objective = MetricObjective(request_, pair->length()),
                         .component = std::move(work)});
    });
    Submit(engine, std::move(rows));
  }

  absl::Status SetPoints() {
    if (request_.method != ComponentMethod::kLayerIntegratedGradients) return absl::OkStatus();
    ASSIGN_OR_RETURN(points_, MakeIntegrationPoints(request_.rule, request_.n_steps));
    return absl::OkStatus();
  }

 private:
  // Calls visit(pair, kind, prompt ids, work) for every row of the request, in submission order: per pair,
  // its clean and corrupted runs, then its estimate rows or its patched rows.
  template <typename Visit>
  void VisitRows(const std::vector<std::shared_ptr<const PromptPair>>& pairs, Visit visit) const {
    for (const std::shared_ptr<const PromptPair>& pair : pairs) {
      visit(pair, RowKind::kScore, pair->clean_ids, ComponentWork{});
      visit(pair, RowKind::kScore, pair->corrupted_ids, ComponentWork{});
      const PairRun run = request_.direction == PatchDirection::kDenoising ? PairRun::kCorrupted : PairRun::kClean;
      const ComponentWork base{.pair = pair, .run = run};
      const std::vector<int64_t>& ids = pair->ids(run == PairRun::kClean);
      auto row = [&](RowKind kind, ComponentWork work) { visit(pair, kind, ids, std::move(work)); };
      if (const int64_t estimate_rows = EstimateRows(request_.method, config_); estimate_rows > 0) {
        for (int64_t l = 0; l < estimate_rows; ++l) {
          ComponentWork estimates = base;
          estimates.site_estimates = true;
          if (request_.method == ComponentMethod::kAttributionPatchingStar) {
            estimates.exact_attention_weights = HasSite(request_, ComponentSite::kHeads);
            estimates.gradient_dropped_layer = l;
          }
          row(RowKind::kGrad, estimates);
        }
        continue;
      }
      for (const GridLayout& layout : Layouts(request_, config_, pair->length())) {
        for (int64_t i = 0; i < layout.size(); ++i) {
          ComponentWork patched = base;
          patched.patch = layout.Select(i);
          if (Unchanged(*patched.patch, *pair)) continue;
          row(RowKind::kScore, patched);
          for (double alpha : points_.alphas) {
            patched.alpha = alpha;
            row(RowKind::kGrad, patched);
          }
        }
      }
    }
  }

  void Submit(BatchingEngine& engine, std::vector<Row> rows) {
    total_rows_ = static_cast<int64_t>(rows.size());
    for (const Row& row : rows) grad_rows_ += row.kind == RowKind::kGrad ? 1 : 0;
    auto self = shared_from_this();
    SubmitRows(
        engine, handle_, std::move(rows),
        [self] {
          const int64_t now = self->rows_done_.fetch_add(1) + 1;
          if (self->progress_) self->progress_(now, self->total_rows_);
        },
        [self](std::vector<RowResult>& results) {
          absl::StatusOr<ComponentResult> result;
          try {
            result = self->Reduce(results);
          } catch (const std::exception& e) {
            result = StatusFromException(e, "reducing component rows");
          }
          self->done_(std::move(result));
        },
        [self](const absl::Status& status) { self->done_(status); });
  }

  absl::StatusOr<ComponentResult> Reduce(std::vector<RowResult>& results) const {
    ComponentResult out;
    size_t next = 0;
    for (size_t k = 0; k < request_.pairs.size(); ++k) {
      const int64_t length = request_.pairs[k].length();
      PairComponents pair{.clean_metric = results[next].value, .corrupted_metric = results[next + 1].value};
      next += 2;
      if (std::isnan(pair.clean_metric) || std::isnan(pair.corrupted_metric)) {
        return NotANumberError(absl::StrCat("pairs[", k, "]: the ",
                                            std::isnan(pair.clean_metric) ? "clean" : "corrupted", " prompt's metric"));
      }
      double scale = 1;
      if (request_.metric == ComponentMetric::kNormalizedLogitDifference) {
        if (pair.clean_metric == pair.corrupted_metric) {
          return absl::FailedPreconditionError(
              absl::StrCat("pairs[", k, "]: the clean and corrupted logit differences are equal (", pair.clean_metric,
                           "), so NORMALIZED_LOGIT_DIFFERENCE is undefined; ask for LOGIT_DIFFERENCE"));
        }
        scale = 1 / (pair.clean_metric - pair.corrupted_metric);
      }
      const double base = request_.direction == PatchDirection::kDenoising ? pair.corrupted_metric : pair.clean_metric;
      if (const int64_t estimate_rows = EstimateRows(request_.method, config_); estimate_rows > 0) {
        for (const GridLayout& layout : Layouts(request_, config_, length)) {
          const int site = static_cast<int>(layout.site);
          if (request_.method == ComponentMethod::kAttributionPatching) {
            pair.grids.push_back(Estimated(layout, results[next].site_estimates[site], scale));
            continue;
          }
          // GradDrop: Σ_l |AtP_l| / (L − 1), the paper's normalisation (dropping a component's own
          // layer zeroes the estimates of that layer's heads and outputs).
          ComponentGrid grid = Estimated(layout, results[next].site_estimates[site], scale);
          for (double& v : grid.values) v = std::abs(v);
          for (int64_t l = 1; l < estimate_rows; ++l) {
            const ComponentGrid dropped = Estimated(layout, results[next + l].site_estimates[site], scale);
            for (size_t i = 0; i < grid.values.size(); ++i) grid.values[i] += std::abs(dropped.values[i]);
          }
          for (double& v : grid.values) v /= static_cast<double>(std::max<int64_t>(estimate_rows - 1, 1));
          pair.grids.push_back(std::move(grid));
        }
        next += estimate_rows;
      } else {
        for (const GridLayout& layout : Layouts(request_, config_, length)) {
          ComponentGrid grid{.site = layout.site, .granularity = layout.granularity, .shape = layout.shape};
          for (int64_t i = 0; i < layout.size(); ++i) {
            if (Unchanged(layout.Select(i), request_.pairs[k])) {  // no row ran: both runs hold one value
              grid.values.push_back(0);
              if (request_.method == ComponentMethod::kLayerIntegratedGradients) grid.convergence_deltas.push_back(0);
              continue;
            }
            const double effect = (results[next++].value - base) * scale;
            if (request_.method == ComponentMethod::kActivationPatching) {
              grid.values.push_back(effect);
              continue;
            }
            double integral = 0;
            for (double weight : points_.weights) integral += weight * results[next++].alpha_gradient;
            grid.values.push_back(integral * scale);
            grid.convergence_deltas.push_back(integral * scale - effect);
          }
          pair.grids.push_back(std::move(grid));
        }
      }
      // A NaN ranks nothing: the grid would rank its components in index order, answered OK.
      for (const ComponentGrid& grid : pair.grids) {
        if (AnyNaN(grid.values) || AnyNaN(grid.convergence_deltas)) {
          return NotANumberError(absl::StrCat("pairs[", k, "]: the components' attributions (a patched run's metric ",
                                              "or its gradient)"));
        }
      }
      out.pairs.push_back(std::move(pair));
    }
    out.grids = out.pairs[0].grids;
    const double n = static_cast<double>(out.pairs.size());
    for (size_t g = 0; g < out.grids.size(); ++g) {
      ComponentGrid& mean = out.grids[g];
      for (size_t k = 1; k < out.pairs.size(); ++k) {
        const ComponentGrid& other = out.pairs[k].grids[g];
        for (size_t i = 0; i < mean.values.size(); ++i) mean.values[i] += other.values[i];
        for (size_t i = 0; i < mean.convergence_deltas.size(); ++i) {
          mean.convergence_deltas[i] += other.convergence_deltas[i];
        }
      }
      for (double& v : mean.values) v /= n;
      for (double& v : mean.convergence_deltas) v /= n;
    }
    out.rows = total_rows_;
    out.forward_passes = total_rows_;
    out.backward_passes = grad_rows_;
    return out;
  }

  // AtP's per-site estimates ([layers, S] or, for heads, [layers, S, heads]) summed into a grid.
  static ComponentGrid Estimated(const GridLayout& layout, const at::Tensor& estimates, double scale) {
    at::Tensor values = estimates.to(at::kDouble);
    if (layout.site == ComponentSite::kHeads) {
      if (layout.granularity == ComponentGranularity::kLayerHead) values = values.sum(1);
      if (layout.granularity == ComponentGranularity::kLayerPosition) values = values.sum(2);
    }
    values = (values * scale).contiguous();
    const double* data = values.data_ptr<double>();
    return ComponentGrid{.site = layout.site,
                         .granularity = layout.granularity,
                         .shape = layout.shape,
                         .values = std::vector<double>(data, data + values.numel())};
  }

  std::shared_ptr<Request> handle_;
  const ModelConfig config_;
  const ComponentRequest request_;
  ComponentDone done_;
  ComponentProgress progress_;
  IntegrationPoints points_;
  int64_t total_rows_ = 0, grad_rows_ = 0;
  std::atomic<int64_t> rows_done_{0};
};

}  // namespace

const char* ComponentMethodName(ComponentMethod method) {
  switch (method) {
    case ComponentMethod::kActivationPatching:
      return "activation_patching";
    case ComponentMethod::kLayerIntegratedGradients:
      return "layer_integrated_gradients";
    case ComponentMethod::kAttributionPatching:
      return "attribution_patching";
    case ComponentMethod::kAttributionPatchingStar:
      return "attribution_patching_star";
  }
  return "unknown";
}

const char* ComponentMetricName(ComponentMetric metric) {
  switch (metric) {
    case ComponentMetric::kLogitDifference:
      return "logit_difference";
    case ComponentMetric::kNormalizedLogitDifference:
      return "normalized_logit_difference";
    case ComponentMetric::kLogProb:
      return "answer_log_prob";
    case ComponentMetric::kProb:
      return "answer_prob";
    case ComponentMetric::kProbDifference:
      return "prob_difference";
  }
  return "unknown";
}

const char* PatchDirectionName(PatchDirection direction) {
  switch (direction) {
    case PatchDirection::kDenoising:
      return "denoising";
    case PatchDirection::kNoising:
      return "noising";
  }
  return "unknown";
}

const char* ComponentGranularityName(ComponentGranularity granularity) {
  switch (granularity) {
    case ComponentGranularity::kLayerHead:
      return "layer_head";
    case ComponentGranularity::kLayerPosition:
      return "layer_position";
    case ComponentGranularity::kLayerPositionHead:
      return "layer_position_head";
  }
  return "unknown";
}

absl::StatusOr<ComponentMethod> ParseComponentMethod(const std::string& name) {
  return ParseByName("method", name, kAllComponentMethods, &ComponentMethodName);
}

absl::StatusOr<ComponentMetric> ParseComponentMetric(const std::string& name) {
  return ParseByName("metric", name, kAllComponentMetrics, &ComponentMetricName);
}

absl::StatusOr<PatchDirection> ParsePatchDirection(const std::string& name) {
  return ParseByName("direction", name, kAllPatchDirections, &PatchDirectionName);
}

absl::StatusOr<ComponentGranularity> ParseComponentGranularity(const std::string& name) {
  return ParseByName("granularity", name, kAllComponentGranularities, &ComponentGranularityName);
}

bool IsDifference(ComponentMetric metric) {
  switch (metric) {
    case ComponentMetric::kLogitDifference:
    case ComponentMetric::kNormalizedLogitDifference:
    case ComponentMetric::kProbDifference:
      return true;
    case ComponentMetric::kLogProb:
    case ComponentMetric::kProb:
      return false;
  }
  return false;
}

ComponentGranularity DefaultGranularity(ComponentSite site) {
  return site == ComponentSite::kHeads ? ComponentGranularity::kLayerHead : ComponentGranularity::kLayerPosition;
}

bool SiteHasGranularity(ComponentSite site, ComponentGranularity granularity) {
  return site == ComponentSite::kHeads || granularity == ComponentGranularity::kLayerPosition;
}

int64_t CountGridValues(const ComponentRequest& request, const ModelConfig& config) {
  int64_t values = 0, longest = 0;
  for (const PromptPair& pair : request.pairs) {
    for (const GridLayout& layout : Layouts(request, config, pair.length())) values += layout.size();
    longest = std::max(longest, pair.length());
  }
  for (const GridLayout& layout : Layouts(request, config, longest)) values += layout.size();  // the average
  return request.method == ComponentMethod::kLayerIntegratedGradients ? 2 * values : values;
}

ComponentResult ComponentResultOfZeros(const ComponentRequest& request, const ModelConfig& config) {
  const bool deltas = request.method == ComponentMethod::kLayerIntegratedGradients;
  auto grids = [&](int64_t length) {
    std::vector<ComponentGrid> out;
    for (const GridLayout& layout : Layouts(request, config, length)) {
      ComponentGrid& grid = out.emplace_back();
      grid.site = layout.site;
      grid.granularity = layout.granularity;
      grid.shape = layout.shape;
      grid.values.assign(layout.size(), 0.0);
      if (deltas) grid.convergence_deltas.assign(layout.size(), 0.0);
    }
    return out;
  };
  ComponentResult result;
  int64_t longest = 0;
  for (const PromptPair& pair : request.pairs) {
    result.pairs.push_back({.grids = grids(pair.length())});
    longest = std::max(longest, pair.length());
  }
  result.grids = grids(longest);
  return result;
}

absl::Status CheckPromptPair(const PromptPair& pair, size_t k, ComponentMetric metric, const ModelConfig& config,
                             const ComponentLimits& limits) {
  const std::string field = absl::StrCat("pairs[", k, "]");
  RETURN_IF_ERROR(CheckWithinLimit(pair.length(), 1, limits.max_tokens, field + ".clean (tokens)", "max_tokens"));
  if (pair.corrupted_ids.size() != pair.clean_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": clean has ", pair.clean_ids.size(),
                                                   " tokens, corrupted has ", pair.corrupted_ids.size(),
                                                   "; patching needs prompts of equal length"));
  }
  RETURN_IF_ERROR(CheckTokenIds(pair.clean_ids, field + ".clean", config.vocab_size));
  RETURN_IF_ERROR(CheckTokenIds(pair.corrupted_ids, field + ".corrupted", config.vocab_size));
  // The two runs' logit differences are then equal and the normalisation divides by zero: known now,
  // not after every row ran.
  if (metric == ComponentMetric::kNormalizedLogitDifference && pair.clean_ids == pair.corrupted_ids) {
    return absl::InvalidArgumentError(absl::StrCat(field,
                                                   ": clean and corrupted are the same tokens, so "
                                                   "normalized_logit_difference divides by zero; ask for "
                                                   "logit_difference, or give prompts that differ"));
  }
  if (config.architecture == Architecture::kGpt2) {
    RETURN_IF_ERROR(CheckRange(pair.length(), 1, config.max_position_embeddings, field + ".clean (tokens)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateComponentRequest(const ComponentRequest& request, const ModelConfig& config,
                                      const ComponentLimits& limits) {
  RETURN_IF_ERROR(CheckRange(static_cast<int64_t>(request.pairs.size()), 1, limits.max_pairs, "pairs (count)"));
  for (size_t k = 0; k < request.pairs.size(); ++k) {
    RETURN_IF_ERROR(CheckPromptPair(request.pairs[k], k, request.metric, config, limits));
  }
  RETURN_IF_ERROR(CheckTokenIds({request.answer}, "answer", config.vocab_size));
  if (IsDifference(request.metric)) {
    RETURN_IF_ERROR(CheckTokenIds({request.wrong_answer}, "wrong_answer", config.vocab_size));
    if (request.wrong_answer == request.answer) {
      return absl::InvalidArgumentError(absl::StrCat("wrong_answer: the same token as answer (", request.answer, "); ",
                                                     ComponentMetricName(request.metric),
                                                     " compares two different tokens"));
    }
  }
  if (request.sites.empty()) return absl::InvalidArgumentError("sites: name at least one component site");
  bool seen[kComponentSites] = {};
  bool positional = false;
  for (ComponentSite site : request.sites) {
    if (seen[static_cast<int>(site)]) {
      return absl::InvalidArgumentError(absl::StrCat("sites: ", ComponentSiteName(site), " is named twice"));
    }
    seen[static_cast<int>(site)] = true;
    const ComponentGranularity granularity = request.granularity.value_or(DefaultGranularity(site));
    if (!SiteHasGranularity(site, granularity)) {
      return absl::InvalidArgumentError(absl::StrCat("granularity: ", ComponentSiteName(site),
                                                     " components are per (layer, position); only heads have "
                                                     "per-head granularities"));
    }
    positional = positional || granularity != ComponentGranularity::kLayerHead;
  }
  for (size_t k = 1; positional && k < request.pairs.size(); ++k) {
    if (request.pairs[k].length() != request.pairs[0].length()) {
      return absl::InvalidArgumentError(absl::StrCat("pairs[", k, "]: ", request.pairs[k].length(),
                                                     " tokens, pairs[0] has ", request.pairs[0].length(),
                                                     "; per-position grids average pairs of one length"));
    }
  }
  if (request.method == ComponentMethod::kLayerIntegratedGradients) {
    RETURN_IF_ERROR(
        CheckWithinLimit(request.n_steps, MinIntegrationSteps(request.rule), limits.max_steps, "n_steps", "max_steps"));
  }
  if (request.method == ComponentMethod::kAttributionPatchingStar && config.num_layers < 2) {
    return absl::InvalidArgumentError(
        "method: ATTRIBUTION_PATCHING_STAR drops one layer's gradient at a time and needs a model of two or more "
        "layers; ask for ATTRIBUTION_PATCHING");
  }
  const int64_t rows = CountRows(request, config);
  if (rows > limits.max_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request needs ", rows, " rows (pairs x sites x components",
                     request.method == ComponentMethod::kLayerIntegratedGradients ? " x (n_steps + 1)" : "",
                     "), over this model's limits.max_rows (", limits.max_rows,
                     "): ask for fewer pairs, sites or steps, or a coarser granularity"));
  }
  return absl::OkStatus();
}

void AttributeComponents(BatchingEngine& engine, std::shared_ptr<Request> handle, const ModelConfig& config,
                         const ComponentLimits& limits, ComponentRequest request, ComponentDone done,
                         ComponentProgress progress) {
  if (absl::Status s = ValidateComponentRequest(request, config, limits); !s.ok()) return done(s);
  auto run = std::make_shared<ComponentRun>(std::move(handle), config, std::move(request), std::move(done),
                                            std::move(progress));
  if (absl::Status s = run->SetPoints(); !s.ok()) return done(s);
  run->Start(engine, limits.max_queued_tokens);
}

}  // namespace attribution::engine
