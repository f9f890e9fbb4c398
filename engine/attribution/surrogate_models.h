// SPDX-License-Identifier: Apache-2.0
// Lime and KernelShap as Captum defines them: sample binary coalitions of features (1 = present),
// weight each sample, and fit a weighted linear model of the scored quantity on the coalitions; the
// coefficients are the attributions.
//
//  * Lime: each feature present with probability 1/2; weight exp(-d^2 / 2) with d the cosine distance
//    between the all-ones input and the coalition (kernel width 1); Lasso with alpha 0.01 (sklearn's
//    objective, weights rescaled to sum to the sample count).
//  * KernelShap: all present, none present, then k features with p(k) ~ (F-1) / (k (F-k)) chosen
//    uniformly; weight 1e6 for the first two (they pin the fit's end points), 1 otherwise; weighted
//    least squares (the minimum-norm solution when the system is underdetermined).
//
// Coalitions come from SplitMix64 seeded with the request's seed (tools/captum_reference.py reproduces
// the stream to feed Captum the same samples).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace attribution::engine {

using Coalition = std::vector<bool>;  // feature f present?

std::vector<Coalition> SampleLimeCoalitions(int64_t num_features, int64_t num_samples, uint64_t seed);
std::vector<Coalition> SampleKernelShapCoalitions(int64_t num_features, int64_t num_samples, uint64_t seed);

std::vector<double> LimeWeights(const std::vector<Coalition>& samples);
std::vector<double> KernelShapWeights(const std::vector<Coalition>& samples);

inline constexpr double kLimeLassoAlpha = 0.01;

// Coefficients (without the intercept) of the weighted fit of y on the 0/1 coalitions, with intercept.
// FitLasso stops early, between sweeps, once `abandoned` says nobody waits for it.
std::vector<double> FitLasso(
    const std::vector<Coalition>& x, const std::vector<double>& y, const std::vector<double>& weights, double alpha,
    const std::function<bool()>& abandoned = [] { return false; });
std::vector<double> FitLeastSquares(const std::vector<Coalition>& x, const std::vector<double>& y,
                                    const std::vector<double>& weights);

}  // namespace attribution::engine
