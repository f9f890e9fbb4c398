// SPDX-License-Identifier: Apache-2.0
// Integration rules against closed forms: the integrals of polynomials and of exp on [0, 1].
#include "engine/attribution/integration_rules.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace attribution::engine {
namespace {

template <typename Function>
double Integrate(const IntegrationPoints& p, Function f) {
  double sum = 0;
  for (size_t i = 0; i < p.alphas.size(); ++i) sum += p.weights[i] * f(p.alphas[i]);
  return sum;
}

// The rule's integral of alpha^degree over [0, 1] less the true one, 1 / (degree + 1).
double MonomialError(const IntegrationPoints& p, int64_t degree) {
  return Integrate(p, [degree](double x) { return std::pow(x, degree); }) - 1.0 / static_cast<double>(degree + 1);
}

TEST(Fejer2, IntegratesPolynomialsUpToDegreeNMinusOneExactlyInsideTheInterval) {
  for (int64_t n : {1, 3, 7, 15, 31, 10}) {
    auto points = MakeIntegrationPoints(IntegrationRule::kFejer2, n);
    ASSERT_TRUE(points.ok());
    ASSERT_EQ(points->alphas.size(), static_cast<size_t>(n));
    EXPECT_GT(points->alphas.front(), 0.0);  // no end: a zero baseline's gradient blows up there
    EXPECT_LT(points->alphas.back(), 1.0);
    for (int64_t degree = 0; degree < n; ++degree) {
      EXPECT_NEAR(MonomialError(*points, degree), 0.0, 1e-13) << n << " points, degree " << degree;
    }
  }
}

TEST(Fejer2, OnePointIsTheMidpointAndMorePointsConvergeOnExp) {
  auto one = MakeIntegrationPoints(IntegrationRule::kFejer2, 1);
  ASSERT_TRUE(one.ok());
  EXPECT_THAT(one->alphas, ::testing::ElementsAre(::testing::DoubleEq(0.5)));
  EXPECT_THAT(one->weights, ::testing::ElementsAre(::testing::DoubleEq(1.0)));
  auto fifteen = MakeIntegrationPoints(IntegrationRule::kFejer2, 15);
  ASSERT_TRUE(fifteen.ok());
  EXPECT_NEAR(Integrate(*fifteen, [](double x) { return std::exp(x); }), std::exp(1.0) - 1.0, 1e-12);
}

TEST(Fejer2, EveryNodeOfNPointsIsANodeOf2NPlus1Points) {
  for (int64_t n : {1, 3, 7, 15, 31, 63, 127, 255}) {
    auto coarse = MakeIntegrationPoints(IntegrationRule::kFejer2, n);
    auto fine = MakeIntegrationPoints(IntegrationRule::kFejer2, 2 * n + 1);
    ASSERT_TRUE(coarse.ok() && fine.ok());
    // Bitwise: the tolerance-driven plan reuses the coarse nodes' rows as the fine rule's odd nodes.
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(coarse->alphas[j], fine->alphas[2 * j + 1]) << n << " points, node " << j;
  }
}

TEST(Fejer2, ParsesByItsName) {
  EXPECT_EQ(MinIntegrationSteps(IntegrationRule::kFejer2), 1);
  EXPECT_EQ(ParseIntegrationRule("fejer2").value(), IntegrationRule::kFejer2);
  EXPECT_STREQ(IntegrationRuleName(IntegrationRule::kFejer2), "fejer2");
}

TEST(GaussLegendre, IntegratesPolynomialsUpToDegree2NMinus1Exactly) {
  for (int64_t n : {1, 2, 8, 16}) {
    auto points = MakeIntegrationPoints(IntegrationRule::kGaussLegendre, n);
    ASSERT_TRUE(points.ok());
    for (int64_t degree = 0; degree < 2 * n; ++degree) {
      EXPECT_NEAR(MonomialError(*points, degree), 0.0, 1e-13) << n << " points, degree " << degree;
    }
  }
}

}  // namespace
}  // namespace attribution::engine
