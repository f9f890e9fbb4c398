// SPDX-License-Identifier: Apache-2.0
#include "engine/model/weight_store.h"

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Open(const std::string& dir) {
  auto store = std::unique_ptr<WeightStore>(new WeightStore());
  ASSIGN_OR_RETURN(WeightFiles weight_files, FindWeightFiles(dir));
  const std::vector<std::string>& shards = weight_files.shards;
  std::map<std::string, std::string>& declared = weight_files.declared;
  const std::string index_path = dir + "/" + weight_files.index;
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
  ASSIGN_OR_RETURN(const at::Tensor stored, file.Read(record));
  at::Tensor weight = stored.to(options);  // the stored tensor itself when dtype and device match
  // Checked as converted: a finite bfloat16 or float32 value past float16's range becomes infinite there, and
  // a model served so answers NaN to everything.
  if (!allow_nonfinite && !at::isfinite(weight).all().item<bool>()) {
    if (at::isfinite(stored).all().item<bool>()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": tensor \"", name, "\" holds values up to ", stored.abs().max().item<double>(),
          " in magnitude, past the largest value the serving dtype holds (float16: 65504), so they load as "
          "infinite: serve the model in bfloat16 or float32 (dtype)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", name,
                                                   "\" holds NaN or infinite values (--allow_nonfinite_weights "
                                                   "loads it anyway)"));
  }
  return weight;
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
