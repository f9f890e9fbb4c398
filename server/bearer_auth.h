// SPDX-License-Identifier: Apache-2.0
// Optional bearer-token authentication: clients send "authorization: Bearer <token>" metadata and the
// token must be one of those in the tokens file (one per line; blank lines and #-comments ignored).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attribution::server {

// Immutable after Load; thread-safe.
class BearerAuth {
 public:
  static absl::StatusOr<BearerAuth> Load(const std::string& tokens_file);
  // OK, or UNAUTHENTICATED saying what is missing or wrong (never echoing the token).
  absl::Status Check(const std::multimap<std::string, std::string>& metadata) const;
  size_t size() const { return tokens_.size(); }

 private:
  std::vector<std::string> tokens_;
};

}  // namespace attribution::server
