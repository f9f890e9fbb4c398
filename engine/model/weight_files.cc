// SPDX-License-Identifier: Apache-2.0
#include "engine/model/weight_files.h"

#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/common/bounded_json.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

// Reads model.safetensors.index.json and returns the shard files it names, in a stable order, with the
// tensor -> shard map it declares.
absl::Status ReadShardIndex(const std::string& index_path, std::vector<std::string>& shards,
                            std::map<std::string, std::string>& declared) {
  ASSIGN_OR_RETURN(std::string text, ReadModelFile(index_path));
  ASSIGN_OR_RETURN(nlohmann::json index, ParseBoundedJson(text, index_path));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object with a \"weight_map\" object"));
  }
  if (index["weight_map"].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": the \"weight_map\" names no tensor"));
  }
  std::set<std::string> unique;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry of \"", tensor, "\" is not a file name"));
    }
    const std::string file = shard.get<std::string>();
    // A NUL ends the name the file system sees: "x.safetensors\0junk" opened x.safetensors under another name.
    if (file.find_first_of(std::string("/\0", 2)) != std::string::npos || file == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": shard name \"", file, "\" must be a plain file name"));
    }
    declared[tensor] = file;
    if (unique.insert(file).second) shards.push_back(file);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<WeightFiles> FindWeightFiles(const std::string& dir) {
  WeightFiles files;
  if (FileExists(dir + "/model.safetensors")) {
    files.shards.assign(1, "model.safetensors");
  } else if (FileExists(dir + "/model.safetensors.index.json")) {
    files.index = "model.safetensors.index.json";
    RETURN_IF_ERROR(ReadShardIndex(dir + "/" + files.index, files.shards, files.declared));
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json in the model directory"));
  }
  return files;
}

}  // namespace attribution::engine
