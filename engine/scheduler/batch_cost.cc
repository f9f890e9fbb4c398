// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/batch_cost.h"

#include <cmath>

namespace attribution::engine {
namespace {

// Solves the normal equations restricted to the terms in `use` (Gauss-Jordan with partial pivoting on
// the matrix scaled to a unit diagonal, as the terms differ by orders of magnitude); false when they
// are (nearly) singular, i.e. the batches seen cannot tell the terms apart, or a coefficient is negative.
bool SolveSubset(const double uu[3][3], const double u[3], const bool use[3], double out[3]) {
  int index[3], n = 0;
  for (int i = 0; i < 3; ++i) {
    if (use[i]) index[n++] = i;
  }
  double scale[3], a[3][4];
  for (int r = 0; r < n; ++r) {
    if (!(uu[index[r]][index[r]] > 0)) return false;
    scale[r] = std::sqrt(uu[index[r]][index[r]]);
  }
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < n; ++c) a[r][c] = uu[index[r]][index[c]] / (scale[r] * scale[c]);
    a[r][n] = u[index[r]] / scale[r];
  }
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int r = col + 1; r < n; ++r) {
      if (std::fabs(a[r][col]) > std::fabs(a[pivot][col])) pivot = r;
    }
    if (std::fabs(a[pivot][col]) < 1e-9) return false;
    for (int c = 0; c <= n; ++c) std::swap(a[col][c], a[pivot][c]);
    for (int r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = a[r][col] / a[col][col];
      for (int c = col; c <= n; ++c) a[r][c] -= f * a[col][c];
    }
  }
  for (int i = 0; i < 3; ++i) out[i] = 0;
  for (int r = 0; r < n; ++r) {
    out[index[r]] = a[r][n] / a[r][r] / scale[r];
    if (!(out[index[r]] >= 0) || !std::isfinite(out[index[r]])) return false;
  }
  return true;
}

}  // namespace

double BatchCost::Seconds(int64_t rows, int64_t longest) const {
  const double tokens = static_cast<double>(rows) * static_cast<double>(longest);
  return fixed + per_token * tokens + per_token_pair * tokens * static_cast<double>(longest);
}

void BatchCostModel::Observe(RowKind kind, int64_t rows, int64_t longest, absl::Duration device_time) {
  const double seconds = absl::ToDoubleSeconds(device_time);
  if (rows <= 0 || longest <= 0 || !(seconds > 0)) return;
  Sums& s = sums_[static_cast<int>(kind)];
  const double tokens = static_cast<double>(rows) * static_cast<double>(longest);
  // Dividing by the measured seconds makes the fit minimise the relative error of the prediction,
  // which is what a time budget needs for small and large batches alike.
  const double u[3] = {1 / seconds, tokens / seconds, tokens * static_cast<double>(longest) / seconds};
  for (int i = 0; i < 3; ++i) {
    s.u[i] = kDecay * s.u[i] + u[i];
    for (int j = 0; j < 3; ++j) s.uu[i][j] = kDecay * s.uu[i][j] + u[i] * u[j];
  }
  ++s.batches;
  // Fewer terms when the batches seen cannot tell them apart or a term would be negative.
  static constexpr bool kSubsets[][3] = {
      {true, true, true}, {true, true, false}, {false, true, true}, {false, true, false}};
  BatchCost& cost = costs_[static_cast<int>(kind)];
  for (const bool* use : kSubsets) {
    double c[3];
    if (SolveSubset(s.uu, s.u, use, c)) {
      cost = {.fixed = c[0], .per_token = c[1], .per_token_pair = c[2], .known = s.batches >= kMinBatches};
      return;
    }
  }
}

}  // namespace attribution::engine
