// SPDX-License-Identifier: Apache-2.0
// The PEM files of either end of a TLS connection, checked with OpenSSL as gRPC will read them. gRPC takes
// a wrong file without a word and fails later, naming nothing: the server with "cannot listen on ADDR"
// (a key of another certificate, an encrypted key), a client with "UNAVAILABLE: empty address list" for
// each call. The server's --check_config and startup and the clients' Connect check here first instead.
// Depends on OpenSSL and abseil only, so the server links it without the client library.
#pragma once
#include <string>

#include "absl/status/status.h"

namespace attribution::client {

// A file's text and where it came from, for messages: `setting` is the flag or config key that named it.
struct PemFile {
  std::string setting;
  std::string path;
  std::string text;
};

// `file` holds one or more certificates (a CA bundle, a certificate chain), each parsing: INVALID_ARGUMENT
// naming the setting and the path otherwise.
absl::Status CheckCertificates(const PemFile& file);

// `chain`'s certificates parse and the first is in force now; `key` holds an unencrypted private key (gRPC
// cannot ask for a passphrase) whose public half is the first certificate's. INVALID_ARGUMENT naming the
// setting at fault otherwise.
absl::Status CheckKeyPair(const PemFile& chain, const PemFile& key);

}  // namespace attribution::client
