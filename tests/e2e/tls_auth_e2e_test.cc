// SPDX-License-Identifier: Apache-2.0
// TLS, mutual TLS and bearer-token auth with certificates made at test time by openssl: the right
// credentials are served, wrong or missing ones are refused.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "client/attribution_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using client::AttributionClient;
using client::ClientOptions;
using test_support::ServerProcess;
using ::testing::HasSubstr;

// A CA, a server certificate for localhost/127.0.0.1 and a client certificate it signed, plus a
// client certificate from another CA that the server must not trust.
class Certificates {
 public:
  Certificates() {
    const std::string script = R"(set -e; cd ")" + dir_.path() + R"(";
key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" "${@:2}" 2>/dev/null; }
key ca -x509 -days 1 -subj /CN=test-ca -out ca.pem
key rogue-ca -x509 -days 1 -subj /CN=rogue-ca -out rogue-ca.pem
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
key server -subj /CN=localhost -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.pem 2>/dev/null
key client -subj /CN=client -out client.csr
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem 2>/dev/null
key rogue -subj /CN=rogue -out rogue.csr
openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 1 -out rogue.pem 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days -1 -extfile san.ext -out expired.pem 2>/dev/null
openssl pkey -in server.key -aes256 -passout pass:secret -out encrypted.key
printf '# tokens\nsecret-token-1\n\nsecret-token-2\n' > tokens)";
    ok_ = std::system(("bash -c '" + Escape(script) + "'").c_str()) == 0;
  }
  bool ok() const { return ok_; }
  std::string File(const std::string& name) const { return dir_.File(name); }

 private:
  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out;
  }
  test_support::TempDir dir_;
  bool ok_ = false;
};

absl::Status ListModelsWith(const std::string& address, ClientOptions options) {
  options.target = address;
  options.max_attempts = 1;
  options.timeout = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<AttributionClient>> client = AttributionClient::Connect(options);
  if (!client.ok()) return client.status();
  return (*client)->ListModels().status();
}

TEST(TlsAndAuth, MutualTlsWithTokensServesOnlyTheRightCredentials) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << "openssl failed";
  auto server =
      ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--tls_cert=" + certs.File("server.pem"),
                            "--tls_key=" + certs.File("server.key"), "--tls_client_ca=" + certs.File("ca.pem"),
                            "--auth_tokens_file=" + certs.File("tokens")});
  ASSERT_THAT(server, IsOk());
  const std::string address = "localhost:" + std::to_string((*server)->port());
  const ClientOptions good{.tls = true,
                           .ca_file = certs.File("ca.pem"),
                           .cert_file = certs.File("client.pem"),
                           .key_file = certs.File("client.key"),
                           .bearer_token = "secret-token-2"};
  EXPECT_THAT(ListModelsWith(address, good), IsOk());

  ClientOptions wrong_token = good;
  wrong_token.bearer_token = "secret-token-3";
  absl::Status s = ListModelsWith(address, wrong_token);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("not valid")));
  EXPECT_EQ(s.message().find("secret-token-3"), std::string::npos) << "the token must not be echoed";

  ClientOptions no_token = good;
  no_token.bearer_token.clear();
  s = ListModelsWith(address, no_token);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("authorization")));

  ClientOptions no_client_cert = good;
  no_client_cert.cert_file.clear();
  no_client_cert.key_file.clear();
  EXPECT_THAT(ListModelsWith(address, no_client_cert), StatusIs(absl::StatusCode::kUnavailable));

  ClientOptions rogue_cert = good;
  rogue_cert.cert_file = certs.File("rogue.pem");
  rogue_cert.key_file = certs.File("rogue.key");
  EXPECT_THAT(ListModelsWith(address, rogue_cert), StatusIs(absl::StatusCode::kUnavailable));

  ClientOptions untrusted_server = good;
  untrusted_server.ca_file = certs.File("rogue-ca.pem");
  EXPECT_THAT(ListModelsWith(address, untrusted_server), StatusIs(absl::StatusCode::kUnavailable));

  ClientOptions plaintext = good;
  plaintext.tls = false;
  plaintext.ca_file = plaintext.cert_file = plaintext.key_file = plaintext.tls_server_name = "";
  EXPECT_THAT(ListModelsWith(address, plaintext), StatusIs(absl::StatusCode::kUnavailable));

  // Health stays open to probes that carry no token (Kubernetes gRPC probes cannot send one)... over TLS.
  auto prober = *AttributionClient::Connect({.target = address,
                                             .tls = true,
                                             .ca_file = certs.File("ca.pem"),
                                             .cert_file = certs.File("client.pem"),
                                             .key_file = certs.File("client.key")});
  EXPECT_EQ(*prober->Health(), "SERVING");
}

