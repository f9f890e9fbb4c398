// SPDX-License-Identifier: Apache-2.0
// Integration points (alphas in [0, 1]) and weights of integrated gradients, as Captum defines them:
// riemann_left / right / middle / trapezoid (each weight 1/n, trapezoid halves both ends) and
// gausslegendre (Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1]); and, not in Captum,
// fejer2 (Fejér's second rule), whose nodes nest (those of n points are among those of 2n + 1), so
// integrated gradients to a tolerance refines it without computing a point twice.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

enum class IntegrationRule {
  kRiemannLeft,
  kRiemannRight,
  kRiemannMiddle,
  kRiemannTrapezoid,
  kGaussLegendre,
  kFejer2,
};

absl::StatusOr<IntegrationRule> ParseIntegrationRule(const std::string& name);
const char* IntegrationRuleName(IntegrationRule rule);

struct IntegrationPoints {
  std::vector<double> alphas;
  std::vector<double> weights;
};

// The fewest points a rule is defined for: one (the midpoint for Gauss-Legendre, an end or the middle
// for Riemann sums, the midpoint for Fejér's second rule), two for the trapezoid, whose ends share the weight.
int64_t MinIntegrationSteps(IntegrationRule rule);
// n_steps must be at least MinIntegrationSteps(rule).
absl::StatusOr<IntegrationPoints> MakeIntegrationPoints(IntegrationRule rule, int64_t n_steps);

// The power of 1/n its error shrinks with on smooth integrands as the rule has n points: 1 for the left,
// right and (Captum's, whose weights sum to (n - 1) / n) trapezoid sums, 2 for the midpoint sum; 0 for
// Gauss-Legendre and Fejér's second rule, whose errors shrink faster than any power.
int ErrorPower(IntegrationRule rule);

// Tolerance-driven integrated gradients' orders within a budget of `n_steps` points: Fejér's second rule
// nests (7, 15, 31, ... points, each order adding only its new nodes), the others run fresh orders (8, 16,
// 32, ..., the last taking what is left of the budget). Whether `rule` nests; the first order; the one after `order`
// given the points the orders so far took (`points_used`, not nested), or 0 when the budget allows no other.
bool NestsOrders(IntegrationRule rule);
int64_t FirstAdaptiveOrder(IntegrationRule rule, int64_t n_steps);
int64_t NextAdaptiveOrder(IntegrationRule rule, int64_t order, int64_t points_used, int64_t n_steps);
// The most points one of those orders after the first queues at once, however many run (0: none runs).
int64_t LargestLaterAdaptiveRound(IntegrationRule rule, int64_t n_steps);

}  // namespace attribution::engine
