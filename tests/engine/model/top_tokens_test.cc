// SPDX-License-Identifier: Apache-2.0
// TopTokensInIdOrderOfTies against the order a stable sort by (-value, id) gives, written out in plain
// C++: NaN first, then larger values, equal values by lower id; on rows with few and with many ties.
#include "engine/model/top_tokens.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace attribution::engine {
namespace {

struct Expected {
  std::vector<std::vector<float>> values;
  std::vector<std::vector<int64_t>> ids;
};

Expected SortedByValueThenId(const at::Tensor& log_probs, int64_t k) {
  const at::Tensor rows = log_probs.to(at::kFloat).contiguous();
  Expected expected;
  for (int64_t r = 0; r < rows.size(0); ++r) {
    const float* row = rows[r].data_ptr<float>();
    std::vector<int64_t> ids(rows.size(1));
    std::iota(ids.begin(), ids.end(), 0);
    std::stable_sort(ids.begin(), ids.end(), [row](int64_t a, int64_t b) {
      if (std::isnan(row[a]) || std::isnan(row[b])) return std::isnan(row[a]) && !std::isnan(row[b]);
      return row[a] > row[b];
    });
    ids.resize(k);
    expected.ids.push_back(ids);
    std::vector<float> values;
    for (int64_t id : ids) values.push_back(row[id]);
    expected.values.push_back(values);
  }
  return expected;
}

void ExpectSortedByValueThenId(const at::Tensor& log_probs, int64_t k) {
  const Expected expected = SortedByValueThenId(log_probs, k);
  const auto [values, ids] = TopTokensInIdOrderOfTies(log_probs, k);
  ASSERT_EQ(ids.sizes(), (std::vector<int64_t>{log_probs.size(0), k}));
  const at::Tensor got_values = values.to(at::kFloat).contiguous(), got_ids = ids.contiguous();
  for (int64_t r = 0; r < log_probs.size(0); ++r) {
    for (int64_t i = 0; i < k; ++i) {
      const float value = got_values[r][i].item<float>();
      SCOPED_TRACE(testing::Message() << "row " << r << ", rank " << i);
      EXPECT_EQ(got_ids[r][i].item<int64_t>(), expected.ids[r][i]);
      if (std::isnan(expected.values[r][i])) {
        EXPECT_TRUE(std::isnan(value));
      } else {
        EXPECT_EQ(value, expected.values[r][i]);
      }
    }
  }
}

TEST(TopTokens, AFlatRowGivesTheLowestIds) {
  const at::Tensor flat = at::full({3, 50000}, -std::log(50000.0), at::kFloat);
  const auto [values, ids] = TopTokensInIdOrderOfTies(flat, 20);
  EXPECT_TRUE(at::equal(ids, at::arange(20, at::kLong).expand({3, 20})));
  EXPECT_TRUE(at::equal(values, flat.narrow(1, 0, 20)));
}

TEST(TopTokens, RowsWithFewAndManyTies) {
  at::manual_seed(3);
  // Values from a small set, so most cuts fall inside a run of ties; some rows flat, some -inf heavy.
  at::Tensor rows = at::randint(0, 4, {64, 300}, at::kLong).to(at::kFloat).neg_();
  rows[5].fill_(-2.0);
  rows[6].fill_(-std::numeric_limits<float>::infinity());
  rows[6][17] = -1.0;
  rows[7].narrow(0, 0, 290).fill_(-std::numeric_limits<float>::infinity());
  for (int64_t k : {1, 2, 20, 299, 300}) ExpectSortedByValueThenId(rows, k);
  ExpectSortedByValueThenId(at::randn({16, 1000}), 20);  // no ties
}

TEST(TopTokens, ABatchWithOneTiedRow) {
  at::manual_seed(5);
  // Rows without ties take at::topk's list as it is; one row tied at the cut, and one tied inside its
  // best k, must still come out in id order beside them.
  at::Tensor rows = at::randn({8, 500});
  for (int64_t id : {412, 7, 233, 90, 301, 18, 477, 150, 64, 399}) rows[3][id] = 10.0;  // best ten, tied
  rows[6].narrow(0, 100, 50).fill_(5.0);
  rows[6][2] = 6.0;  // best, then 50 ties across the cut
  ExpectSortedByValueThenId(rows, 12);
  ExpectSortedByValueThenId(rows.narrow(0, 0, 6), 12);  // ties inside the best k only
  ExpectSortedByValueThenId(rows.narrow(0, 6, 1), 12);
}

TEST(TopTokens, NaNsComeFirstInIdOrder) {
  at::Tensor rows = at::zeros({3, 40}, at::kFloat);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  rows[0][30] = nan;
  rows[0][4] = nan;
  rows[1].narrow(0, 10, 25).fill_(nan);  // more NaNs than k: the lowest-id NaNs
  rows[2][39] = 1.0;
  for (int64_t k : {1, 3, 20}) ExpectSortedByValueThenId(rows, k);
}

TEST(TopTokens, HalfPrecisionTies) {
  at::manual_seed(4);
  // bfloat16 rounds nearby log-probs to the same value: most top-20 lists hold ties.
  const at::Tensor rows = (at::randn({32, 2000}) * 0.05 - 8).to(at::kBFloat16);
  ExpectSortedByValueThenId(rows, 20);
}

}  // namespace
}  // namespace attribution::engine
