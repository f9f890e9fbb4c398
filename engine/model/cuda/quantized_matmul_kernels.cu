// SPDX-License-Identifier: Apache-2.0
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "engine/model/cuda/quantized_matmul_kernels.h"
#include "engine/model/cuda/quantized_tiles.h"

namespace attribution::engine::cuda_kernels {

template <>
struct Element<__nv_bfloat16> {
  ATTRIBUTION_HOST_DEVICE static __nv_bfloat16 FromFloat(float v) { return __float2bfloat16_rn(v); }
  ATTRIBUTION_HOST_DEVICE static float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
  static constexpr int kPad = 8;  // WMMA loads need 16-byte multiples of row stride for 16-bit types
};
template <>
struct Element<__half> {
  ATTRIBUTION_HOST_DEVICE static __half FromFloat(float v) { return __float2half_rn(v); }
  ATTRIBUTION_HOST_DEVICE static float ToFloat(__half v) { return __half2float(v); }
  static constexpr int kPad = 8;
};

namespace {

template <typename T>
__device__ void LoadCodeBook(const QuantizedMatmulArgs& a, SharedTiles<T>& tiles) {
  if (a.format == WeightFormat::kFourBit && threadIdx.x < 16) tiles.code_book[threadIdx.x] = a.code_book[threadIdx.x];
  __syncthreads();
}

// float32: CUDA cores, each thread an 8 x 4 patch of the tile (rows t/16 + 8i, columns t%16 + 16j), so a
// warp's stores of one row are contiguous.
__global__ void __launch_bounds__(kThreads) QuantizedMatmulFloat(QuantizedMatmulArgs a) {
  __shared__ SharedTiles<float> tiles;
  LoadCodeBook(a, tiles);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTileRows,
                col0 = static_cast<int64_t>(blockIdx.x) * kTileColumns;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[8][4] = {};
  for (int64_t k0 = 0; k0 < a.reduction; k0 += kTileReduction) {
    LoadTiles(a, tiles, row0, col0, k0, threadIdx.x, kThreads);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileReduction; ++k) {
      float w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = tiles.weight[tc + 16 * j][k];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float x = tiles.input[tr + 8 * i][k];
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(x, w[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  float* out = static_cast<float*>(a.output);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t row = row0 + tr + 8 * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tc + 16 * j;
      if (row < a.rows && col < a.columns) out[row * a.columns + col] = acc[i][j];
    }
  }
}

// bfloat16 / float16: tensor cores through WMMA, float32 accumulation. The 4 warps split the tile 2 x 2,
// each owning 2 x 2 fragments of 16 x 16.
template <typename T>
__global__ void __launch_bounds__(kThreads) QuantizedMatmulTensorCores(QuantizedMatmulArgs a) {
  namespace wmma = nvcuda::wmma;
  constexpr int kOutStride = kTileColumns + 4;
  // The accumulators go through shared memory to reach the output with bounds checks; the input tiles
  // are dead by then, so the two share storage.
  union Shared {
    SharedTiles<T> tiles;
    alignas(32) float out[kTileRows][kOutStride];
  };
  __shared__ Shared shared;
  SharedTiles<T>& tiles = shared.tiles;
  LoadCodeBook(a, tiles);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTileRows,
                col0 = static_cast<int64_t>(blockIdx.x) * kTileColumns;
  const int warp = threadIdx.x / 32, warp_row = (warp / 2) * 32, warp_col = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  for (int64_t k0 = 0; k0 < a.reduction; k0 += kTileReduction) {
    LoadTiles(a, tiles, row0, col0, k0, threadIdx.x, kThreads);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileReduction; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> x[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> w[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(x[i], &tiles.input[warp_row + 16 * i][k], SharedTiles<T>::kStride);
        wmma::load_matrix_sync(w[i], &tiles.weight[warp_col + 16 * i][k], SharedTiles<T>::kStride);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], x[i], w[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&shared.out[warp_row + 16 * i][warp_col + 16 * j], acc[i][j], kOutStride,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(a.output);
  for (int e = threadIdx.x; e < kTileRows * kTileColumns; e += kThreads) {
    const int r = e / kTileColumns, c = e % kTileColumns;
    const int64_t row = row0 + r, col = col0 + c;
    if (row < a.rows && col < a.columns) out[row * a.columns + col] = Element<T>::FromFloat(shared.out[r][c]);
  }
}

}  // namespace

const char* LaunchQuantizedMatmul(const QuantizedMatmulArgs& args) {
  if (args.rows == 0 || args.columns == 0) return nullptr;
  if ((args.rows + kTileRows - 1) / kTileRows > 65535) return "quantized matmul: too many rows for one launch";
  const dim3 grid(static_cast<unsigned>((args.columns + kTileColumns - 1) / kTileColumns),
                  static_cast<unsigned>((args.rows + kTileRows - 1) / kTileRows));
  auto stream = static_cast<cudaStream_t>(args.stream);
  switch (args.element_type) {
    case ElementType::kFloat32:
      QuantizedMatmulFloat<<<grid, kThreads, 0, stream>>>(args);
      break;
    case ElementType::kBFloat16:
      QuantizedMatmulTensorCores<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(args);
      break;
    case ElementType::kFloat16:
      QuantizedMatmulTensorCores<__half><<<grid, kThreads, 0, stream>>>(args);
      break;
  }
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace attribution::engine::cuda_kernels
