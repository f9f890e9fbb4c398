// SPDX-License-Identifier: Apache-2.0
// The tile loads of the quantized products (quantized_matmul_kernels.cu): which input and weight elements
// a thread block stages in shared memory for one step of the reduction, and how a weight element is
// dequantized on the way. Host and device code alike, so a CPU test can replay the kernels' tiling
// (tests/engine/model/quantized_tiles_test.cc) on machines without a GPU.
#pragma once

#include <cstdint>

#include "engine/model/cuda/quantized_matmul_kernels.h"

#ifdef __CUDACC__
#define ATTRIBUTION_HOST_DEVICE __host__ __device__
#else
#define ATTRIBUTION_HOST_DEVICE
#endif

namespace attribution::engine::cuda_kernels {

// One block computes a 64 x 64 output tile in 32-wide steps of the reduction, with 4 warps.
inline constexpr int kTileRows = 64, kTileColumns = 64, kTileReduction = 32, kThreads = 128;

// Conversions between float32 and the element type T; the 16-bit types' are in the CUDA source.
template <typename T>
struct Element;
template <>
struct Element<float> {
  ATTRIBUTION_HOST_DEVICE static float FromFloat(float v) { return v; }
  ATTRIBUTION_HOST_DEVICE static float ToFloat(float v) { return v; }
  static constexpr int kPad = 1;  // a 33-float row stride spreads a warp's column reads over the banks
};

template <typename T>
struct SharedTiles {
  static constexpr int kStride = kTileReduction + Element<T>::kPad;
  // input[r][k]: row r of the output tile; weight[c][k]: column c of the output tile (column-major B).
  alignas(32) T input[kTileRows][kStride];
  alignas(32) T weight[kTileColumns][kStride];
  float code_book[16];
};

// Weight element (row, col) of the [out, in] weight, dequantized exactly as Dequantize() does: 4-bit
// values as code value × absmax in float32 rounded once to T; int8 as code × scale, both in T.
template <typename T>
ATTRIBUTION_HOST_DEVICE T DequantizedWeight(const QuantizedMatmulArgs& a, const float* code_book, int64_t row,
                                            int64_t col) {
  const int64_t index = row * a.in_features + col;
  if (a.format == WeightFormat::kInt8) {
    const float scale = Element<T>::ToFloat(Element<T>::FromFloat(a.scales[row]));
    return Element<T>::FromFloat(static_cast<float>(static_cast<const int8_t*>(a.codes)[index]) * scale);
  }
  const uint8_t byte = static_cast<const uint8_t*>(a.codes)[index >> 1];
  const int code = (index & 1) ? (byte & 0xF) : (byte >> 4);
  return Element<T>::FromFloat(code_book[code] * a.scales[index >> a.block_size_log2]);
}

// Thread `thread` of `threads` stages its share of the tiles for reduction step k0; outside the matrices
// the tiles hold zeros. Consecutive threads read consecutive addresses: along the reduction for the
// input and the forward's weight rows, along the columns for the transposed weight (whose reduction
// index is the weight's row).
template <typename T>
ATTRIBUTION_HOST_DEVICE void LoadTiles(const QuantizedMatmulArgs& a, SharedTiles<T>& tiles, int64_t row0, int64_t col0,
                                       int64_t k0, int thread, int threads) {
  const T* input = static_cast<const T*>(a.input);
  for (int e = thread; e < kTileRows * kTileReduction; e += threads) {
    const int r = e / kTileReduction, k = e % kTileReduction;
    const int64_t row = row0 + r, red = k0 + k;
    tiles.input[r][k] = (row < a.rows && red < a.reduction) ? input[row * a.reduction + red] : Element<T>::FromFloat(0);
  }
  for (int e = thread; e < kTileColumns * kTileReduction; e += threads) {
    const int c = a.weight_transposed ? e % kTileColumns : e / kTileReduction;
    const int k = a.weight_transposed ? e / kTileColumns : e % kTileReduction;
    const int64_t col = col0 + c, red = k0 + k;
    T value = Element<T>::FromFloat(0);
    if (col < a.columns && red < a.reduction) {
      value = a.weight_transposed ? DequantizedWeight<T>(a, tiles.code_book, red, col)
                                  : DequantizedWeight<T>(a, tiles.code_book, col, red);
    }
    tiles.weight[c][k] = value;
  }
}

}  // namespace attribution::engine::cuda_kernels
