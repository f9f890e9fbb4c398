// SPDX-License-Identifier: Apache-2.0
// The weights of one Hugging Face model directory: a single model.safetensors or shards listed in
// model.safetensors.index.json. Hands out tensors by name with their expected shape checked, converted
// to the compute dtype and device.
//
//   ASSIGN_OR_RETURN(auto store, WeightStore::Open(dir));
//   ASSIGN_OR_RETURN(at::Tensor w, store->Take("model.norm.weight", {hidden}, options));
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_files.h"

namespace attribution::engine {

// Not thread-safe: used by the single thread that loads a model.
class WeightStore {
 public:
  static absl::StatusOr<std::unique_ptr<WeightStore>> Open(const std::string& dir);

  bool Contains(const std::string& name) const { return index_.count(name) > 0; }
  // The stored dtype and shape of `name`, or nullptr when absent.
  const TensorRecord* Find(const std::string& name) const;

  // Marks `name` as known though not loaded (a copy of a tied head, a saved buffer).
  void Skip(const std::string& name) { taken_.insert(name); }
  // The stored tensors neither taken nor skipped so far, in name order.
  std::vector<std::string> Untaken() const;

  // Returns the tensor `name` converted to `options` (dtype, device), after checking that its shape
  // is `shape` and, unless `allow_nonfinite`, that every value is finite. The result never aliases
  // the file mapping.
  absl::StatusOr<at::Tensor> Take(const std::string& name, const std::vector<int64_t>& shape,
                                  const at::TensorOptions& options, bool allow_nonfinite = false);

 private:
  std::string FileNames() const;  // the files read, for messages

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> index_;  // tensor name -> file holding it
  std::set<std::string> taken_;                          // names taken or skipped
};

}  // namespace attribution::engine
