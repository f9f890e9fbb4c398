// SPDX-License-Identifier: Apache-2.0
#include "engine/common/credential_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace attribution {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct CertificateFree {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, CertificateFree>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

// More than any certificate bundle holds; OpenSSL's memory reader takes an int.
constexpr size_t kMostPemBytes = size_t{64} << 20;

std::string Where(const PemFile& file) { return absl::StrCat(file.setting, " \"", file.path, "\""); }

// OpenSSL's reason for its last failure. Its error queue is per thread and read by whatever runs OpenSSL
// next on it (gRPC's handshakes included), so it is emptied.
std::string OpensslReason() {
  const char* reason = ERR_reason_error_string(ERR_peek_last_error());
  ERR_clear_error();
  return reason != nullptr ? reason : "no reason given";
}

absl::StatusOr<Bio> Reader(const PemFile& file) {
  if (file.text.size() > kMostPemBytes) {
    return absl::InvalidArgumentError(absl::StrCat(Where(file), " is ", file.text.size(), " bytes: not a PEM file"));
  }
  return Bio(BIO_new_mem_buf(file.text.data(), static_cast<int>(file.text.size())));
}

absl::StatusOr<std::vector<Certificate>> ReadCertificates(const PemFile& file) {
  absl::StatusOr<Bio> bio = Reader(file);
  if (!bio.ok()) return bio.status();
  std::vector<Certificate> certificates;
  // "TRUSTED CERTIFICATE" blocks too, as OpenSSL reads a chain for TLS; blocks of other kinds (a key beside its
  // certificate) are skipped; reading ends with "no start line". gRPC, too, stops at the first block that does
  // not parse and keeps those before it: only a first one that does not parse is refused.
  while (X509* read = PEM_read_bio_X509_AUX(bio->get(), nullptr, nullptr, nullptr)) certificates.emplace_back(read);
  const unsigned long stopped = ERR_peek_last_error();
  if (certificates.empty() && stopped != 0 &&
      !(ERR_GET_LIB(stopped) == ERR_LIB_PEM && ERR_GET_REASON(stopped) == PEM_R_NO_START_LINE)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(file), ": its first certificate does not parse (", OpensslReason(), ")"));
  }
  ERR_clear_error();
  if (certificates.empty()) return absl::InvalidArgumentError(Where(file) + " holds no PEM certificate");
  return certificates;
}

// OpenSSL asks for an encrypted key's passphrase here: there is none to give, and that it asked is noted.
int NoPassphrase(char*, int, int, void* asked) {
  *static_cast<bool*>(asked) = true;
  return -1;
}

absl::StatusOr<Key> ReadKey(const PemFile& file) {
  absl::StatusOr<Bio> bio = Reader(file);
  if (!bio.ok()) return bio.status();
  bool asked = false;
  Key key(PEM_read_bio_PrivateKey(bio->get(), nullptr, &NoPassphrase, &asked));
  const std::string reason = OpensslReason();
  if (key) return key;
  if (asked) {
    return absl::InvalidArgumentError(
        Where(file) +
        " is encrypted; gRPC cannot ask for its passphrase (`openssl pkey -in KEY -out PLAIN` writes it "
        "unencrypted)");
  }
  return absl::InvalidArgumentError(absl::StrCat(Where(file), " holds no PEM private key that parses (", reason, ")"));
}

std::string TimeText(const ASN1_TIME* time) {
  Bio out(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(out.get(), time);
  char* data = nullptr;
  const long length = BIO_get_mem_data(out.get(), &data);
  return std::string(data, length > 0 ? static_cast<size_t>(length) : 0);
}

}  // namespace

absl::Status CheckCertificates(const PemFile& file) { return ReadCertificates(file).status(); }

absl::Status CheckKeyPair(const PemFile& chain, const PemFile& key) {
  absl::StatusOr<std::vector<Certificate>> certificates = ReadCertificates(chain);
  if (!certificates.ok()) return certificates.status();
  if (absl::StartsWith(key.text, "engine:")) return absl::OkStatus();
  absl::StatusOr<Key> private_key = ReadKey(key);
  if (!private_key.ok()) return private_key.status();
  X509* leaf = certificates->front().get();
  const bool matches = X509_check_private_key(leaf, private_key->get()) == 1;
  ERR_clear_error();
  if (!matches) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(key), " is not the private key of the first certificate in ", Where(chain)));
  }
  // Every peer refuses an expired certificate: the server would serve nothing, a client reach nothing.
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(chain), ": its first certificate expired on ", TimeText(X509_get0_notAfter(leaf))));
  }
  return absl::OkStatus();
}

std::vector<TokenLine> TokenLines(absl::string_view text) {
  absl::ConsumePrefix(&text, "\xEF\xBB\xBF");  // Windows editors write one; it would begin the first token
  std::vector<TokenLine> tokens;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty() && line[0] != '#') tokens.push_back({number, line});
  }
  return tokens;
}

}  // namespace attribution
