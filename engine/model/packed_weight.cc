// SPDX-License-Identifier: Apache-2.0
#include "engine/model/packed_weight.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <dlfcn.h>

#include <limits>
#include <vector>

namespace attribution::engine {
namespace {

// MKL's CBLAS enumerators (mkl_cblas.h); the functions take them as plain ints.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// MKL inside the torch wheel's libtorch_cpu exports its packed-GEMM API (LP64: int dimensions). Looked up
// rather than linked, as with the thread-count setters: a LibTorch without MKL simply keeps at::linear.
struct PackedGemm {
  using GetSize = size_t (*)(int identifier, int m, int n, int k);
  using Pack = void (*)(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                        int ld, float* dest);
  using Compute = void (*)(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                           const float* b, int ldb, float beta, float* c, int ldc);
  GetSize get_size = reinterpret_cast<GetSize>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack_get_size"));
  Pack pack = reinterpret_cast<Pack>(dlsym(RTLD_DEFAULT, "cblas_sgemm_pack"));
  Compute compute = reinterpret_cast<Compute>(dlsym(RTLD_DEFAULT, "cblas_sgemm_compute"));

  bool available() const { return get_size != nullptr && pack != nullptr && compute != nullptr; }
};

const PackedGemm& Mkl() {
  static const PackedGemm gemm;
  return gemm;
}

}  // namespace

std::shared_ptr<const PackedWeight> PackedWeight::Pack(const at::Tensor& weight) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (!Mkl().available() || !weight.defined() || weight.dim() != 2 || !weight.device().is_cpu() ||
      weight.scalar_type() != at::kFloat || weight.size(0) == 0 || weight.size(1) == 0 || weight.size(0) > kIntMax ||
      weight.size(1) > kIntMax) {
    return nullptr;
  }
  const int out = static_cast<int>(weight.size(0)), in = static_cast<int>(weight.size(1));
  const at::Tensor source = weight.contiguous();
  // B = weightᵀ, stored as the [out, in] rows of `weight`. The packed layout does not depend on the row
  // count it is packed for: any m may use it (tests/engine/model/packed_weight_test.cc).
  const size_t bytes = Mkl().get_size(kBMatrix, static_cast<int>(kMaxRows), out, in);
  at::Tensor buffer = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
  Mkl().pack(kRowMajor, kBMatrix, kTrans, static_cast<int>(kMaxRows), out, in, 1.0f, source.data_ptr<float>(), in,
             buffer.data_ptr<float>());
  return std::shared_ptr<const PackedWeight>(new PackedWeight(std::move(buffer), out, in));
}

bool PackedWeight::Suits(const at::Tensor& x) const {
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.dim() == 0 || x.size(-1) != in_features_) {
    return false;
  }
  if (x.requires_grad() && c10::GradMode::is_enabled()) return false;
  return x.numel() / in_features_ <= kMaxRows;
}

at::Tensor PackedWeight::Multiply(const at::Tensor& x, const at::Tensor& bias) const {
  const at::Tensor rows = x.reshape({-1, in_features_}).contiguous();
  const int64_t m = rows.size(0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features_;
  // With a bias the product is added to a copy of it (beta = 1), as addmm does. A fresh tensor: an expanded
  // bias of one row is already "contiguous" and would be the bias itself.
  at::Tensor out = at::empty({m, out_features_}, rows.options());
  if (bias.defined()) out.copy_(bias.expand({m, out_features_}));
  if (m > 0) {
    Mkl().compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(m), static_cast<int>(out_features_),
                  static_cast<int>(in_features_), rows.data_ptr<float>(), static_cast<int>(in_features_),
                  buffer_.data_ptr<float>(), static_cast<int>(in_features_), bias.defined() ? 1.0f : 0.0f,
                  out.data_ptr<float>(), static_cast<int>(out_features_));
  }
  return out.view(shape);
}

}  // namespace attribution::engine
