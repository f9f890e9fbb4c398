// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/path_embeddings.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

// [S] ids -> [S, hidden] token embeddings on the model's device.
absl::StatusOr<at::Tensor> EmbedIds(const CausalLM& model, const std::vector<int64_t>& ids) {
  ASSIGN_OR_RETURN(at::Tensor embedded, model.Embed(at::tensor(ids, at::kLong).unsqueeze(0)));
  return embedded[0];
}

// A sample's generator: the seed and the sample index mixed (splitmix64's finaliser), so samples of
// one seed and equal samples of neighbouring seeds draw unrelated noise.
uint64_t SampleSeed(uint64_t seed, int64_t sample) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(sample + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

absl::StatusOr<const PathEmbeddings::Embedded*> PathEmbeddings::Embed(
    const std::shared_ptr<const EmbeddingPath>& path) {
  if (auto it = paths_.find(path.get()); it != paths_.end()) return &it->second;
  // Kept across batches, some of which take gradients: never inference tensors.
  c10::InferenceMode not_inference(/*enabled=*/false);
  c10::AutoGradMode no_grad(false);
  Embedded e{.path = path};
  ASSIGN_OR_RETURN(e.input, EmbedIds(*model_, path->input_ids));
  ASSIGN_OR_RETURN(e.baseline, EmbedIds(*model_, path->baseline_ids));
  if (!path->zero_baseline.empty()) {
    const at::Tensor zero =
        at::tensor(path->zero_baseline, at::kByte).to(e.baseline.device()).to(at::kBool).unsqueeze(1);
    e.baseline = e.baseline.masked_fill(zero, 0);  // [S, hidden]
  }
  e.direction = e.input.to(at::kFloat) - e.baseline.to(at::kFloat);
  if (!path->noised.empty()) {
    e.noised = at::tensor(path->noised, at::kByte).to(at::kFloat).to(e.input.device()).unsqueeze(1);
  }
  return &paths_.emplace(path.get(), std::move(e)).first->second;
}

at::Tensor PathEmbeddings::Noise(const Embedded& embedded, int64_t sample) const {
  if (!embedded.noised.defined()) return at::zeros(embedded.input.sizes(), embedded.input.options().dtype(at::kFloat));
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(SampleSeed(embedded.path->noise_seed, sample));
  const at::Tensor noise = at::randn(embedded.input.sizes(), generator, at::kFloat);  // [S, hidden]
  return noise.to(embedded.input.device()) * embedded.path->noise_stdev * embedded.noised;
}

absl::StatusOr<std::vector<PathEmbeddings::PathRows>> PathEmbeddings::Group(const std::vector<const Row*>& rows) {
  std::vector<PathRows> groups;
  std::unordered_map<const EmbeddingPath*, size_t> group_of;
  for (size_t r = 0; r < rows.size(); ++r) {
    const std::shared_ptr<const EmbeddingPath>& path = rows[r]->point.path;
    if (!path) continue;
    auto [it, inserted] = group_of.emplace(path.get(), groups.size());
    if (inserted) {
      ASSIGN_OR_RETURN(const Embedded* embedded, Embed(path));
      groups.push_back(PathRows{.embedded = embedded});
    }
    groups[it->second].rows.push_back(static_cast<int64_t>(r));
  }
  for (PathRows& group : groups) {
    const Embedded& e = *group.embedded;
    std::vector<at::Tensor> directions;  // each [S, hidden]
    bool noisy = false;
    for (int64_t r : group.rows) {
      const int64_t sample = rows[r]->point.noise_sample;
      noisy = noisy || sample >= 0;
      directions.push_back(sample >= 0 ? e.direction + Noise(e, sample) : e.direction);
    }
    // Rows without noise share the path's direction: a broadcast view, not b copies.
    group.directions = noisy ? at::stack(directions)
                             : e.direction.unsqueeze(0).expand({static_cast<int64_t>(group.rows.size()), -1, -1});
  }
  return groups;
}

absl::StatusOr<std::vector<PathEmbeddings::PathRows>> PathEmbeddings::Fill(const std::vector<const Row*>& rows,
                                                                           at::Tensor& embeds) {
  c10::AutoGradMode no_grad(false);
  ASSIGN_OR_RETURN(std::vector<PathRows> groups, Group(rows));
  for (const PathRows& group : groups) {
    const Embedded& e = *group.embedded;
    const int64_t s = e.input.size(0);
    std::vector<double> alphas;
    for (int64_t r : group.rows) alphas.push_back(rows[r]->point.alpha);
    const at::Tensor alpha = at::tensor(alphas, at::kDouble).to(at::kFloat).to(e.input.device()).view({-1, 1, 1});
    // [b, S, hidden]: baseline + alpha * (end - baseline), as Captum interpolates, for the whole group.
    at::Tensor points = (e.baseline.to(at::kFloat).unsqueeze(0) + alpha * group.directions).to(embeds.scalar_type());
    for (size_t i = 0; i < group.rows.size(); ++i) {
      // The path's ends exactly (no rounding through the interpolation): the scored input and baseline.
      const PathPoint& point = rows[group.rows[i]]->point;
      if (point.noise_sample < 0 && point.alpha == 1.0) points[i].copy_(e.input);
      if (point.alpha == 0.0) points[i].copy_(e.baseline);
    }
    const at::Tensor index = at::tensor(group.rows, at::kLong).to(embeds.device());
    embeds.narrow(1, 0, s).index_copy_(0, index, points);
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    if (rows[r]->point.path) continue;
    ASSIGN_OR_RETURN(at::Tensor ids_embedded, EmbedIds(*model_, rows[r]->input_ids));
    embeds[static_cast<int64_t>(r)].narrow(0, 0, ids_embedded.size(0)).copy_(ids_embedded);
  }
  return groups;
}

void PathEmbeddings::Reduce(const std::vector<PathRows>& paths, const at::Tensor& gradients,
                            std::vector<RowResult>& results) const {
  c10::AutoGradMode no_grad(false);
  for (const PathRows& group : paths) {
    const Embedded& e = *group.embedded;
    const int64_t s = e.input.size(0);
    const at::Tensor index = at::tensor(group.rows, at::kLong).to(gradients.device());
    const at::Tensor g = gradients.narrow(1, 0, s).index_select(0, index).to(at::kFloat);  // [b, S, hidden]
    at::Tensor values;                                                                     // [b, S]
    switch (e.path->reduction) {
      case PathReduction::kTimesDirection:
        values = (g * group.directions).sum(-1);
        break;
      case PathReduction::kTimesInput:
        values = (g * e.input.to(at::kFloat).unsqueeze(0)).sum(-1);
        break;
      case PathReduction::kAbsolute:
        values = g.abs().sum(-1);
        break;
      case PathReduction::kSigned:
        values = g.sum(-1);
        break;
    }
    values = values.cpu();
    for (size_t i = 0; i < group.rows.size(); ++i)
      results[group.rows[i]].position_values = values[static_cast<int64_t>(i)];
  }
}

void PathEmbeddings::ReleaseUnused() {
  for (auto it = paths_.begin(); it != paths_.end();) {
    // Only this cache holds the path: every row and plan that could name it is gone.
    it = it->second.path.use_count() == 1 ? paths_.erase(it) : std::next(it);
  }
}

}  // namespace attribution::engine
