// SPDX-License-Identifier: Apache-2.0
#include "engine/model/torch_errors.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <new>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attribution::engine {

const char* ExceptionMessage(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  return torch_error != nullptr ? torch_error->what_without_backtrace() : e.what();
}

absl::Status StatusFromException(const std::exception& e, const char* what) {
  const char* message = ExceptionMessage(e);
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of device memory: ", message));
  }
  // The CPU allocator throws a plain c10::Error: on the CPU that is the device's memory, and the engine halves a
  // batch's token budget on RESOURCE_EXHAUSTED (it was INTERNAL, the budget never shrank).
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
      absl::StrContains(message, "DefaultCPUAllocator: can't allocate memory") ||
      absl::StrContains(message, "DefaultCPUAllocator: not enough memory")) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of host memory: ", message));
  }
  return absl::InternalError(absl::StrCat(what, ": ", message));
}

absl::Status NotANumberError(absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, " came out NaN: the model's computation overflowed on this input (in float16, past 65504: ",
                   "serve the model in bfloat16 or float32) or its weights hold NaN or infinite values"));
}

bool AnyNaN(const std::vector<double>& values) {
  return std::any_of(values.begin(), values.end(), [](double v) { return std::isnan(v); });
}

}  // namespace attribution::engine
