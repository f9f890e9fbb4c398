// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes as a model.safetensors file. SafetensorsFile::Open must return a
// status and never crash; a file it accepts must keep its promise that every tensor is safe to read:
// records inside the data section, the byte count matching dtype x shape, and View giving that tensor.
#include <cstdint>

#include "engine/model/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using attribution::engine::ElementSize;
  using attribution::engine::SafetensorsFile;
  const std::string path = attribution::fuzz::WriteScratchFile("model.safetensors", data, size);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  for (const auto& [name, record] : (*file)->tensors()) {
    FUZZ_CHECK(record.begin >= 8 && record.begin <= record.end && record.end <= size);
    int64_t elements = 1;
    for (int64_t dim : record.shape) {
      FUZZ_CHECK(dim >= 0);
      elements *= dim;
    }
    FUZZ_CHECK(static_cast<uint64_t>(elements * ElementSize(record.dtype)) == record.end - record.begin);
    at::Tensor view = (*file)->View(record);
    FUZZ_CHECK(view.numel() == elements);
    if (elements > 0) view.flatten()[elements - 1].item();  // reads the tensor's last element
  }
  return 0;
}
