// SPDX-License-Identifier: Apache-2.0
// A memory-mapped, validated safetensors file. Every structural defect of the file is reported as an
// absl::Status naming the file, the tensor and the problem; a file that opens holds what its header says, as
// long as nobody changes it meanwhile (Read reports a file cut short since, View does not).
//
//   ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open("/models/x/model.safetensors"));
//   const TensorRecord* record = file->Find("model.norm.weight");
//   ASSIGN_OR_RETURN(at::Tensor weight, file->Read(*record));  // a CPU tensor of its own
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

// One tensor as the header describes it; offsets are absolute within the file.
struct TensorRecord {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Thread-safe after Open: all members are read-only. Tensors returned by View keep the mapping
// alive, so they may outlive the SafetensorsFile object.
class SafetensorsFile {
 public:
  // Header lengths above this are rejected before anything is parsed (the format's own limit).
  static constexpr uint64_t kMaxHeaderBytes = 100u << 20;

  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorRecord>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Returns nullptr when the file has no tensor of that name.
  const TensorRecord* Find(const std::string& name) const;

  // Returns a read-only CPU tensor over the mapped bytes, no copy (tests, fuzzing). Callers must not write into
  // it, and a file cut short meanwhile raises SIGBUS there: the loader reads with Read.
  at::Tensor View(const TensorRecord& record) const;
  // A CPU tensor of its own holding the record's bytes, read from the file; DATA_LOSS naming the tensor when
  // the file ends before them (truncated after Open: the mapping's SIGBUS killed the server).
  absl::StatusOr<at::Tensor> Read(const TensorRecord& record) const;

 private:
  class Mapping;
  SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping);
  absl::Status ParseHeader(const std::string& text);

  std::string path_;
  std::shared_ptr<Mapping> mapping_;  // shared with every View'd tensor
  std::map<std::string, TensorRecord> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Bytes per element of the dtypes we accept in weight files (F32, F16, BF16).
int64_t ElementSize(at::ScalarType dtype);

}  // namespace attribution::engine
