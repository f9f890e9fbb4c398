// SPDX-License-Identifier: Apache-2.0
#include "engine/attribution/integration_rules.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

// Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1], by Newton's method on the
// Legendre polynomial P_n from the classic cosine starting guesses.
IntegrationPoints GaussLegendre(int64_t n) {
  IntegrationPoints p;
  p.alphas.resize(n);
  p.weights.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    double x = std::cos(M_PI * (i + 0.75) / (n + 0.5));
    double derivative = 0;
    for (int iteration = 0; iteration < 100; ++iteration) {
      double p0 = 1, p1 = x;  // P_0, P_1; recurrence up to P_n
      for (int64_t k = 2; k <= n; ++k) {
        const double p2 = ((2.0 * k - 1) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
      }
      const double pn = n == 1 ? x : p1, pn_minus_1 = n == 1 ? 1 : p0;
      derivative = n * (x * pn - pn_minus_1) / (x * x - 1);
      const double step = pn / derivative;
      x -= step;
      if (std::abs(step) < 1e-16) break;
    }
    // Ascending order in alpha, as numpy's leggauss returns nodes ascending.
    p.alphas[n - 1 - i] = 0.5 * (1 + x);
    p.weights[n - 1 - i] = 0.5 * 2 / ((1 - x * x) * derivative * derivative);
  }
  return p;
}

// Nodes and weights of n-point Fejér quadrature of the second kind: the interior nodes cos(jπ/N),
// j = 1 .. N - 1 = n, of Clenshaw-Curtis, without its ends (where a zero-embedding baseline makes the
// gradient blow up), with the weights that integrate polynomials up to degree n - 1 exactly (Waldvogel's closed
// form as a sum, O(n²)). The angle is formed as (π·j)/N so that the nodes of n and 2n + 1 points that
// coincide are bitwise equal (doubling numerator and denominator changes no rounding).
IntegrationPoints Fejer2(int64_t n) {
  const int64_t intervals = n + 1;
  IntegrationPoints p;
  for (int64_t j = 1; j < intervals; ++j) {
    const double angle = (M_PI * static_cast<double>(j)) / static_cast<double>(intervals);
    double sum = 0;
    for (int64_t k = 1; 2 * k <= intervals; ++k) {
      const double odd = static_cast<double>(2 * k - 1);
      sum += std::sin(odd * angle) / odd;
    }
    // x = cos(angle) runs from 1 to -1; alpha = (1 - x) / 2 ascends in (0, 1).
    p.alphas.push_back(0.5 * (1.0 - std::cos(angle)));
    p.weights.push_back(2.0 * std::sin(angle) / static_cast<double>(intervals) * sum);
  }
  return p;
}

}  // namespace

absl::StatusOr<IntegrationRule> ParseIntegrationRule(const std::string& name) {
  if (name == "riemann_left") return IntegrationRule::kRiemannLeft;
  if (name == "riemann_right") return IntegrationRule::kRiemannRight;
  if (name == "riemann_middle") return IntegrationRule::kRiemannMiddle;
  if (name == "riemann_trapezoid") return IntegrationRule::kRiemannTrapezoid;
  // Captum spells it "gausslegendre"; the proto enum's lower-case name is "gauss_legendre".
  if (name == "gausslegendre" || name == "gauss_legendre" || name.empty()) return IntegrationRule::kGaussLegendre;
  if (name == "fejer2") return IntegrationRule::kFejer2;
  return absl::InvalidArgumentError(
      absl::StrCat("integration rule \"", name,
                   "\" is not supported (riemann_left, riemann_right, riemann_middle, riemann_trapezoid, "
                   "gausslegendre, fejer2)"));
}

const char* IntegrationRuleName(IntegrationRule rule) {
  switch (rule) {
    case IntegrationRule::kRiemannLeft:
      return "riemann_left";
    case IntegrationRule::kRiemannRight:
      return "riemann_right";
    case IntegrationRule::kRiemannMiddle:
      return "riemann_middle";
    case IntegrationRule::kRiemannTrapezoid:
      return "riemann_trapezoid";
    case IntegrationRule::kGaussLegendre:
      return "gausslegendre";
    case IntegrationRule::kFejer2:
      return "fejer2";
  }
  return "unknown";
}

