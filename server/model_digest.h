// SPDX-License-Identifier: Apache-2.0
// The identity of a model's checkpoint: SHA-256 over the files the server loads it from, so a client can
// tell which weights answered a call (ModelInfo.weights_digest, each response's model_digest) even when two
// servers serve different checkpoints under one model name.
//
//   ASSIGN_OR_RETURN(std::string digest, ModelFilesDigest("/models/tiny"));  // 64 hex digits
#pragma once
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::server {

// The files of `dir` the server loads, by name in byte order: config.json, generation_config.json,
// the weights' files (engine::FindWeightFiles), tokenizer.json, tokenizer.model and tokenizer_config.json, those
// that exist.
absl::StatusOr<std::vector<std::string>> ModelFiles(const std::string& dir);

// SHA-256 (lower-case hex) of ModelFiles(dir): for each file, its name, "\n", its size in decimal, "\n"
// and its bytes. Reads every byte of the weights once (streamed, 4 MiB at a time).
absl::StatusOr<std::string> ModelFilesDigest(const std::string& dir);

// Which files ModelFiles(dir) are now: for each, its name, device, inode, size, modification and change times. Equal
// before and after a load: the load, the digest and the tokenizer read one checkpoint, not one being replaced.
absl::StatusOr<std::string> ModelFilesIdentity(const std::string& dir);

// SHA-256 (hex) of the checkpoint as loaded (ModelInfo.model_digest): of "weights_digest=W\ndtype=D\n
// quantization=Q\nblock_size=B\ndouble_quantization=0|1\n".
std::string LoadedModelDigest(const std::string& weights_digest, const std::string& dtype,
                              const std::string& quantization, int64_t block_size, bool double_quantization);

}  // namespace attribution::server
