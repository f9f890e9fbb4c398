// SPDX-License-Identifier: Apache-2.0
// Turns LibTorch exceptions into statuses at our API boundary: out-of-memory becomes
// RESOURCE_EXHAUSTED (callers may retry smaller), anything else INTERNAL.
#pragma once

#include <exception>
#include <string_view>

#include "absl/status/status.h"

namespace attribution::engine {

absl::Status StatusFromException(const std::exception& e, const char* what);

// Returns e's message; for a c10::Error, without the C++ backtrace (file paths, addresses) that its
// what() appends, which means nothing to whoever reads a status or a startup error.
const char* ExceptionMessage(const std::exception& e);

}  // namespace attribution::engine
