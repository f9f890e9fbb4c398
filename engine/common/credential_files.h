// SPDX-License-Identifier: Apache-2.0
// The credential files both ends of a connection read: TLS certificates and keys, and bearer-token files.
// Shared by the server and the clients as engine/common's other leaves are (OpenSSL and abseil only: no
// LibTorch, no gRPC), so the two ends read one format alike.
//
// gRPC takes a wrong PEM file without a word and fails later, naming nothing: the server with "cannot listen
// on ADDR" (a key of another certificate, an encrypted key), a client with "UNAVAILABLE: empty address list"
// for each call. The server's --check_config and startup and the clients' Connect check them here first,
// with OpenSSL, which gRPC reads them with.
#pragma once
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace attribution {

// A file's text and where it came from, for messages: `setting` is the flag or config key that named it.
struct PemFile {
  std::string setting;
  std::string path;
  std::string text;
};

// `file` holds a certificate (a CA bundle, a certificate chain) and its first parses (gRPC keeps a bundle's
// certificates before its first block that does not parse): INVALID_ARGUMENT naming the setting and the path
// otherwise.
absl::Status CheckCertificates(const PemFile& file);

// `chain`'s first certificate parses and is in force now; `key` holds an unencrypted private key (gRPC
// cannot ask for a passphrase) whose public half is the first certificate's. INVALID_ARGUMENT naming the
// setting at fault otherwise. A key gRPC loads through an OpenSSL engine ("engine:ID:KEY", a hardware key) is
// not read here: only the chain is checked.
absl::Status CheckKeyPair(const PemFile& chain, const PemFile& key);

// A bearer-tokens file's tokens and their lines (1-based), in its one format: a token a line, blank lines and
// lines starting with # skipped, surrounding whitespace and a leading byte-order mark no part of a token. The
// server accepts every token of its file; a client sends the first of its own.
struct TokenLine {
  int number;
  absl::string_view token;  // into the text given
};
std::vector<TokenLine> TokenLines(absl::string_view text);

}  // namespace attribution
