// SPDX-License-Identifier: Apache-2.0
#include "engine/model/weight_store.h"

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>

#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

// Reads model.safetensors.index.json and returns the shard files it names, in a stable order, with the
// tensor -> shard map it declares.
absl::Status ReadShardIndex(const std::string& index_path, std::vector<std::string>& shards,
                            std::map<std::string, std::string>& declared) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
  auto index = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object with a \"weight_map\" object"));
  }
  std::set<std::string> unique;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry of \"", tensor, "\" is not a file name"));
    }
    const std::string file = shard.get<std::string>();
    if (file.find('/') != std::string::npos || file == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": shard name \"", file, "\" must be a plain file name"));
    }
    declared[tensor] = file;
    if (unique.insert(file).second) shards.push_back(file);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Open(const std::string& dir) {
  auto store = std::unique_ptr<WeightStore>(new WeightStore());
  const std::string single = dir + "/model.safetensors";
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::vector<std::string> shards;
  std::map<std::string, std::string> declared;
  if (FileExists(index_path)) {
    RETURN_IF_ERROR(ReadShardIndex(index_path, shards, declared));
  } else if (FileExists(single)) {
    shards.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json in the model directory"));
  }
  for (const std::string& shard : shards) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir + "/" + shard));
    for (const auto& [name, record] : file->tensors()) {
      auto [it, inserted] = store->index_.emplace(name, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", name, "\" is stored in both ", it->second->path(), " and ", file->path()));
      }
      if (!declared.empty() && (declared.count(name) == 0 || declared[name] != shard)) {
        return absl::InvalidArgumentError(
            absl::StrCat(file->path(), ": tensor \"", name, "\" is not assigned to this shard by ", index_path));
      }
    }
    store->files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : declared) {
    if (store->index_.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor \"", name, "\" is declared in ", shard, " but missing there"));
    }
  }
  return store;
}

absl::StatusOr<at::Tensor> WeightStore::Take(const std::string& name, const std::vector<int64_t>& shape,
                                             const at::TensorOptions& options, bool allow_nonfinite) {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(FileNames(), ": the model weights lack the required tensor \"", name, "\""));
  }
  const SafetensorsFile& file = *it->second;
  const TensorRecord& record = *file.Find(name);
  if (record.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", name, "\" has shape [",
                                                   absl::StrJoin(record.shape, ", "), "] but the config needs [",
                                                   absl::StrJoin(shape, ", "), "]"));
  }
  taken_.insert(name);
  at::Tensor view = file.View(record);
  if (!allow_nonfinite && !at::isfinite(view).all().item<bool>()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", name,
                                                   "\" holds NaN or infinite values (--allow_nonfinite_weights "
                                                   "loads it anyway)"));
  }
  // copy=true: the result must own its memory (the mapping is read-only and may be unmapped).
  return view.to(options, /*non_blocking=*/false, /*copy=*/true);
}

const TensorRecord* WeightStore::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second->Find(name);
}

std::vector<std::string> WeightStore::Untaken() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : index_) {
    if (taken_.count(name) == 0) names.push_back(name);
  }
  return names;
}

std::string WeightStore::FileNames() const {
  std::vector<std::string> paths;
  for (const auto& file : files_) paths.push_back(file->path());
  return absl::StrJoin(paths, ", ");
}

}  // namespace attribution::engine
