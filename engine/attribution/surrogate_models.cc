// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/surrogate_models.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace attribution::engine {
namespace {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  uint64_t state_;
};

// Weighted centering and sqrt(weight) scaling, as sklearn prepares a fit with an intercept:
// returns X and y centered by their weighted means and scaled by sqrt(w) (row-major [n, F]).
struct CenteredData {
  std::vector<double> x, y;
  int64_t n = 0, f = 0;
};

CenteredData Center(const std::vector<Coalition>& samples, const std::vector<double>& target,
                    const std::vector<double>& weights) {
  CenteredData d;
  d.n = static_cast<int64_t>(samples.size());
  d.f = d.n > 0 ? static_cast<int64_t>(samples[0].size()) : 0;
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<double> x_mean(d.f, 0.0);
  double y_mean = 0;
  for (int64_t i = 0; i < d.n; ++i) {
    for (int64_t j = 0; j < d.f; ++j) x_mean[j] += weights[i] * samples[i][j] / total;
    y_mean += weights[i] * target[i] / total;
  }
  d.x.resize(d.n * d.f);
  d.y.resize(d.n);
  for (int64_t i = 0; i < d.n; ++i) {
    const double scale = std::sqrt(weights[i]);
    for (int64_t j = 0; j < d.f; ++j) d.x[i * d.f + j] = scale * (samples[i][j] - x_mean[j]);
    d.y[i] = scale * (target[i] - y_mean);
  }
  return d;
}

}  // namespace

std::vector<Coalition> SampleLimeCoalitions(int64_t num_features, int64_t num_samples, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<Coalition> samples(num_samples, Coalition(num_features));
  for (Coalition& c : samples) {
    for (int64_t f = 0; f < num_features; ++f) c[f] = rng.Uniform() < 0.5;
  }
  return samples;
}

std::vector<Coalition> SampleKernelShapCoalitions(int64_t num_features, int64_t num_samples, uint64_t seed) {
  SplitMix64 rng(seed);
  const int64_t m = num_features;
  std::vector<double> cumulative;  // p(k) ~ (m - 1) / (k (m - k)), k = 1 .. m-1
  double total = 0;
  for (int64_t k = 1; k < m; ++k) cumulative.push_back(total += (m - 1.0) / (k * (m - k + 0.0)));
  std::vector<Coalition> samples;
  samples.push_back(Coalition(m, true));
  if (num_samples > 1) samples.push_back(Coalition(m, false));
  std::vector<int64_t> order(m);
  while (static_cast<int64_t>(samples.size()) < num_samples) {
    const double u = rng.Uniform() * total;
    const int64_t k = 1 + (std::upper_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin());
    std::iota(order.begin(), order.end(), 0);
    Coalition c(m, false);
    for (int64_t j = 0; j < std::min(k, m - 1); ++j) {  // a uniform k-subset: partial Fisher-Yates
      std::swap(order[j], order[j + static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(m - j))]);
      c[order[j]] = true;
    }
    samples.push_back(std::move(c));
  }
  return samples;
}

std::vector<double> LimeWeights(const std::vector<Coalition>& samples) {
  std::vector<double> weights;
  for (const Coalition& c : samples) {
    const double present = static_cast<double>(std::count(c.begin(), c.end(), true));
    const double distance = 1.0 - std::sqrt(present / static_cast<double>(c.size()));  // cosine distance to all-ones
    weights.push_back(std::exp(-distance * distance / 2.0));
  }
  return weights;
}

std::vector<double> KernelShapWeights(const std::vector<Coalition>& samples) {
  std::vector<double> weights;
  for (const Coalition& c : samples) {
    const size_t present = std::count(c.begin(), c.end(), true);
    weights.push_back(present == 0 || present == c.size() ? 1e6 : 1.0);
  }
  return weights;
}

std::vector<double> FitLasso(const std::vector<Coalition>& x, const std::vector<double>& y,
                             const std::vector<double>& weights, double alpha, const std::function<bool()>& abandoned) {
  // sklearn rescales sample weights to sum to n, then minimises (1/2n) |y - Xb|^2 + alpha |b|_1 on the
  // centered, sqrt(w)-scaled data; solved here by coordinate descent to convergence.
  const double n_samples = static_cast<double>(x.size());
  std::vector<double> w(weights);
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  for (double& v : w) v *= n_samples / total;
  const CenteredData d = Center(x, y, w);
  std::vector<double> coef(d.f, 0.0), residual(d.y), norm(d.f, 0.0);
  for (int64_t i = 0; i < d.n; ++i) {
    for (int64_t j = 0; j < d.f; ++j) norm[j] += d.x[i * d.f + j] * d.x[i * d.f + j];
  }
  const double threshold = alpha * n_samples;
  for (int iteration = 0; iteration < 100000; ++iteration) {
    if (iteration % 16 == 15 && abandoned()) break;
    double largest_step = 0, largest_coef = 0;
    for (int64_t j = 0; j < d.f; ++j) {
      if (norm[j] == 0) continue;
      double rho = 0;
      for (int64_t i = 0; i < d.n; ++i) rho += d.x[i * d.f + j] * (residual[i] + d.x[i * d.f + j] * coef[j]);
      const double updated = std::copysign(std::max(std::fabs(rho) - threshold, 0.0), rho) / norm[j];
      const double step = updated - coef[j];
      if (step != 0) {
        for (int64_t i = 0; i < d.n; ++i) residual[i] -= d.x[i * d.f + j] * step;
        coef[j] = updated;
      }
      largest_step = std::max(largest_step, std::fabs(step));
      largest_coef = std::max(largest_coef, std::fabs(updated));
    }
    if (largest_step <= 1e-14 * std::max(1.0, largest_coef)) break;
  }
  return coef;
}

std::vector<double> FitLeastSquares(const std::vector<Coalition>& x, const std::vector<double>& y,
                                    const std::vector<double>& weights) {
  CenteredData d = Center(x, y, weights);
  // Scores that are not finite (a log-prob of -inf, an overflow) have no least-squares fit: NaN, which the
  // attributor answers FAILED_PRECONDITION as for the other methods. LAPACK threw "illegal value" (INTERNAL).
  if (!std::all_of(y.begin(), y.end(), [](double v) { return std::isfinite(v); })) {
    return std::vector<double>(d.f, std::numeric_limits<double>::quiet_NaN());
  }
  const at::Tensor a = at::from_blob(d.x.data(), {d.n, d.f}, at::kDouble).clone();  // [n, F] float64
  const at::Tensor b = at::from_blob(d.y.data(), {d.n, 1}, at::kDouble).clone();    // [n, 1]
  // gelsd: the SVD-based minimum-norm solution, as scipy's lstsq (sklearn LinearRegression) computes.
  const at::Tensor solution = std::get<0>(at::linalg_lstsq(a, b, std::nullopt, "gelsd")).contiguous();
  return std::vector<double>(solution.data_ptr<double>(), solution.data_ptr<double>() + d.f);
}

}  // namespace attribution::engine
