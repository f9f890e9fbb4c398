// SPDX-License-Identifier: Apache-2.0
// Integration rules against closed forms: the integrals of polynomials and of exp on [0, 1].
#include "engine/attribution/integration_rules.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace attribution::engine {
namespace {

double Integrate(const IntegrationPoints& p, double (*f)(double)) {
  double sum = 0;
  for (size_t i = 0; i < p.alphas.size(); ++i) sum += p.weights[i] * f(p.alphas[i]);
  return sum;
}

TEST(ClenshawCurtis, IntegratesPolynomialsUpToDegreeNMinusOneExactly) {
  for (int64_t n : {3, 5, 9, 17, 33, 10}) {
    auto points = MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, n);
    ASSERT_TRUE(points.ok());
    ASSERT_EQ(points->alphas.size(), static_cast<size_t>(n));
    EXPECT_EQ(points->alphas.front(), 0.0);
    EXPECT_DOUBLE_EQ(points->alphas.back(), 1.0);
    for (int64_t degree = 0; degree < n; ++degree) {
      double sum = 0;
      for (size_t i = 0; i < points->alphas.size(); ++i)
        sum += points->weights[i] * std::pow(points->alphas[i], degree);
      EXPECT_NEAR(sum, 1.0 / static_cast<double>(degree + 1), 1e-13) << n << " points, degree " << degree;
    }
  }
}

TEST(ClenshawCurtis, TwoPointsAreTheTrapezoidAndMorePointsConvergeOnExp) {
  auto two = MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, 2);
  ASSERT_TRUE(two.ok());
  EXPECT_THAT(two->alphas, ::testing::ElementsAre(0.0, 1.0));
  EXPECT_THAT(two->weights, ::testing::ElementsAre(0.5, 0.5));
  const double exact = std::exp(1.0) - 1.0;
  auto nine = MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, 9);
  ASSERT_TRUE(nine.ok());
  EXPECT_NEAR(Integrate(*nine, [](double x) { return std::exp(x); }), exact, 1e-12);
}

TEST(ClenshawCurtis, EveryNodeOfNPointsIsANodeOf2NMinus1Points) {
  for (int64_t n : {2, 3, 5, 9, 17, 33, 65, 129, 257}) {
    auto coarse = MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, n);
    auto fine = MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, 2 * n - 1);
    ASSERT_TRUE(coarse.ok() && fine.ok());
    // Bitwise: the tolerance-driven plan reuses the coarse nodes' rows as the fine rule's even nodes.
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(coarse->alphas[j], fine->alphas[2 * j]) << n << " points, node " << j;
  }
}

TEST(ClenshawCurtis, NeedsTwoPointsAndParsesByItsName) {
  EXPECT_EQ(MinIntegrationSteps(IntegrationRule::kClenshawCurtis), 2);
  EXPECT_FALSE(MakeIntegrationPoints(IntegrationRule::kClenshawCurtis, 1).ok());
  EXPECT_EQ(ParseIntegrationRule("clenshaw_curtis").value(), IntegrationRule::kClenshawCurtis);
  EXPECT_STREQ(IntegrationRuleName(IntegrationRule::kClenshawCurtis), "clenshaw_curtis");
}

TEST(GaussLegendre, IntegratesPolynomialsUpToDegree2NMinus1Exactly) {
  for (int64_t n : {1, 2, 8, 16}) {
    auto points = MakeIntegrationPoints(IntegrationRule::kGaussLegendre, n);
    ASSERT_TRUE(points.ok());
    for (int64_t degree = 0; degree < 2 * n; ++degree) {
      double sum = 0;
      for (size_t i = 0; i < points->alphas.size(); ++i)
        sum += points->weights[i] * std::pow(points->alphas[i], degree);
      EXPECT_NEAR(sum, 1.0 / static_cast<double>(degree + 1), 1e-13) << n << " points, degree " << degree;
    }
  }
}

}  // namespace
}  // namespace attribution::engine