// gRPC's traces, which an operator turns on with GRPC_TRACE to debug a connection, wrote every client's bearer token
// into the log (the HPACK parser's "authorization: Bearer ...", the tcp trace's byte dumps), 4 lines a call,
// accepted and refused tokens alike. Plaintext here, so that the tcp trace dumps the headers' bytes.
TEST(TlsAndAuth, GrpcTracesLeaveBearerTokensOutOfTheLog) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << "openssl failed";
  auto server = ServerProcess::Start(
      {"--model=demo=" + test_support::DemoModelDir(), "--auth_tokens_file=" + certs.File("tokens")},
      absl::Seconds(120), {.environment = {"GRPC_TRACE=chttp2_hpack_parser,tcp,http", "GRPC_VERBOSITY=DEBUG"}});
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT(ListModelsWith((*server)->address(), {.bearer_token = "secret-token-2"}), IsOk());
  EXPECT_THAT(ListModelsWith((*server)->address(), {.bearer_token = "wrong-token-9"}),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // As other clients may spell it: the scheme in lower case, two spaces, a quote and a space in the token.
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.AddMetadata("authorization", "bearer  odd'tok en\"x");
  grpc::health::v1::HealthCheckResponse health;
  EXPECT_TRUE(grpc::health::v1::Health::NewStub(channel)->Check(&context, {}, &health).ok());
  const std::string log = (*server)->Log();
  EXPECT_THAT(log, HasSubstr("<redacted: a bearer token"));  // the trace ran, and its lines say where a token was
  for (const char* token : {"secret-token-2", "wrong-token-9", "odd'tok", "tok en", "en\"x"}) {
    EXPECT_EQ(log.find(token), std::string::npos) << token;
    std::string hex;  // as a byte dump writes it
    for (const char* c = token; *c != '\0'; ++c) absl::StrAppendFormat(&hex, "%02x ", *c);
    EXPECT_EQ(absl::AsciiStrToLower(log).find(hex), std::string::npos) << hex;
  }
}

TEST(TlsAndAuth, ServerOnlyTlsAcceptsAnyClientThatTrustsIt) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << "openssl failed";
  auto server =
      ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--tls_cert=" + certs.File("server.pem"),
                            "--tls_key=" + certs.File("server.key")});
  ASSERT_THAT(server, IsOk());
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  EXPECT_THAT(ListModelsWith(address, {.tls = true, .ca_file = certs.File("ca.pem")}), IsOk());
  EXPECT_THAT(ListModelsWith(address, {.tls = false}), StatusIs(absl::StatusCode::kUnavailable));
}

// gRPC took a key of another certificate, an encrypted key or an expired certificate without a word: the
// server passed --check_config and then failed to listen ("cannot listen on ADDR"), or served a certificate
// every client refuses; a client failed each call "UNAVAILABLE: empty address list". Both ends now name the
// file at fault before anything connects.
TEST(TlsAndAuth, CertificatesAndKeysThatCannotWorkAreNamedBeforeAnythingConnects) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << "openssl failed";
  const std::string cert = certs.File("server.pem"), key = certs.File("server.key");
  const std::pair<std::vector<std::string>, std::string> server_cases[] = {
      {{"--tls_cert=" + cert, "--tls_key=" + certs.File("client.key")},
       "tls key_file \"" + certs.File("client.key") +
           "\" is not the private key of the first certificate in tls "
           "cert_file \"" +
           cert + "\""},
      {{"--tls_cert=" + cert, "--tls_key=" + certs.File("encrypted.key")}, "is encrypted"},
      {{"--tls_cert=" + certs.File("expired.pem"), "--tls_key=" + key}, "its first certificate expired on"},
      {{"--tls_cert=" + key, "--tls_key=" + cert}, "tls cert_file \"" + key + "\" holds no PEM certificate"},
      {{"--tls_cert=" + cert, "--tls_key=" + key, "--tls_client_ca=" + key},
       "tls client_ca_file \"" + key + "\" holds no PEM certificate"},
  };
  for (const auto& [flags, message] : server_cases) {
    std::vector<std::string> args = flags;
    args.push_back("--check_config");
    auto [code, log] = ServerProcess::RunToExit(args, absl::Seconds(60));
    EXPECT_EQ(code, 1) << log;
    EXPECT_THAT(log, HasSubstr(message)) << log;
  }
  auto [code, log] =
      ServerProcess::RunToExit({"--tls_cert=" + cert, "--tls_key=" + key, "--check_config"}, absl::Seconds(60));
  EXPECT_EQ(code, 0) << log;

  const ClientOptions good{.target = "localhost:1",
                           .tls = true,
                           .ca_file = certs.File("ca.pem"),
                           .cert_file = certs.File("client.pem"),
                           .key_file = certs.File("client.key")};
  EXPECT_THAT(AttributionClient::Connect(good), IsOk());
  ClientOptions other_key = good, swapped = good, key_as_ca = good, encrypted = good;
  other_key.key_file = certs.File("rogue.key");
  swapped.cert_file = good.key_file;
  swapped.key_file = good.cert_file;
  key_as_ca.ca_file = good.key_file;
  encrypted.cert_file = cert;
  encrypted.key_file = certs.File("encrypted.key");
  for (const auto& [options, message] :
       {std::pair{other_key, "key_file \"" + other_key.key_file + "\" is not the private key"},
        std::pair{swapped, "cert_file \"" + swapped.cert_file + "\" holds no PEM certificate"},
        std::pair{key_as_ca, "ca_file \"" + key_as_ca.ca_file + "\" holds no PEM certificate"},
        std::pair{encrypted, "key_file \"" + encrypted.key_file + "\" is encrypted"}}) {
    EXPECT_THAT(AttributionClient::Connect(options).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(message)));
  }
}

}  // namespace
}  // namespace attribution
