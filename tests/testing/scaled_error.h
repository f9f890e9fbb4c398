// SPDX-License-Identifier: Apache-2.0
// How far answers received over gRPC are from a Python reference, on the reference's own scale.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace attribution::test_support {

// Max |ours - reference| / max(1, max |reference|); the sizes must agree.
inline double ScaledErrorOf(const std::vector<double>& ours, const std::vector<double>& reference) {
  EXPECT_EQ(ours.size(), reference.size());
  double scale = 1, error = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    scale = std::max(scale, std::abs(reference[i]));
    if (i < ours.size()) error = std::max(error, std::abs(ours[i] - reference[i]));
  }
  return error / scale;
}

}  // namespace attribution::test_support
