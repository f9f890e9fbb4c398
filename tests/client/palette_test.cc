// SPDX-License-Identifier: Apache-2.0
// The renderers' shared colours and ranking (client/palette.h): NaN and infinities are grey and rank
// last, and they do not set the colour scale.
#include "client/palette.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace attribution::client {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

bool Same(Rgb x, Rgb y) { return x.r == y.r && x.g == y.g && x.b == y.b; }

// std::min(1.0, NaN) is 1 and NaN >= 0 is false: a NaN was drawn in the strongest red.
TEST(ColorOf, IsGreyForNaNAndInfinities) {
  for (double value : {kNaN, -kNaN, kInf, -kInf}) {
    EXPECT_TRUE(Same(ColorOf(value, 1), kNonFiniteColor)) << value;
    EXPECT_TRUE(Same(ColorOf(value, kNaN), kNonFiniteColor)) << value;
  }
  EXPECT_TRUE(Same(ColorOf(-1, 1), Rgb{255, 64, 64}));
  EXPECT_TRUE(Same(ColorOf(1, 1), Rgb{64, 255, 64}));
  EXPECT_TRUE(Same(ColorOf(0.5, kInf), Rgb{255, 255, 255}));  // no scale: white, as scale 0
}

TEST(MaxAbs, IgnoresNaNAndInfinities) {
  EXPECT_EQ(MaxAbs({kNaN, -2, kInf, 1}), 2);
  EXPECT_EQ(MaxAbs({kNaN}), 0);
}

TEST(StrongerThan, RanksByMagnitudeWithNaNAndInfinitiesLast) {
  std::vector<double> values = {0.5, kNaN, -3, kInf, 1, kNaN, -0.1};
  std::sort(values.begin(), values.end(), StrongerThan);
  EXPECT_EQ(values[0], -3);
  EXPECT_EQ(values[1], 1);
  EXPECT_EQ(values[2], 0.5);
  EXPECT_EQ(values[3], -0.1);
  for (size_t i = 4; i < values.size(); ++i) EXPECT_FALSE(std::isfinite(values[i])) << i;
}

}  // namespace
}  // namespace attribution::client
