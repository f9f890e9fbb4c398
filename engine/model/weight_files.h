// SPDX-License-Identifier: Apache-2.0
// Which files of a Hugging Face model directory hold its weights: for the weight store, which reads them, and
// the server's digest of the files it loads.
//
//   ASSIGN_OR_RETURN(WeightFiles files, FindWeightFiles(dir));  // files.shards: {"model.safetensors"}, or shards
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::engine {

// The files that hold a model directory's weights, as transformers picks them: model.safetensors, else the shards
// that model.safetensors.index.json names (a folder re-saved unsharded by save_pretrained keeps its old index).
struct WeightFiles {
  std::string index;                            // "model.safetensors.index.json", or empty: a single file
  std::vector<std::string> shards;              // file names in `dir`, in a stable order
  std::map<std::string, std::string> declared;  // tensor -> shard, as the index declares them
};
// NOT_FOUND when neither file is there; INVALID_ARGUMENT naming the index when it is malformed.
absl::StatusOr<WeightFiles> FindWeightFiles(const std::string& dir);

}  // namespace attribution::engine
