// SPDX-License-Identifier: Apache-2.0
#include "engine/model/torch_errors.h"

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace attribution::engine {

absl::Status StatusFromException(const std::exception& e, const char* what) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of device memory: ", e.what()));
  }
  return absl::InternalError(absl::StrCat(what, ": ", e.what()));
}

}  // namespace attribution::engine
