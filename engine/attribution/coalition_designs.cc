// SPDX-License-Identifier: Apache-2.0
// The coalitions of the perturbation methods and their reductions, as Captum defines them:
// FeatureAblation (each feature absent alone), exact ShapleyValues (every coalition), Shapley value
// sampling (coalitions along seeded random permutations), Lime and KernelShap (sampled coalitions and a
// weighted linear fit, surrogate_models.h).
#include "engine/attribution/coalition_designs.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace attribution::engine {
namespace {

class FeatureAblation : public CoalitionDesign {
 public:
  explicit FeatureAblation(int64_t features) : features_(features) {}
  std::vector<Coalition> Coalitions() const override {
    std::vector<Coalition> out{Coalition(features_, true)};
    for (int64_t f = 0; f < features_; ++f) out.push_back(Without(f));
    return out;
  }
  std::vector<double> Attribute(const std::function<double(const Coalition&)>& value) const override {
    const double full = value(Coalition(features_, true));
    std::vector<double> attr;
    for (int64_t f = 0; f < features_; ++f) attr.push_back(full - value(Without(f)));
    return attr;
  }

 private:
  Coalition Without(int64_t f) const {
    Coalition c(features_, true);
    c[f] = false;
    return c;
  }
  const int64_t features_;
};

class ShapleyValues : public CoalitionDesign {
 public:
  explicit ShapleyValues(int64_t features) : features_(features) {}
  std::vector<Coalition> Coalitions() const override {
    std::vector<Coalition> out;
    for (uint64_t mask = 0; mask < (uint64_t{1} << features_); ++mask) out.push_back(FromMask(mask));
    return out;
  }
  // phi_f = sum over S without f of |S|! (F - |S| - 1)! / F! * (v(S + f) - v(S))
  std::vector<double> Attribute(const std::function<double(const Coalition&)>& value) const override {
    std::vector<double> weight(features_), attr(features_, 0.0);
    for (int64_t s = 0; s < features_; ++s) {
      weight[s] = std::exp(std::lgamma(s + 1.0) + std::lgamma(features_ - s + 0.0) - std::lgamma(features_ + 1.0));
    }
    for (uint64_t mask = 0; mask < (uint64_t{1} << features_); ++mask) {
      const int64_t size = __builtin_popcountll(mask);
      for (int64_t f = 0; f < features_; ++f) {
        if ((mask >> f) & 1) continue;
        attr[f] += weight[size] * (value(FromMask(mask | (uint64_t{1} << f))) - value(FromMask(mask)));
      }
    }
    return attr;
  }

 private:
  Coalition FromMask(uint64_t mask) const {
    Coalition c(features_);
    for (int64_t f = 0; f < features_; ++f) c[f] = (mask >> f) & 1;
    return c;
  }
  const int64_t features_;
};

class ShapleyValueSampling : public CoalitionDesign {
 public:
  ShapleyValueSampling(int64_t features, int64_t samples, uint64_t seed) : features_(features) {
    std::mt19937_64 rng(seed);
    for (int64_t s = 0; s < samples; ++s) {
      std::vector<int64_t> order(features);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      permutations_.push_back(std::move(order));
    }
  }
  std::vector<Coalition> Coalitions() const override {
    std::vector<Coalition> out;
    for (const auto& order : permutations_) {
      Coalition c(features_, false);
      out.push_back(c);
      for (int64_t f : order) {
        c[f] = true;
        out.push_back(c);
      }
    }
    return out;
  }
  // Each feature's mean marginal contribution when it joins along the permutations.
  std::vector<double> Attribute(const std::function<double(const Coalition&)>& value) const override {
    std::vector<double> attr(features_, 0.0);
    for (const auto& order : permutations_) {
      Coalition c(features_, false);
      double before = value(c);
      for (int64_t f : order) {
        c[f] = true;
        const double after = value(c);
        attr[f] += (after - before) / static_cast<double>(permutations_.size());
        before = after;
      }
    }
    return attr;
  }

 private:
  const int64_t features_;
  std::vector<std::vector<int64_t>> permutations_;
};

// Lime and KernelShap: sampled coalitions (repeats included) and a weighted linear fit of their values.
class SurrogateFit : public CoalitionDesign {
 public:
  SurrogateFit(bool lime, int64_t features, const AttributionRequest& request)
      : lime_(lime),
        samples_(lime ? SampleLimeCoalitions(features, request.n_samples, request.seed)
                      : SampleKernelShapCoalitions(features, request.n_samples, request.seed)),
        abandoned_(request.abandoned) {}
  std::vector<Coalition> Coalitions() const override { return samples_; }
  std::vector<double> Attribute(const std::function<double(const Coalition&)>& value) const override {
    std::vector<double> y;
    for (const Coalition& c : samples_) y.push_back(value(c));
    return lime_ ? FitLasso(samples_, y, LimeWeights(samples_), kLimeLassoAlpha, abandoned_)
                 : FitLeastSquares(samples_, y, KernelShapWeights(samples_));
  }
  // LIME's coordinate descent and KernelSHAP's SVD least squares (1,024 samples x 4,096 features) both take
  // seconds per target token.
  bool fits_long() const override { return true; }

 private:
  const bool lime_;
  const std::vector<Coalition> samples_;
  const std::function<bool()> abandoned_;
};

}  // namespace

std::unique_ptr<CoalitionDesign> FeatureAblationCoalitions(const AttributionRequest&, int64_t features) {
  return std::make_unique<FeatureAblation>(features);
}
std::unique_ptr<CoalitionDesign> ShapleyValuesCoalitions(const AttributionRequest&, int64_t features) {
  return std::make_unique<ShapleyValues>(features);
}
std::unique_ptr<CoalitionDesign> ShapleyValueSamplingCoalitions(const AttributionRequest& request, int64_t features) {
  return std::make_unique<ShapleyValueSampling>(features, request.n_samples, request.seed);
}
std::unique_ptr<CoalitionDesign> LimeCoalitions(const AttributionRequest& request, int64_t features) {
  return std::make_unique<SurrogateFit>(/*lime=*/true, features, request);
}
std::unique_ptr<CoalitionDesign> KernelShapCoalitions(const AttributionRequest& request, int64_t features) {
  return std::make_unique<SurrogateFit>(/*lime=*/false, features, request);
}

}  // namespace attribution::engine
