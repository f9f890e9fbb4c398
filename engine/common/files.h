// SPDX-License-Identifier: Apache-2.0
// Small file helpers shared by the model and tokenizer loaders. POSIX calls rather than
// std::filesystem: the PyPI libtorch.so interposes broken copies of std::filesystem functions.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace attribution::engine {

bool FileExists(const std::string& path);

// The folder of the running executable, with a trailing '/' (empty when it cannot be read).
std::string ExecutableDir();

// The whole file; NOT_FOUND naming the path when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace attribution::engine
