// SPDX-License-Identifier: Apache-2.0
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "engine/model/cuda/quantized_matmul_kernels.h"

namespace attribution::engine::cuda_kernels {
namespace {

// One block computes a 64 x 64 output tile in 32-wide steps of the reduction, with 4 warps.
constexpr int kTileRows = 64, kTileColumns = 64, kTileReduction = 32, kThreads = 128;

template <typename T>
struct Element;
template <>
struct Element<float> {
  __device__ static float FromFloat(float v) { return v; }
  __device__ static float ToFloat(float v) { return v; }
  static constexpr int kPad = 1;  // a 33-float row stride spreads a warp's column reads over the banks
};
template <>
struct Element<__nv_bfloat16> {
  __device__ static __nv_bfloat16 FromFloat(float v) { return __float2bfloat16_rn(v); }
  __device__ static float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
  static constexpr int kPad = 8;  // WMMA loads need 16-byte multiples of row stride for 16-bit types
};
template <>
struct Element<__half> {
  __device__ static __half FromFloat(float v) { return __float2half_rn(v); }
  __device__ static float ToFloat(__half v) { return __half2float(v); }
  static constexpr int kPad = 8;
};

template <typename T>
struct SharedTiles {
  static constexpr int kStride = kTileReduction + Element<T>::kPad;
  // input[r][k]: row r of the output tile; weight[c][k]: column c of the output tile (column-major B).
  alignas(32) T input[kTileRows][kStride];
  alignas(32) T weight[kTileColumns][kStride];
  float code_book[16];
};

// Weight element (row, col) of the [out, in] weight, dequantized exactly as Dequantize() does on the
// host: 4-bit values as code value × absmax in float32 rounded once; int8 as code × scale in T.
template <typename T>
__device__ T DequantizedWeight(const QuantizedMatmulArgs& a, const float* code_book, int64_t row, int64_t col) {
  const int64_t index = row * a.in_features + col;
  if (a.format == WeightFormat::kInt8) {
    const float scale = Element<T>::ToFloat(Element<T>::FromFloat(a.scales[row]));
    return Element<T>::FromFloat(static_cast<float>(static_cast<const int8_t*>(a.codes)[index]) * scale);
  }
  const uint8_t byte = static_cast<const uint8_t*>(a.codes)[index >> 1];
  const int code = (index & 1) ? (byte & 0xF) : (byte >> 4);
  return Element<T>::FromFloat(code_book[code] * a.scales[index / a.block_size]);
}

// Fills the shared tiles for reduction step k0. Consecutive threads read consecutive addresses: along
// the reduction for the input and the forward's weight rows, along the columns for the transposed
// weight (whose reduction index is the weight's row).
template <typename T>
__device__ void LoadTiles(const QuantizedMatmulArgs& a, SharedTiles<T>& tiles, int64_t row0, int64_t col0, int64_t k0) {
  const T* input = static_cast<const T*>(a.input);
  for (int e = threadIdx.x; e < kTileRows * kTileReduction; e += kThreads) {
    const int r = e / kTileReduction, k = e % kTileReduction;
    const int64_t row = row0 + r, red = k0 + k;
    tiles.input[r][k] = (row < a.rows && red < a.reduction) ? input[row * a.reduction + red] : Element<T>::FromFloat(0);
  }
  for (int e = threadIdx.x; e < kTileColumns * kTileReduction; e += kThreads) {
    int c, k;
    if (a.weight_transposed) {
      k = e / kTileColumns;
      c = e % kTileColumns;
    } else {
      c = e / kTileReduction;
      k = e % kTileReduction;
    }
    const int64_t col = col0 + c, red = k0 + k;
    T value = Element<T>::FromFloat(0);
    if (col < a.columns && red < a.reduction) {
      value = a.weight_transposed ? DequantizedWeight<T>(a, tiles.code_book, red, col)
                                  : DequantizedWeight<T>(a, tiles.code_book, col, red);
    }
    tiles.weight[c][k] = value;
  }
}

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
    LoadTiles(a, tiles, row0, col0, k0);
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
    LoadTiles(a, tiles, row0, col0, k0);
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
