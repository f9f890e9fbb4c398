// SPDX-License-Identifier: Apache-2.0
#include "engine/model/quantization.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/quantized_matmul.h"

namespace attribution::engine {
namespace {

// bitsandbytes' code values, as it writes them (Python floats, rounded to float32 once).
constexpr double kNf4Codes[16] = {
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
};
// FP4 (1 sign, 2 exponent, 1 mantissa bits) before bitsandbytes divides by the largest magnitude, 12.
constexpr double kFp4Codes[16] = {0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3};
// The codes in ascending value, as bitsandbytes' torch.argsort orders them (the two zeros of FP4
// included: values in (0, 0.0026] get code 8, exactly 0 gets code 0).
constexpr int64_t kNf4Order[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
constexpr int64_t kFp4Order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

at::Tensor FloatTensor(const double* values, int64_t n, const at::Device& device) {
  std::vector<float> rounded(values, values + n);
  return at::tensor(rounded, at::TensorOptions().dtype(at::kFloat)).to(device);
}

// bitsandbytes' quantize_4bit (its kernel on the CPU): scale each block by the reciprocal of its
// absmax, clamp to [-1, 1], and bucket by the midpoints of the code values in ascending order (a value
// on a midpoint takes the lower code). Returns the code indices ([n] int64) and each block's absmax
// ([blocks] float32).
std::pair<at::Tensor, at::Tensor> QuantizeFourBitCodes(const at::Tensor& values, int64_t block_size,
                                                       const at::Tensor& code_book, Quantization kind) {
  const int64_t* order_values = kind == Quantization::kFp4 ? kFp4Order : kNf4Order;
  at::Tensor order = at::tensor(at::ArrayRef<int64_t>(order_values, 16), at::kLong).to(values.device());
  at::Tensor blocks = values.reshape({-1, block_size});
  at::Tensor absmax = blocks.abs().amax(1);
  at::Tensor scaled = (blocks * at::reciprocal(absmax.clamp_min(1e-38)).unsqueeze(1)).clamp(-1, 1).reshape({-1});
  at::Tensor sorted = code_book.index_select(0, order);
  at::Tensor midpoints = (sorted.slice(0, 0, 15) + sorted.slice(0, 1)) / 2;
  return {order.index_select(0, at::bucketize(scaled, midpoints)), absmax};
}

// bitsandbytes' CPU kernel for 8-bit blockwise quantization (what quantizes the absmaxes under double
// quantization) does not search the code book per value: it rounds each value, scaled by the
// reciprocal of its block's absmax, to one of 65,536 evenly spaced bins over [-1, 1] and reads the
// bin's code from a table built by nearest-midpoint search. Values within a bin's width (3e-5) of a
// midpoint can thus land on the farther code; we take the same steps in the same float32 order, so
// the codes are bitsandbytes' own.
constexpr int64_t kCodeTableBins = 65536;

at::Tensor BinCodeTable(const at::Tensor& code_book) {
  const int64_t n = code_book.numel();
  at::Tensor midpoints = (code_book.slice(0, 0, n - 1) + code_book.slice(0, 1)) * 0.5f;
  at::Tensor bins = at::arange(kCodeTableBins, code_book.options()) * 2.0f / static_cast<float>(kCodeTableBins - 1);
  return at::searchsorted(midpoints, bins - 1.0f);  // the number of midpoints below each bin's value
}

// Blocks of kNestedBlockSize values (a last partial block on its own), as that kernel quantizes them.
NestedAbsmax QuantizeAbsmaxes(const at::Tensor& absmax) {
  NestedAbsmax nested;
  nested.code_book = DynamicCodeBook(absmax.device());
  at::Tensor offset = absmax.mean();
  at::Tensor centred = absmax - offset;
  const int64_t blocks = centred.numel(), nested_blocks = (blocks + kNestedBlockSize - 1) / kNestedBlockSize;
  // Pad a partial last block with copies of its first value: that changes neither its absmax nor
  // anyone's code.
  at::Tensor padded = centred;
  if (nested_blocks * kNestedBlockSize != blocks) {
    at::Tensor tail = centred.slice(0, (nested_blocks - 1) * kNestedBlockSize);
    padded = at::cat({centred, tail[0].expand({nested_blocks * kNestedBlockSize - blocks})});
  }
  at::Tensor values = padded.reshape({nested_blocks, kNestedBlockSize});
  at::Tensor scales = values.abs().amax(1);
  // A block whose absmaxes all equal the mean (an all-zero weight, a weight of one block) is all zeros:
  // 0 * reciprocal(0) would be NaN and no bin at all; bitsandbytes gives such a block code 0 and scale 0.
  at::Tensor reciprocals = at::where(scales > 0, at::reciprocal(scales), at::zeros_like(scales));
  at::Tensor normalized = (values * reciprocals.unsqueeze(1)).clamp(-1, 1);
  at::Tensor bin = ((normalized + 1.0f) * 0.5f * static_cast<float>(kCodeTableBins - 1) + 0.5f).to(at::kLong);
  at::Tensor codes = BinCodeTable(nested.code_book).index_select(0, bin.reshape({-1})).reshape(bin.sizes());
  codes = at::where(scales.unsqueeze(1) > 0, codes, at::zeros_like(codes));  // an all-zero block: code 0
  nested.codes = codes.reshape({-1}).slice(0, 0, blocks).to(at::kByte).contiguous();
  nested.scales = scales.contiguous();
  nested.offsets = offset.expand({nested_blocks}).contiguous();
  return nested;
}

// bitsandbytes' quantize_4bit, with compress_statistics when double_quantization is set.
QuantizedWeight QuantizeFourBit(const at::Tensor& weight, Quantization kind, const FourBitOptions& options) {
  QuantizedWeight out;
  out.block_size = options.block_size;
  out.code_book = FourBitCodeBook(kind, weight.device());
  auto [index, absmax] =
      QuantizeFourBitCodes(weight.to(at::kFloat).reshape({-1}), options.block_size, out.code_book, kind);
  at::Tensor pairs = index.to(at::kByte).reshape({-1, 2});
  out.codes = pairs.select(1, 0).bitwise_left_shift(4).bitwise_or(pairs.select(1, 1)).contiguous();
  if (!options.double_quantization) {
    out.scales = absmax.contiguous();
    return out;
  }
  out.nested = QuantizeAbsmaxes(absmax);
  return out;
}

at::Tensor DequantizeFourBit(const QuantizedWeight& weight, at::ScalarType dtype) {
  at::Tensor index =
      at::stack({weight.codes.bitwise_right_shift(4), weight.codes.bitwise_and(15)}, 1).reshape({-1}).to(at::kLong);
  at::Tensor values = weight.code_book.index_select(0, index).reshape({-1, weight.block_size});
  return (values * weight.Absmax().unsqueeze(1)).reshape({weight.out_features, weight.in_features}).to(dtype);
}

// Up to this many rows a CUDA product dequantizes inside the kernel; above it, through a dequantized copy
// and the library matmul. The fused kernel reads the 4-bit weight once per 64 rows and dequantizes it
// again each time, while the copy costs one pass over the weight whatever the rows: an estimate puts the
// crossover at a few hundred rows on an H100/H200 (decode and small batches fused, IG's thousands of rows
// on cuBLAS). quantized_matmul_bench, run by scripts/gpu-check, measures both paths per row count; set
// this from its table.
constexpr int64_t kFusedKernelMaxRows = 256;

std::optional<at::Tensor> FusedIfFewRows(const at::Tensor& x, const QuantizedWeight& weight, MatmulSide side) {
  const int64_t width = x.dim() > 0 ? x.size(-1) : 0;
  if (width == 0 || x.numel() / width > kFusedKernelMaxRows) return std::nullopt;
  return FusedQuantizedMatmul(x, weight, side);
}

// x · Wᵀ + bias (forward; bias may be undefined) or x · W (input gradient): on CUDA and few rows inside
// one kernel, else through a dequantized copy of W that dies with the call.
at::Tensor DequantizingMatmul(const at::Tensor& x, const QuantizedWeight& weight, MatmulSide side,
                              const at::Tensor& bias = {}) {
  if (std::optional<at::Tensor> fused = FusedIfFewRows(x, weight, side)) {
    return bias.defined() ? *fused + bias : *std::move(fused);
  }
  const at::Tensor w = Dequantize(weight, x.scalar_type());
  if (side == MatmulSide::kInputGradient) return at::matmul(x, w);
  return bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
}

// Autograd node: saves nothing dequantized; the weight is re-materialised in backward.
class QuantizedLinearFunction : public torch::autograd::Function<QuantizedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const QuantizedWeight* weight) {
    ctx->saved_data["weight"] = reinterpret_cast<int64_t>(weight);
    return DequantizingMatmul(x, *weight, MatmulSide::kForward);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto* weight = reinterpret_cast<const QuantizedWeight*>(ctx->saved_data["weight"].toInt());
    return {DequantizingMatmul(grad_outputs[0], *weight, MatmulSide::kInputGradient), at::Tensor()};
  }
};

int64_t Bytes(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

// Nested parts stack only when each holds whole nested blocks; a part's offset repeats per block.
bool NestedStacks(const std::vector<QuantizedWeight>& parts) {
  for (const QuantizedWeight& part : parts) {
    if (!part.nested || part.nested->codes.numel() % kNestedBlockSize != 0) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<Quantization> ParseQuantization(const std::string& name) {
  if (name.empty() || name == "none") return Quantization::kNone;
  if (name == "int8") return Quantization::kInt8;
  if (name == "nf4") return Quantization::kNf4;
  if (name == "fp4") return Quantization::kFp4;
  return absl::InvalidArgumentError(
      absl::StrCat("quantization \"", name, "\" is not supported (none, int8, nf4, fp4)"));
}

const char* QuantizationName(Quantization q) {
  switch (q) {
    case Quantization::kNone:
      return "none";
    case Quantization::kInt8:
      return "int8";
    case Quantization::kNf4:
      return "nf4";
    case Quantization::kFp4:
      return "fp4";
  }
  return "unknown";
}

absl::Status ValidateFourBitOptions(const FourBitOptions& options) {
  for (int64_t allowed = 32; allowed <= 4096; allowed *= 2) {
    if (options.block_size == allowed) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("4-bit block size ", options.block_size,
                                                 " is not one bitsandbytes allows (32, 64, 128, ..., 4096)"));
}

at::Tensor NestedAbsmax::Absmax() const {
  const int64_t blocks = codes.numel(), nested_blocks = scales.numel();
  at::Tensor values = code_book.index_select(0, codes.to(at::kLong));
  values = at::constant_pad_nd(values, {0, nested_blocks * kNestedBlockSize - blocks}).reshape({nested_blocks, -1});
  // Two float32 roundings, product then sum, as bitsandbytes' dequantize_blockwise and `absmax += offset`.
  at::Tensor scaled = values * scales.unsqueeze(1);
  return (scaled + offsets.unsqueeze(1)).reshape({-1}).slice(0, 0, blocks);
}

int64_t QuantizedWeight::ResidentBytes() const {
  int64_t bytes = Bytes(codes) + Bytes(scales) + Bytes(code_book);
  if (nested) bytes += Bytes(nested->codes) + Bytes(nested->code_book) + Bytes(nested->scales) + Bytes(nested->offsets);
  return bytes;
}

at::Tensor QuantizedWeight::Absmax() const { return nested ? nested->Absmax() : scales; }

at::Tensor FourBitCodeBook(Quantization kind, const at::Device& device) {
  if (kind == Quantization::kFp4) return FloatTensor(kFp4Codes, 16, device) / 12.0f;
  return FloatTensor(kNf4Codes, 16, device);
}

at::Tensor DynamicCodeBook(const at::Device& device) {
  // bitsandbytes' create_dynamic_map(signed=True): for exponents 1e-6 .. 1e0, 2^i midpoints of a float32
  // linspace(0.1, 1) scaled by the exponent, both signs, then 0 and 1; sorted. Computed with the same
  // ATen float32 ops that produce it there.
  std::vector<at::Tensor> values;
  for (int64_t i = 0; i < 7; ++i) {
    at::Tensor boundaries = at::linspace(0.1, 1, (int64_t{1} << i) + 1, at::TensorOptions().dtype(at::kFloat));
    at::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    const double exponent = std::pow(10.0, static_cast<double>(i - 6));
    values.push_back(means * exponent);
    values.push_back(means * -exponent);
  }
  values.push_back(at::tensor({0.0f, 1.0f}));
  return std::get<0>(at::sort(at::cat(values))).to(device);
}

absl::StatusOr<QuantizedWeight> Quantize(const at::Tensor& weight, Quantization kind, const FourBitOptions& four_bit) {
  if (weight.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("quantize: weight must be 2-D, got ", weight.dim(), "-D"));
  }
  c10::AutoGradMode no_grad(false);
  QuantizedWeight out;
  switch (kind) {
    case Quantization::kInt8: {
      at::Tensor w = weight.to(at::kFloat);
      at::Tensor scale = w.abs().amax(1) / 127.0;  // [out]
      scale = at::where(scale > 0, scale, at::ones_like(scale));
      out.codes = at::round(w / scale.unsqueeze(1)).clamp(-127, 127).to(at::kChar).contiguous();
      out.scales = scale.contiguous();
      break;
    }
    case Quantization::kNf4:
    case Quantization::kFp4:
      RETURN_IF_ERROR(ValidateFourBitOptions(four_bit));
      if (weight.numel() % four_bit.block_size != 0) {
        return absl::InvalidArgumentError(absl::StrCat("quantize ", QuantizationName(kind), ": weight of ",
                                                       weight.numel(), " elements is not a multiple of the block size ",
                                                       four_bit.block_size));
      }
      out = QuantizeFourBit(weight, kind, four_bit);
      break;
    case Quantization::kNone:
      return absl::InvalidArgumentError("quantize: no quantization requested");
  }
  out.kind = kind;
  out.out_features = weight.size(0);
  out.in_features = weight.size(1);
  return out;
}

absl::StatusOr<QuantizedWeight> ConcatOutputs(const std::vector<QuantizedWeight>& parts) {
  if (parts.empty() || parts[0].kind == Quantization::kNone) {
    return absl::InvalidArgumentError("concatenate quantized weights: no quantized parts");
  }
  QuantizedWeight out;
  out.kind = parts[0].kind;
  out.in_features = parts[0].in_features;
  out.block_size = parts[0].block_size;
  out.code_book = parts[0].code_book;
  const bool nested = NestedStacks(parts);
  std::vector<at::Tensor> codes, scales, nested_codes, nested_scales, nested_offsets;
  for (const QuantizedWeight& part : parts) {
    if (part.kind != out.kind || part.in_features != out.in_features || part.block_size != out.block_size ||
        (part.code_book.defined() && !at::equal(part.code_book, out.code_book))) {
      return absl::InvalidArgumentError(
          absl::StrCat("concatenate quantized weights: a ", QuantizationName(part.kind), " part of input width ",
                       part.in_features, " and block size ", part.block_size, " beside a ", QuantizationName(out.kind),
                       " part of width ", out.in_features, " and block size ", out.block_size));
    }
    out.out_features += part.out_features;
    codes.push_back(part.codes);
    if (nested) {
      nested_codes.push_back(part.nested->codes);
      nested_scales.push_back(part.nested->scales);
      nested_offsets.push_back(part.nested->offsets);
    } else {
      scales.push_back(IsFourBit(part.kind) ? part.Absmax() : part.scales);
    }
  }
  // int8 codes are [out, in] and scales [out]; 4-bit codes and absmaxes are flat in row-major block
  // order. Either way the row-major layout of the stacked weight is the parts one after another.
  out.codes = at::cat(codes, 0);
  if (!nested) {
    out.scales = at::cat(scales, 0);
    return out;
  }
  out.nested = NestedAbsmax{.codes = at::cat(nested_codes, 0),
                            .code_book = parts[0].nested->code_book,
                            .scales = at::cat(nested_scales, 0),
                            .offsets = at::cat(nested_offsets, 0)};
  return out;
}

at::Tensor Dequantize(const QuantizedWeight& weight, at::ScalarType dtype) {
  if (weight.kind == Quantization::kInt8) {
    return weight.codes.to(dtype) * weight.scales.to(dtype).unsqueeze(1);
  }
  return DequantizeFourBit(weight, dtype);
}

at::Tensor QuantizedLinear(const at::Tensor& x, const QuantizedWeight& weight, const at::Tensor& bias) {
  if (!c10::GradMode::is_enabled() || !x.requires_grad()) {
    return DequantizingMatmul(x, weight, MatmulSide::kForward, bias);
  }
  at::Tensor y = QuantizedLinearFunction::apply(x, &weight);
  return bias.defined() ? y + bias : y;
}

}  // namespace attribution::engine
