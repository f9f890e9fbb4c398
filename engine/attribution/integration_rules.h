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

}  // namespace attribution::engine
