// SPDX-License-Identifier: Apache-2.0
#include "server/bearer_auth.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::server {
namespace {

// Compares in time independent of where the strings differ, so response timing leaks no prefix.
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<BearerAuth> BearerAuth::Load(const std::string& tokens_file) {
  ASSIGN_OR_RETURN(std::string text, engine::ReadFile(tokens_file));
  BearerAuth auth;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    auth.tokens_.emplace_back(line);
  }
  if (auth.tokens_.empty()) return absl::InvalidArgumentError(tokens_file + ": holds no tokens");
  return auth;
}

absl::Status BearerAuth::Check(std::optional<absl::string_view> authorization) const {
  if (!authorization) return absl::UnauthenticatedError("missing \"authorization: Bearer <token>\" metadata");
  constexpr absl::string_view kScheme = "Bearer ";
  if (!absl::StartsWithIgnoreCase(*authorization, kScheme)) {
    return absl::UnauthenticatedError("authorization metadata must use the Bearer scheme");
  }
  const std::string token(absl::StripAsciiWhitespace(authorization->substr(kScheme.size())));
  bool known = false;
  for (const std::string& t : tokens_) known |= ConstantTimeEquals(t, token);
  if (!known) return absl::UnauthenticatedError("the bearer token is not valid");
  return absl::OkStatus();
}

}  // namespace attribution::server
