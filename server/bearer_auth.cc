// SPDX-License-Identifier: Apache-2.0
#include "server/bearer_auth.h"

#include <grpcpp/server_context.h>
#include <openssl/sha.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/credential_files.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::server {
namespace {

std::array<unsigned char, 32> Digest(absl::string_view token) {
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest.data());
  return digest;
}

// Compares in time independent of where the digests differ, so response timing leaks no prefix.
bool ConstantTimeEquals(const std::array<unsigned char, 32>& a, const std::array<unsigned char, 32>& b) {
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<BearerAuth> BearerAuth::Load(const std::string& tokens_file) {
  ASSIGN_OR_RETURN(std::string text, engine::ReadFile(tokens_file));
  BearerAuth auth;
  for (const auto& [line_number, line] : TokenLines(text)) {
    const std::string where = absl::StrCat(tokens_file, ":", line_number, ": ");
    if (line.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(where, "a token of ", line.size(), " bytes, longer than the ",
                                                     kMaxTokenBytes, " a client can send"));
    }
    // gRPC metadata carries printable ASCII only: a token with another byte could never be presented.
    if (const auto bad = std::find_if(line.begin(), line.end(), [](char c) { return c < 0x20 || c > 0x7e; });
        bad != line.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%sbyte %d of the token (0x%02x) is not printable ASCII, which gRPC metadata and so clients cannot send",
          where, bad - line.begin(), static_cast<unsigned char>(*bad)));
    }
    auth.digests_.push_back(Digest(line));
  }
  if (auth.digests_.empty()) return absl::InvalidArgumentError(tokens_file + ": holds no tokens");
  return auth;
}

absl::Status BearerAuth::Check(std::optional<absl::string_view> authorization) const {
  if (!authorization) return absl::UnauthenticatedError("missing \"authorization: Bearer <token>\" metadata");
  constexpr absl::string_view kScheme = "Bearer ";
  if (!absl::StartsWithIgnoreCase(*authorization, kScheme)) {
    return absl::UnauthenticatedError("authorization metadata must use the Bearer scheme");
  }
  const std::array<unsigned char, 32> presented =
      Digest(absl::StripAsciiWhitespace(authorization->substr(kScheme.size())));
  bool known = false;
  for (const auto& digest : digests_) known |= ConstantTimeEquals(digest, presented);
  if (!known) return absl::UnauthenticatedError("the bearer token is not valid");
  return absl::OkStatus();
}

absl::Status BearerAuth::CheckCall(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) return Check(std::nullopt);
  return Check(absl::string_view(it->second.data(), it->second.size()));
}

}  // namespace attribution::server
