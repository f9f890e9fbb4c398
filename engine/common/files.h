// SPDX-License-Identifier: Apache-2.0
// Small file helpers shared by the model and tokenizer loaders. POSIX calls rather than
// std::filesystem: the PyPI libtorch.so interposes broken copies of std::filesystem functions.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace attribution::engine {

bool FileExists(const std::string& path);

// The whole file; NOT_FOUND naming the path when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace attribution::engine
