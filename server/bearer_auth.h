// SPDX-License-Identifier: Apache-2.0
// Optional bearer-token authentication: clients send "authorization: Bearer <token>" metadata and the
// token must be one of those in the tokens file (one per line; blank lines and #-comments ignored).
// Tokens are kept and compared as SHA-256 digests, in time that depends on neither where a presented token
// differs from a known one nor the known tokens' lengths.
#pragma once
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ServerContextBase;
}

namespace attribution::server {

// Immutable after Load; thread-safe.
class BearerAuth {
 public:
  // INVALID_ARGUMENT naming the line for a token over kMaxTokenBytes, which clients cannot send (gRPC's
  // metadata limit; client/attribution_client.h refuses longer ones).
  static constexpr size_t kMaxTokenBytes = 4096;
  static absl::StatusOr<BearerAuth> Load(const std::string& tokens_file);
  // Checks the value of the call's "authorization" metadata (nullopt: none was sent). OK, or
  // UNAUTHENTICATED saying what is missing or wrong (never echoing the token).
  absl::Status Check(std::optional<absl::string_view> authorization) const;
  // Check on a call's "authorization" metadata.
  absl::Status CheckCall(const grpc::ServerContextBase& context) const;
  size_t size() const { return digests_.size(); }

 private:
  std::vector<std::array<unsigned char, 32>> digests_;
};

}  // namespace attribution::server
