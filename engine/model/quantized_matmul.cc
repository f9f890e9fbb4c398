// SPDX-License-Identifier: Apache-2.0
#include "engine/model/quantized_matmul.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "engine/model/cuda/quantized_matmul_kernels.h"

namespace attribution::engine {
namespace {

std::optional<cuda_kernels::ElementType> KernelElementType(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return cuda_kernels::ElementType::kFloat32;
    case at::kBFloat16:
      return cuda_kernels::ElementType::kBFloat16;
    case at::kHalf:
      return cuda_kernels::ElementType::kFloat16;
    default:
      return std::nullopt;
  }
}

}  // namespace

std::optional<at::Tensor> FusedQuantizedMatmul(const at::Tensor& x, const QuantizedWeight& weight, MatmulSide side) {
  const std::optional<cuda_kernels::ElementType> element_type = KernelElementType(x.scalar_type());
  if (!x.is_cuda() || !element_type || weight.kind == Quantization::kNone) return std::nullopt;
  TORCH_CHECK(weight.codes.device() == x.device(), "quantized matmul: weight on ", weight.codes.device(), ", input on ",
              x.device());
  const bool forward = side == MatmulSide::kForward;
  const int64_t reduction = forward ? weight.in_features : weight.out_features;
  const int64_t columns = forward ? weight.out_features : weight.in_features;
  TORCH_CHECK(x.size(-1) == reduction, "quantized matmul: input width ", x.size(-1), ", expected ", reduction);

  // The kernel trusts these shapes; a weight that disagrees with them must fail here, not as an illegal
  // memory access that poisons the device for every other request.
  const bool four_bit = IsFourBit(weight.kind);
  const int64_t elements = weight.out_features * weight.in_features;
  const int block_size_log2 = four_bit ? cuda_kernels::BlockSizeLog2(weight.block_size) : 0;
  TORCH_CHECK(!four_bit || (weight.block_size > 0 && int64_t{1} << block_size_log2 == weight.block_size),
              "quantized matmul: block size ", weight.block_size, " is not a power of two");
  TORCH_CHECK(weight.codes.scalar_type() == (four_bit ? at::kByte : at::kChar) &&
                  weight.codes.numel() == (four_bit ? (elements + 1) / 2 : elements),
              "quantized matmul: ", weight.codes.numel(), " codes of type ", weight.codes.scalar_type(), " for a ",
              weight.out_features, " x ", weight.in_features, " ", QuantizationName(weight.kind), " weight");

  c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor input = x.reshape({-1, reduction}).contiguous();
  at::Tensor output = at::empty({input.size(0), columns}, x.options());
  // A nested absmax is expanded per call: a float per block (1/32 of a 4-bit weight's codes at block 64),
  // and it dies with the call.
  const at::Tensor scales = (four_bit ? weight.Absmax() : weight.scales).to(x.device(), at::kFloat).contiguous();
  TORCH_CHECK(scales.numel() == (four_bit ? elements >> block_size_log2 : weight.out_features),
              "quantized matmul: ", scales.numel(), " scales for a ", weight.out_features, " x ", weight.in_features,
              " ", QuantizationName(weight.kind), " weight");
  const at::Tensor code_book = four_bit ? weight.code_book.to(x.device(), at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!four_bit || code_book.numel() == 16, "quantized matmul: a 4-bit code book of ", code_book.numel(),
              " values");
  const at::Tensor codes = weight.codes.contiguous();

  const cuda_kernels::QuantizedMatmulArgs args{
      .element_type = *element_type,
      .input = input.data_ptr(),
      .output = output.data_ptr(),
      .rows = input.size(0),
      .reduction = reduction,
      .columns = columns,
      .weight_transposed = !forward,
      .format = four_bit ? cuda_kernels::WeightFormat::kFourBit : cuda_kernels::WeightFormat::kInt8,
      .codes = codes.data_ptr(),
      .scales = scales.data_ptr<float>(),
      .code_book = four_bit ? code_book.data_ptr<float>() : nullptr,
      .block_size_log2 = block_size_log2,
      .in_features = weight.in_features,
      .stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream(),
  };
  const char* error = cuda_kernels::LaunchQuantizedMatmul(args);
  TORCH_CHECK(error == nullptr, "quantized matmul launch: ", error);

  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = columns;
  return output.view(shape);
}

bool CudaQuantizedMatmulCompiled() { return true; }

}  // namespace attribution::engine
