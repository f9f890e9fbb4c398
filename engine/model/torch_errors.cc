// SPDX-License-Identifier: Apache-2.0
#include "engine/model/torch_errors.h"

#include <c10/util/Exception.h>

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
  return absl::InternalError(absl::StrCat(what, ": ", message));
}

}  // namespace attribution::engine
