// SPDX-License-Identifier: Apache-2.0
// Small file helpers shared by the model and tokenizer loaders. POSIX calls rather than
// std::filesystem: the PyPI libtorch.so interposes broken copies of std::filesystem functions.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace attribution::engine {

bool FileExists(const std::string& path);

// The folder of the running executable, with a trailing '/' (empty when it cannot be read).
std::string ExecutableDir();

inline constexpr int64_t kMaxReadFileBytes = int64_t{256} << 20;

// The whole file; NOT_FOUND naming the path when it cannot be read, INVALID_ARGUMENT past
// kMaxReadFileBytes (a device such as /dev/zero) or for a directory.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// ReadFile for a file of a model's folder (config, tokenizer, index): INVALID_ARGUMENT for what is no regular
// file. A pipe's writer can hold it open without writing (startup waited with no end and no word of why), a
// device reads without end, and a checkpoint is files as transformers writes them.
absl::StatusOr<std::string> ReadModelFile(const std::string& path);
// INVALID_ARGUMENT "PATH: a pipe, not a regular file (...)" for a model file of `mode` (stat's st_mode) that is
// not regular: every reader of a model's files says it alike.
absl::Status NotARegularFile(const std::string& path, unsigned int mode);

}  // namespace attribution::engine
