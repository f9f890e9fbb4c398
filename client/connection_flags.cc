// SPDX-License-Identifier: Apache-2.0
#include "client/connection_flags.h"

#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(bool, tls, false, "connect with TLS");
ABSL_FLAG(std::string, ca, "", "PEM roots that sign the server certificate (TLS; empty: the system's roots)");
ABSL_FLAG(std::string, cert, "", "PEM client certificate (mutual TLS; with --key)");
ABSL_FLAG(std::string, key, "", "PEM key of --cert");
ABSL_FLAG(std::string, tls_server_name, "", "expected server name in its certificate (default: the target's host)");
ABSL_FLAG(std::string, token_file, "", "file holding the bearer token (servers with --auth_tokens_file)");
ABSL_FLAG(double, keepalive, 0,
          "seconds between pings while a call runs (0: none); a server that answers none for as long fails the "
          "call UNAVAILABLE (retried on another server) instead of holding it to its deadline. Servers before "
          "2026-12-07 close connections that ping more often than every 300 s");

namespace attribution::client {

namespace {

constexpr TlsOptionNames kFlagNames{.tls = "--tls",
                                    .ca_file = "--ca",
                                    .cert_file = "--cert",
                                    .key_file = "--key",
                                    .tls_server_name = "--tls_server_name"};

void SetTlsFromFlags(ClientOptions& options) {
  options.tls = absl::GetFlag(FLAGS_tls);
  options.ca_file = absl::GetFlag(FLAGS_ca);
  options.cert_file = absl::GetFlag(FLAGS_cert);
  options.key_file = absl::GetFlag(FLAGS_key);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
}

}  // namespace

absl::Status ApplyConnectionFlags(ClientOptions& options) {
  SetTlsFromFlags(options);
  // Connect checks the range, naming ClientOptions' field; a NaN or infinity has no Duration to reach it as.
  const double keepalive = absl::GetFlag(FLAGS_keepalive);
  if (!(keepalive == 0 || (keepalive >= 1 && keepalive <= 86400))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--keepalive: ", keepalive, " is neither 0 (off) nor between 1 and 86400 s"));
  }
  options.keepalive = absl::Seconds(keepalive);
  // Connect checks the files too, naming ClientOptions' fields; a program's user gave the flags.
  if (absl::Status files = CheckTlsFiles(options, kFlagNames); !files.ok()) return files;
  if (absl::GetFlag(FLAGS_token_file).empty()) return absl::OkStatus();
  absl::StatusOr<std::string> token = ReadBearerTokenFile(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return absl::InvalidArgumentError("--token_file: " + std::string(token.status().message()));
  options.bearer_token = *token;
  return absl::OkStatus();
}

std::string ConnectionFlagsError() {
  ClientOptions options;
  SetTlsFromFlags(options);
  const absl::Status tls = CheckTlsOptions(options, kFlagNames);
  return tls.ok() ? "" : std::string(tls.message());
}

bool DefinesConnectionFlags(absl::string_view file) { return absl::EndsWith(file, "client/connection_flags.cc"); }

}  // namespace attribution::client
