// SPDX-License-Identifier: Apache-2.0
// Reads linear weights that transformers saved quantized by bitsandbytes (4-bit), as they are: for a
// linear PREFIX the checkpoint holds
//   PREFIX.weight                                  uint8 [ceil(out * in / 2), 1]: packed 4-bit codes
//   PREFIX.weight.absmax                           float32 [blocks], or uint8 [blocks] when nested
//   PREFIX.weight.quant_map                        float32 [16]: the value of each code
//   PREFIX.weight.nested_absmax, .nested_quant_map float32 [ceil(blocks / 256)], [256] when nested
//   PREFIX.weight.quant_state.bitsandbytes__nf4|fp4  uint8: the JSON of quant_type, blocksize, dtype,
//                                                  shape and (nested) nested_blocksize, nested_offset
//
//   if (IsBitsandbytesWeight(store, "model.layers.0.mlp.up_proj", Quantization::kNf4)) ...
//   ASSIGN_OR_RETURN(QuantizedWeight w, ReadBitsandbytesWeight(store, prefix, kind, out, in, device));
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "absl/status/statusor.h"
#include "engine/model/quantization.h"
#include "engine/model/weight_store.h"

namespace attribution::engine {

bool IsBitsandbytesWeight(const WeightStore& store, const std::string& prefix, Quantization kind);

// Takes the weight's tensors from `store`, checks them against the quant state and the expected
// [out, in] shape, and returns them on `device`.
absl::StatusOr<QuantizedWeight> ReadBitsandbytesWeight(WeightStore& store, const std::string& prefix, Quantization kind,
                                                       int64_t out, int64_t in, const at::Device& device);

}  // namespace attribution::engine
