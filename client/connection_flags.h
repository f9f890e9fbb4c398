// SPDX-License-Identifier: Apache-2.0
// The security flags attribution-cli, attribution-bench and attribution-batch share, defined once so that
// each program reaches a TLS, mutual-TLS or token-protected server the same way: --tls, --ca, --cert,
// --key, --tls_server_name, --token_file.
#pragma once
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/attribution_client.h"

namespace attribution::client {

// Sets `options`' TLS fields and bearer token from the flags. INVALID_ARGUMENT naming --token_file when
// its file cannot be read or holds no valid token.
absl::Status ApplyConnectionFlags(ClientOptions& options);

// A usage error in how the TLS flags combine, as CheckTlsOptions finds it but naming the flags ("" when none).
// The tools exit 2 on it before connecting.
std::string ConnectionFlagsError();

// Whether `file` (as abseil reports a flag's file) defines these flags: a program's --help lists them with
// its own (absl::FlagsUsageConfig::contains_help_flags).
bool DefinesConnectionFlags(absl::string_view file);

}  // namespace attribution::client
