// SPDX-License-Identifier: Apache-2.0
// Optional bearer-token authentication: clients send "authorization: Bearer <token>" metadata and the
// token must be one of those in the tokens file (one per line; blank lines and #-comments ignored).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attribution::server {

// Immutable after Load; thread-safe.
class BearerAuth {
 public:
  static absl::StatusOr<BearerAuth> Load(const std::string& tokens_file);
  // Checks the value of the call's "authorization" metadata (nullopt: none was sent). OK, or
  // UNAUTHENTICATED saying what is missing or wrong (never echoing the token).
  absl::Status Check(std::optional<absl::string_view> authorization) const;
  size_t size() const { return tokens_.size(); }

 private:
  std::vector<std::string> tokens_;
};

}  // namespace attribution::server
