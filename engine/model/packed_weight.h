// SPDX-License-Identifier: Apache-2.0
// A float32 CPU weight laid out once for MKL's packed GEMM, for products with few rows: the score rows of a
// short prompt, a decode step. An ordinary sgemm re-packs the whole weight on every call, and with a few dozen
// rows that copy costs as much as the arithmetic (bench/RESULTS.md, 2026-12-03: 1.5-2.5x faster linears at
// 8-20 rows, no gain from 64 rows on).
//
//   std::shared_ptr<const PackedWeight> packed = PackedWeight::Pack(weight);  // null: not available
//   if (packed && packed->Suits(x)) y = packed->Multiply(x, bias);             // else at::linear(x, weight, bias)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

namespace attribution::engine {

class PackedWeight {
 public:
  // Products of at most this many rows take the packed path; larger ones amortise sgemm's own packing.
  static constexpr int64_t kMaxRows = 48;

  // `weight` [out, in]: packed, or null where it is not a float32 CPU matrix or MKL's packed API is not in
  // the process (a LibTorch built without MKL).
  static std::shared_ptr<const PackedWeight> Pack(const at::Tensor& weight);

  // Whether `x` [..., in] should take the packed path: float32 on the CPU, at most kMaxRows rows, and no
  // gradient to record (the packed product has no autograd formula; gradient passes use at::linear).
  bool Suits(const at::Tensor& x) const;
  // x · weightᵀ (+ bias): [..., in] -> [..., out]. Requires Suits(x).
  at::Tensor Multiply(const at::Tensor& x, const at::Tensor& bias) const;

  // The bytes the packed copy occupies: the weight's own size (MKL reserves more address space than it
  // writes; untouched pages are never resident).
  int64_t ResidentBytes() const { return out_features_ * in_features_ * static_cast<int64_t>(sizeof(float)); }

 private:
  PackedWeight(at::Tensor buffer, int64_t out_features, int64_t in_features)
      : buffer_(std::move(buffer)), out_features_(out_features), in_features_(in_features) {}

  at::Tensor buffer_;  // MKL's opaque layout; never moved or copied (the layout depends on its address)
  int64_t out_features_;
  int64_t in_features_;
};

}  // namespace attribution::engine
