// SPDX-License-Identifier: Apache-2.0
#include "engine/model/bitsandbytes_checkpoint.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

using nlohmann::json;

std::string StateName(const std::string& prefix, Quantization kind) {
  return absl::StrCat(prefix, ".weight.quant_state.bitsandbytes__", QuantizationName(kind));
}

// Takes `name` after checking its stored dtype (Take would convert any dtype silently).
absl::StatusOr<at::Tensor> TakeStored(WeightStore& store, const std::string& name, at::ScalarType dtype,
                                      const std::vector<int64_t>& shape, const at::Device& device) {
  const TensorRecord* record = store.Find(name);
  if (record == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("the bitsandbytes checkpoint lacks \"", name, "\""));
  }
  if (record->dtype != dtype) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes tensor \"", name, "\" is ",
                                                   c10::toString(record->dtype), ", expected ", c10::toString(dtype),
                                                   dtype == at::kByte ? " (bnb_4bit_quant_storage uint8)" : ""));
  }
  return store.Take(name, shape, at::TensorOptions().dtype(dtype).device(device));
}

absl::StatusOr<json> ReadQuantState(WeightStore& store, const std::string& name) {
  const TensorRecord* record = store.Find(name);
  if (record == nullptr || record->dtype != at::kByte || record->shape.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", name, "\" is not a uint8 vector"));
  }
  ASSIGN_OR_RETURN(at::Tensor bytes, store.Take(name, record->shape, at::TensorOptions().dtype(at::kByte)));
  const std::string text(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
  ASSIGN_OR_RETURN(json state, ParseBoundedJson(text, absl::StrCat("bitsandbytes quant state \"", name, "\"")));
  if (!state.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", name, "\" is not a JSON object"));
  }
  return state;
}

absl::StatusOr<int64_t> StateInt(const json& state, const char* key, const std::string& name) {
  if (!state.contains(key) || !state[key].is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bitsandbytes quant state \"", name, "\": \"", key, "\" must be an integer"));
  }
  return state[key].get<int64_t>();
}

// get<std::vector<int64_t>> throws on any other element; the caller names the tensor instead.
bool StateIsIntegerArray(const json& state, const char* key) {
  if (!state.contains(key) || !state[key].is_array()) return false;
  for (const json& element : state[key]) {
    if (!element.is_number_integer()) return false;
  }
  return true;
}

}  // namespace

bool IsBitsandbytesWeight(const WeightStore& store, const std::string& prefix, Quantization kind) {
  return store.Contains(StateName(prefix, kind));
}

absl::StatusOr<QuantizedWeight> ReadBitsandbytesWeight(WeightStore& store, const std::string& prefix, Quantization kind,
                                                       int64_t out, int64_t in, const at::Device& device) {
  const std::string state_name = StateName(prefix, kind), weight = prefix + ".weight";
  ASSIGN_OR_RETURN(json state, ReadQuantState(store, state_name));
  if (!state.contains("quant_type") || state["quant_type"] != QuantizationName(kind)) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", state_name,
                                                   "\": quant_type is not \"", QuantizationName(kind), "\""));
  }
  if (!StateIsIntegerArray(state, "shape")) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", state_name, "\": shape ",
                                                   state.value("shape", json()).dump(),
                                                   " is not an array of integers"));
  }
  const std::vector<int64_t> expected_shape = {out, in};
  if (state["shape"].get<std::vector<int64_t>>() != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", state_name, "\": shape ",
                                                   state.value("shape", json()).dump(), " is not the config's [", out,
                                                   ", ", in, "]"));
  }
  QuantizedWeight result{.kind = kind, .out_features = out, .in_features = in};
  ASSIGN_OR_RETURN(result.block_size, StateInt(state, "blocksize", state_name));
  RETURN_IF_ERROR(ValidateFourBitOptions({.block_size = result.block_size}));
  if ((out * in) % result.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("\"", weight, "\": ", out * in, " weights are not whole blocks of ",
                                                   result.block_size, " (a partial last block is not supported)"));
  }
  const int64_t blocks = out * in / result.block_size;
  ASSIGN_OR_RETURN(result.codes, TakeStored(store, weight, at::kByte, {out * in / 2, 1}, device));
  result.codes = result.codes.reshape({-1});
  ASSIGN_OR_RETURN(result.code_book, TakeStored(store, weight + ".quant_map", at::kFloat, {16}, device));
  // bitsandbytes dequantizes with its fixed table for quant_type and never reads the stored map: a map
  // that differs would give answers that are neither ours to trust nor bitsandbytes'.
  if (!at::equal(result.code_book, FourBitCodeBook(kind, device))) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes tensor \"", weight, ".quant_map\" is not the ",
                                                   QuantizationName(kind),
                                                   " code book (bitsandbytes ignores a stored quant_map and "
                                                   "dequantizes with its fixed table)"));
  }
  if (!state.contains("nested_offset")) {
    ASSIGN_OR_RETURN(result.scales, TakeStored(store, weight + ".absmax", at::kFloat, {blocks}, device));
    return result;
  }
  ASSIGN_OR_RETURN(int64_t nested_block_size, StateInt(state, "nested_blocksize", state_name));
  if (nested_block_size != kNestedBlockSize || !state["nested_offset"].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("bitsandbytes quant state \"", state_name,
                                                   "\": double quantization needs nested_blocksize 256 and a "
                                                   "numeric nested_offset"));
  }
  const int64_t nested_blocks = (blocks + kNestedBlockSize - 1) / kNestedBlockSize;
  NestedAbsmax nested;
  ASSIGN_OR_RETURN(nested.codes, TakeStored(store, weight + ".absmax", at::kByte, {blocks}, device));
  ASSIGN_OR_RETURN(nested.scales, TakeStored(store, weight + ".nested_absmax", at::kFloat, {nested_blocks}, device));
  ASSIGN_OR_RETURN(nested.code_book, TakeStored(store, weight + ".nested_quant_map", at::kFloat, {256}, device));
  // The offset was a float32 written out as a JSON number: it converts back exactly.
  nested.offsets = at::full({nested_blocks}, static_cast<float>(state["nested_offset"].get<double>()),
                            at::TensorOptions().dtype(at::kFloat).device(device));
  result.nested = std::move(nested);
  return result;
}

}  // namespace attribution::engine
