// SPDX-License-Identifier: Apache-2.0
// Turns LibTorch exceptions into statuses at our API boundary: out-of-memory becomes
// RESOURCE_EXHAUSTED (callers may retry smaller), anything else INTERNAL.
#pragma once

#include <exception>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace attribution::engine {

absl::Status StatusFromException(const std::exception& e, const char* what);

// Returns e's message; for a c10::Error, without the C++ backtrace (file paths, addresses) that its
// what() appends, which means nothing to whoever reads a status or a startup error.
const char* ExceptionMessage(const std::exception& e);

// FAILED_PRECONDITION for an answer the model computed as NaN (`what`: "the target's log-probs"): a number
// no client can use, which float16 gives wherever an activation passes 65504 (and a model loaded with
// --allow_nonfinite_weights anywhere). An OK status with NaN in it looks like an answer; greedy decoding
// would even pick token 0 from it.
absl::Status NotANumberError(absl::string_view what);
// Whether any of `values` is NaN (what NotANumberError refuses).
bool AnyNaN(const std::vector<double>& values);

}  // namespace attribution::engine
