// SPDX-License-Identifier: Apache-2.0
// The CUDA quantized products' tiling replayed on the CPU (no GPU needed): every block's 128 threads
// stage their share of each tile with the kernels' own LoadTiles, the tile products are summed on the
// host, and the result must equal the dequantized weight times the input (float64 closed form). This
// checks what is easiest to get wrong in the kernels (the transposed read of the input gradient,
// nibble order, block and row scales, ragged edges) where CI runs; quantized_matmul_test runs the
// kernels themselves on a GPU node.
#include "engine/model/cuda/quantized_tiles.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>

#include "engine/model/quantization.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine::cuda_kernels {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::ScaledError;

// What the float32 kernel computes, one block and one reduction step at a time.
at::Tensor ReplayedProduct(const QuantizedWeight& weight, const at::Tensor& x, bool transposed) {
  const bool four_bit = IsFourBit(weight.kind);
  const at::Tensor scales = (four_bit ? weight.Absmax() : weight.scales).contiguous();
  const at::Tensor input = x.contiguous();
  QuantizedMatmulArgs args{.element_type = ElementType::kFloat32,
                           .input = input.data_ptr(),
                           .rows = x.size(0),
                           .reduction = x.size(1),
                           .columns = transposed ? weight.in_features : weight.out_features,
                           .weight_transposed = transposed,
                           .format = four_bit ? WeightFormat::kFourBit : WeightFormat::kInt8,
                           .codes = weight.codes.data_ptr(),
                           .scales = scales.data_ptr<float>(),
                           .code_book = four_bit ? weight.code_book.data_ptr<float>() : nullptr,
                           .block_size_log2 = four_bit ? BlockSizeLog2(weight.block_size) : 0,
                           .in_features = weight.in_features};
  auto tiles = std::make_unique<SharedTiles<float>>();
  if (four_bit) std::copy_n(args.code_book, 16, tiles->code_book);
  at::Tensor out = at::zeros({args.rows, args.columns}, at::kDouble);
  auto out_of = out.accessor<double, 2>();
  for (int64_t row0 = 0; row0 < args.rows; row0 += kTileRows) {
    for (int64_t col0 = 0; col0 < args.columns; col0 += kTileColumns) {
      for (int64_t k0 = 0; k0 < args.reduction; k0 += kTileReduction) {
        for (int thread = 0; thread < kThreads; ++thread) LoadTiles(args, *tiles, row0, col0, k0, thread, kThreads);
        for (int r = 0; r < kTileRows && row0 + r < args.rows; ++r) {
          for (int c = 0; c < kTileColumns && col0 + c < args.columns; ++c) {
            double sum = 0;
            for (int k = 0; k < kTileReduction; ++k) sum += double{tiles->input[r][k]} * tiles->weight[c][k];
            out_of[row0 + r][col0 + c] += sum;
          }
        }
      }
    }
  }
  return out;
}

struct Case {
  Quantization kind;
  bool double_quantization;
  int64_t rows, in_features, out_features;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << QuantizationName(c.kind) << (c.double_quantization ? "+nested " : " ") << c.rows << "x" << c.in_features
      << "->" << c.out_features;
}

class QuantizedTiles : public ::testing::TestWithParam<Case> {};

TEST_P(QuantizedTiles, ReplayedKernelEqualsDequantizedProduct) {
  const Case& c = GetParam();
  at::manual_seed(11);
  auto weight = Quantize(at::randn({c.out_features, c.in_features}), c.kind,
                         {.block_size = 64, .double_quantization = c.double_quantization});
  ASSERT_THAT(weight, IsOk());
  const at::Tensor dense = Dequantize(*weight, at::kFloat).to(at::kDouble);  // [out, in]
  const at::Tensor x = at::randn({c.rows, c.in_features}), gradient = at::randn({c.rows, c.out_features});
  EXPECT_LT(ScaledError(ReplayedProduct(*weight, x, false), at::matmul(x.to(at::kDouble), dense.t())), 1e-6);
  EXPECT_LT(ScaledError(ReplayedProduct(*weight, gradient, true), at::matmul(gradient.to(at::kDouble), dense)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    EveryFormat, QuantizedTiles,
    ::testing::Values(Case{Quantization::kInt8, false, 77, 200, 130}, Case{Quantization::kNf4, false, 77, 200, 96},
                      Case{Quantization::kFp4, false, 130, 64, 200}, Case{Quantization::kNf4, true, 1, 192, 130},
                      // An odd width: a code byte holds the end of one row and the start of the next.
                      Case{Quantization::kNf4, false, 5, 129, 64}));

}  // namespace
}  // namespace attribution::engine::cuda_kernels
