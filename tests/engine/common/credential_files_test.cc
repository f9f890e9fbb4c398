// SPDX-License-Identifier: Apache-2.0
// The credential files' checks on PEM texts made once by openssl (a certificate valid for 100 years and its
// key, an expired one, an encrypted key), and the bearer-tokens file format both ends read.
#include "engine/common/credential_files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

// openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -x509 -days 36500 -subj /CN=unit
constexpr char kCertificate[] = R"(-----BEGIN CERTIFICATE-----
MIIBdDCCARugAwIBAgIUEyIG3eT56QhAbLOIEEnR8ZSbH88wCgYIKoZIzj0EAwIw
DzENMAsGA1UEAwwEdW5pdDAgFw0yNjEyMDYxNTU2NDNaGA8yMTI2MTExMjE1NTY0
M1owDzENMAsGA1UEAwwEdW5pdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKc1
a/ZCQJkwrrzYx+hVRNL/SRqZCOodxeDwTiQkgCN/i3+Eq3B93w8jUcMQiqY5U64Z
f27wfShGCvJTgc32vbqjUzBRMB0GA1UdDgQWBBQX7b7rdfQbL8lMlcNSp+xf9IlR
tjAfBgNVHSMEGDAWgBQX7b7rdfQbL8lMlcNSp+xf9IlRtjAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0cAMEQCIBzoMP5d1AMzjcO9768KaZav2C52e7LDz1X9
MlmvI4YSAiBoKdlDbWx8NvZbFwxGMu/xtzoZVpO5GwkQeVH7X+I32w==
-----END CERTIFICATE-----
)";
constexpr char kKey[] = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgR28x+vI+yBw32ZrW
P6Y8UAznXRSErzxSfR7b3a4bxMKhRANCAASnNWv2QkCZMK682MfoVUTS/0kamQjq
HcXg8E4kJIAjf4t/hKtwfd8PI1HDEIqmOVOuGX9u8H0oRgryU4HN9r26
-----END PRIVATE KEY-----
)";
// Another key, and its certificate signed with -days -1: expired since the day it was made.
constexpr char kExpiredCertificate[] = R"(-----BEGIN CERTIFICATE-----
MIIBHTCBxQIUTzX6MiGqzZFtngnGGpeN0MdkH54wCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHZXhwaXJlZDAeFw0yNjEyMDYxNTU2NDVaFw0yNjEyMDUxNTU2NDVaMBIx
EDAOBgNVBAMMB2V4cGlyZWQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQkKEZU
3+PxBKtbFW/+s4DUBiX00Z9sBvC8rQ/s0Yfx37gLp/CCB5+Qth+gapWTk7fVytLG
iZDMvOTuwdDXj/aZMAoGCCqGSM49BAMCA0cAMEQCIAfyaEoq/y6amq6BzYkknKW1
vRBMKoHKb5hnKsi3DXxdAiARnXx8Mxy23r+KmnDOx1R9K5uHm9RizuBPeIKAxaoo
6A==
-----END CERTIFICATE-----
)";
constexpr char kOtherKey[] = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDY1gQnROhDVUYqjk
IsRCaQgX3QZ07RPwM9ziXlIdbGahRANCAAQkKEZU3+PxBKtbFW/+s4DUBiX00Z9s
BvC8rQ/s0Yfx37gLp/CCB5+Qth+gapWTk7fVytLGiZDMvOTuwdDXj/aZ
-----END PRIVATE KEY-----
)";
// openssl pkey -in KEY -aes256 (of kKey)
constexpr char kEncryptedKey[] = R"(-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAjL0Ql51zvpMwICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEHBXDinsRsricW+MsvAUSckEgZCu
q0Cbv0yvzRj/OI3KnVIguFOW+Fy233u5x6+GeHIjQGceP7SVLP3HGhydDqtq6Oi/
HgZIS99nSq/SZW9dWzzxQ0lQHL9gXl4RSrLJKwExL51CILwkUHn5cHBC9Ytn7cBj
Zm5VpRAn28u5nsGnmsBXZqzef4CdBpr3E6mE6X7F/0KO8qBK65cYsQu0LBFDflI=
-----END ENCRYPTED PRIVATE KEY-----
)";

PemFile Pem(const char* setting, const std::string& text) { return PemFile{setting, "f.pem", text}; }

TEST(CredentialFiles, CertificatesAndKeysAreCheckedAsGrpcReadsThem) {
  EXPECT_THAT(CheckKeyPair(Pem("cert", kCertificate), Pem("key", kKey)), IsOk());
  // A key beside its certificate in one file serves as both.
  const std::string both = std::string(kKey) + kCertificate;
  EXPECT_THAT(CheckKeyPair(Pem("cert", both), Pem("key", both)), IsOk());
  EXPECT_THAT(CheckKeyPair(Pem("cert", kCertificate), Pem("key", kOtherKey)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("key \"f.pem\" is not the private key of the first certificate in cert")));
  EXPECT_THAT(CheckKeyPair(Pem("cert", kCertificate), Pem("key", kEncryptedKey)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is encrypted")));
  EXPECT_THAT(CheckKeyPair(Pem("cert", kExpiredCertificate), Pem("key", kOtherKey)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("its first certificate expired on")));
  EXPECT_THAT(CheckKeyPair(Pem("cert", kKey), Pem("key", kCertificate)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cert \"f.pem\" holds no PEM certificate")));
  // A key held by an OpenSSL engine (a hardware key) is gRPC's to load.
  EXPECT_THAT(CheckKeyPair(Pem("cert", kCertificate), Pem("key", "engine:pkcs11:slot_0-id_1")), IsOk());
  // A bundle: gRPC keeps the certificates before a block that does not parse; a first one that does not is refused.
  const std::string garbled = "-----BEGIN CERTIFICATE-----\nnot base64 %%%\n-----END CERTIFICATE-----\n";
  EXPECT_THAT(CheckCertificates(Pem("ca", std::string(kCertificate) + garbled)), IsOk());
  EXPECT_THAT(CheckCertificates(Pem("ca", garbled + kCertificate)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("its first certificate does not parse")));
  EXPECT_THAT(CheckCertificates(Pem("ca", "")), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CredentialFiles, TokenLinesSkipBlankAndCommentLinesAByteOrderMarkAndSpace) {
  const std::vector<TokenLine> tokens = TokenLines("\xEF\xBB\xBF# comment\r\n\n  alpha \r\nbe ta\n#x\n\tgamma");
  ASSERT_EQ(tokens.size(), 3u);
  EXPECT_EQ(tokens[0].number, 3);
  EXPECT_EQ(tokens[0].token, "alpha");
  EXPECT_EQ(tokens[1].token, "be ta");
  EXPECT_EQ(tokens[2].number, 6);
  EXPECT_EQ(tokens[2].token, "gamma");
  EXPECT_TRUE(TokenLines("# only\n\n").empty());
}

}  // namespace
}  // namespace attribution