int64_t MinIntegrationSteps(IntegrationRule rule) { return rule == IntegrationRule::kRiemannTrapezoid ? 2 : 1; }

int ErrorPower(IntegrationRule rule) {
  switch (rule) {
    case IntegrationRule::kRiemannLeft:
    case IntegrationRule::kRiemannRight:
    case IntegrationRule::kRiemannTrapezoid:
      return 1;
    case IntegrationRule::kRiemannMiddle:
      return 2;
    case IntegrationRule::kGaussLegendre:
    case IntegrationRule::kFejer2:
      return 0;
  }
  return 1;
}

namespace {

constexpr int64_t kFirstAdaptiveOrder = 8;
constexpr int64_t kFirstNestedOrder = 7;  // Fejér's second rule: 2^k - 1 points

}  // namespace

bool NestsOrders(IntegrationRule rule) { return rule == IntegrationRule::kFejer2; }

int64_t FirstAdaptiveOrder(IntegrationRule rule, int64_t n_steps) {
  if (!NestsOrders(rule)) return std::min(kFirstAdaptiveOrder, n_steps);
  // The most points of the form 2^k - 1 within both the first order and n_steps (1 at least).
  int64_t points = 1;
  while (2 * points + 1 <= std::min(kFirstNestedOrder, n_steps)) points = 2 * points + 1;
  return points;
}

int64_t NextAdaptiveOrder(IntegrationRule rule, int64_t order, int64_t points_used, int64_t n_steps) {
  if (NestsOrders(rule)) return 2 * order + 1 <= n_steps ? 2 * order + 1 : 0;
  // Doubles, or takes what is left if that is still more points than the last.
  const int64_t next = std::min(2 * order, n_steps - points_used);
  return next > order ? next : 0;
}

int64_t LargestLaterAdaptiveRound(IntegrationRule rule, int64_t n_steps) {
  int64_t order = FirstAdaptiveOrder(rule, n_steps);
  int64_t largest = 0, used = order;
  for (int64_t next; (next = NextAdaptiveOrder(rule, order, used, n_steps)) > 0; order = next) {
    const int64_t round = NestsOrders(rule) ? next - order : next;  // a nested order adds only its new nodes
    largest = std::max(largest, round);
    used += next;
  }
  return largest;
}

absl::StatusOr<IntegrationPoints> MakeIntegrationPoints(IntegrationRule rule, int64_t n) {
  const int64_t min_steps = MinIntegrationSteps(rule);
  if (n < min_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_steps ", n, " must be at least ", min_steps, " for ", IntegrationRuleName(rule)));
  }
  // Riemann sums: `first` plus `span` spaced as torch.linspace, each weight 1/n.
  auto spaced = [n](double first, double span) {
    IntegrationPoints p;
    for (int64_t i = 0; i < n; ++i) {
      const double fraction = n > 1 ? static_cast<double>(i) / (n - 1) : 0.0;
      p.alphas.push_back(first + span * fraction);
      p.weights.push_back(1.0 / n);
    }
    return p;
  };
  switch (rule) {
    case IntegrationRule::kGaussLegendre:
      return GaussLegendre(n);
    case IntegrationRule::kFejer2:
      return Fejer2(n);
    case IntegrationRule::kRiemannLeft:
      return spaced(0.0, 1.0 - 1.0 / n);
    case IntegrationRule::kRiemannRight:
      return spaced(1.0 / n, 1.0 - 1.0 / n);
    case IntegrationRule::kRiemannMiddle:
      return spaced(0.5 / n, 1.0 - 1.0 / n);
    case IntegrationRule::kRiemannTrapezoid: {
      // Both ends count half (Captum's weights sum to (n - 1) / n).
      IntegrationPoints p = spaced(0.0, 1.0);
      p.weights.front() /= 2;
      p.weights.back() /= 2;
      return p;
    }
  }
  return absl::InternalError("unknown integration rule");
}

}  // namespace attribution::engine
