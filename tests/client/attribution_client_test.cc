// SPDX-License-Identifier: Apache-2.0
// The client (client/attribution_client.h) against a fake server on loopback that sends malformed
// responses: every RPC, unary or streamed, fails with the mapping's DATA_LOSS instead of handing the
// caller a result its renderers would index out of bounds; a well-formed response still maps.
#include "client/attribution_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "tests/testing/fake_attribution_service.h"
#include "tests/testing/status_matchers.h"

namespace attribution::client {
namespace {

namespace v1 = ::attribution::v1;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

constexpr absl::StatusCode kDataLoss = absl::StatusCode::kDataLoss;

class AttributionClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.ok());
    absl::StatusOr<std::unique_ptr<AttributionClient>> client =
        AttributionClient::Connect({.target = server_.address(), .max_attempts = 1});
    ASSERT_THAT(client, IsOk());
    client_ = std::move(*client);
  }
  void TearDown() override { client_.reset(); }

  test_support::FakeAttributionServer server_;
  test_support::FakeAttributionService& service_ = server_.service;
  std::unique_ptr<AttributionClient> client_;
};

// A bearer token gRPC metadata cannot carry (gRPC aborts the process on one) is refused by Connect and by
// ReadBearerTokenFile, naming it, and the process lives on.
TEST(AttributionClientConnect, RefusesABearerTokenOutsidePrintableAscii) {
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .bearer_token = "secr\xc3\xa9t"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bearer_token: byte 4 (0xc3)")));
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .bearer_token = "tab\there"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bearer_token: byte 3 (0x09)")));
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .bearer_token = "s3cret-token_~"}), IsOk());
  const std::string path = ::testing::TempDir() + "/token_with_a_tab";
  {
    std::ofstream file(path);
    file << "tab\there\nsecond line\n";
  }
  EXPECT_THAT(ReadBearerTokenFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(path + ": the token: byte 3 (0x09)")));
}

// --token_file sent a first line of "# token for prod" as the token; a file in the server's tokens-file format
// (blank and # lines, surrounding whitespace, a byte-order mark) gives its first token.
TEST(AttributionClientConnect, ATokenFileReadsAsTheServersTokensFileDoes) {
  const std::string path = ::testing::TempDir() + "/token_after_a_comment";
  std::ofstream(path) << "\xEF\xBB\xBF# token for prod\n\n  s3cret-token \r\nsecond\n";
  absl::StatusOr<std::string> token = ReadBearerTokenFile(path);
  ASSERT_THAT(token, IsOk());
  EXPECT_EQ(*token, "s3cret-token");
  std::ofstream(path) << "# only a comment\n\n";
  EXPECT_THAT(ReadBearerTokenFile(path), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holds no token")));
}

// An empty address reached gRPC, which failed with "Failed to create secure client channel", naming nothing.
TEST(AttributionClientConnect, RefusesAnEmptyTargetNamingIt) {
  for (const std::string target : {"", "  "}) {
    EXPECT_THAT(AttributionClient::Connect({.target = target}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("target: no server address given")));
  }
}

// Certificate options without tls connected in plaintext, the files unread; half a key pair failed on
// reading "" without naming the option missing.
TEST(AttributionClientConnect, RefusesCertificateOptionsWithoutTlsAndHalfAKeyPair) {
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .ca_file = "/nonexistent/ca.pem"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ca_file: given without tls")));
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .tls_server_name = "localhost"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls_server_name: given without tls")));
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .tls = true, .cert_file = "/tmp/client.pem"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cert_file: give cert_file and key_file")));
  EXPECT_THAT(AttributionClient::Connect({.target = "127.0.0.1:1", .tls = true, .key_file = "/tmp/client.key"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key_file: give cert_file and key_file")));
}

// One feature and no value for it.
v1::AttributeResponse AttributionWithoutSequence() {
  v1::AttributeResponse r;
  r.add_prompt_tokens()->set_text("Is");
  r.add_features()->set_token_end(1);
  return r;
}

TEST_F(AttributionClientTest, AttributeFailsWithDataLossOnAMalformedResponse) {
  service_.attribute = AttributionWithoutSequence();
  EXPECT_THAT(client_->Attribute({.model = "demo", .prompt = "Is", .target = " No"}),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.sequence_attribution: 0 values, expected 1")));
}

TEST_F(AttributionClientTest, AttributeStreamFailsWithDataLossOnAMalformedResult) {
  service_.attribute = AttributionWithoutSequence();
  EXPECT_THAT(client_->AttributeStream({.model = "demo", .prompt = "Is", .target = " No"}, nullptr),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.sequence_attribution")));
}

TEST_F(AttributionClientTest, AttributeComponentsFailsWithDataLossOnAMalformedResult) {
  v1::ComponentGrid* grid = service_.components.add_grids();
  grid->add_shape(2);
  grid->add_shape(3);
  grid->add_axes("layer");
  grid->add_axes("head");
  grid->add_values(1);  // of 6
  EXPECT_THAT(client_->AttributeComponents({.model = "demo", .pairs = {{.clean = "a", .corrupted = "b"}}}),
              StatusIs(kDataLoss, HasSubstr("AttributeComponentsResponse.grids[0].values: 1 values")));
}

TEST_F(AttributionClientTest, GetLogprobsFailsWithDataLossOnAMalformedResponse) {
  service_.logprobs.add_target();  // without its token
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target = " No"}),
              StatusIs(kDataLoss, HasSubstr("LogprobsResponse.target[0].token")));
}

TEST_F(AttributionClientTest, ListModelsFailsWithDataLossOnAMalformedResponse) {
  service_.models.add_models();  // without a name
  EXPECT_THAT(client_->ListModels(), StatusIs(kDataLoss, HasSubstr("ListModelsResponse.models[0].name")));
}

// A string field that is not UTF-8 stops protobuf's parse there, and gRPC's callback unary call kept the
// message cut short under an OK status: every field after it read as empty (the seed 0, the text "",
// every limit 0), exit 0. Every RPC now fails with DATA_LOSS naming the method and the message.
TEST_F(AttributionClientTest, UnaryAnswersThatDoNotParseFailWithDataLoss) {
  v1::Token* token = service_.generate.add_tokens();
  token->set_id(50);
  token->set_text("\xff\xfe");  // serialized all the same (protobuf only logs it), as a buggy server might
  service_.generate.set_text("after the bad field");
  service_.generate.set_seed(7);
  EXPECT_THAT(client_->Generate({.model = "demo", .prompt = "Is"}),
              StatusIs(kDataLoss, HasSubstr("/attribution.v1.AttributionService/Generate")));
  v1::ModelInfo* model = service_.models.add_models();
  model->set_name("\xc3");
  model->set_architecture("llama");
  EXPECT_THAT(client_->ListModels(), StatusIs(kDataLoss, HasSubstr("attribution.v1.ListModelsResponse")));
  v1::TokenLogprob* scored = service_.logprobs.add_target();
  scored->mutable_token()->set_text("\x80");
  scored->mutable_token()->set_log_prob(-0.5);
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target = " No"}), StatusIs(kDataLoss));
  service_.attribute.add_prompt_tokens()->set_text("\xc0\x80");
  service_.attribute.add_sequence_attribution(1.0);
  EXPECT_THAT(client_->Attribute({.model = "demo", .prompt = "Is", .target = " No"}), StatusIs(kDataLoss));
  // A stream's event that does not parse ended the read as if the stream had, and the call then waited
  // for its deadline: now it is cancelled at once and fails with DATA_LOSS.
  EXPECT_THAT(client_->AttributeStream({.model = "demo", .prompt = "Is", .target = " No"}, nullptr),
              StatusIs(kDataLoss, HasSubstr("/attribution.v1.AttributionService/AttributeStream")));
  EXPECT_THAT(client_->GenerateStream({.model = "demo", .prompt = "Is"}, nullptr),
              StatusIs(kDataLoss, HasSubstr("attribution.v1.GenerateEvent")));
}

// Answers with a well-formed shape that do not answer the request (a server answering another call, or computing
// what no model computes) were results: a data-set job recorded them as ok (round 19's crafted server).
TEST_F(AttributionClientTest, AnswersThatDoNotAnswerTheRequestFailWithDataLoss) {
  service_.attribute.set_method(v1::FEATURE_ABLATION);
  service_.attribute.add_target_tokens()->set_id(8);
  const AttributeOptions ig{.model = "demo", .prompt = "Is", .target = " No"};
  EXPECT_THAT(client_->Attribute(ig), StatusIs(kDataLoss, HasSubstr("AttributeResponse.method: FEATURE_ABLATION, "
                                                                    "asked for INTEGRATED_GRADIENTS")));
  EXPECT_THAT(client_->AttributeStream(ig, nullptr), StatusIs(kDataLoss, HasSubstr("AttributeResponse.method")));
  AttributeOptions ablation{.model = "demo", .prompt = "Is", .target_ids = {8, 9}, .method = "feature_ablation"};
  EXPECT_THAT(client_->Attribute(ablation),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.target_tokens: ids [8], asked for [8, 9]")));
  ablation.target_ids = {8};
  EXPECT_THAT(client_->Attribute(ablation), IsOk());
  service_.attribute.mutable_target_tokens(0)->set_log_prob(5);
  EXPECT_THAT(client_->Attribute(ablation),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.target_tokens[0].log_prob = 5: a log-probability is "
                                            "at most 0")));
  service_.attribute.mutable_target_tokens(0)->set_log_prob(std::nanf(""));  // --allow_nonfinite_weights computes it
  EXPECT_THAT(client_->Attribute(ablation), IsOk());
  service_.attribute.clear_target_tokens();
  EXPECT_THAT(client_->Attribute({.model = "demo", .prompt = "Is", .target = " No", .method = "feature_ablation"}),
              StatusIs(kDataLoss, HasSubstr("AttributeResponse.target_tokens: no target token")));

  v1::TokenLogprob* scored = service_.logprobs.add_target();
  scored->mutable_token()->set_id(4);
  scored->mutable_token()->set_log_prob(-0.5);
  scored->add_top()->set_log_prob(-0.25);
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target = " No"}),
              StatusIs(kDataLoss, HasSubstr("LogprobsResponse.target[0].top: 1 alternatives, asked for top_k = 0")));
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target_ids = {4}, .top_k = 1}), IsOk());
  scored->mutable_top(0)->set_log_prob(0.5);
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target_ids = {4}, .top_k = 1}),
              StatusIs(kDataLoss, HasSubstr("LogprobsResponse.target[0].top[0].log_prob = 0.5")));
  scored->mutable_top(0)->set_log_prob(-0.75);
  service_.logprobs.set_total_log_prob(3);
  EXPECT_THAT(client_->GetLogprobs({.model = "demo", .prompt = "Is", .target_ids = {4}, .top_k = 1}),
              StatusIs(kDataLoss, HasSubstr("LogprobsResponse.total_log_prob = 3")));

  for (int id : {5, 6, 7}) service_.generate.add_tokens()->set_id(id);
  const GenerateOptions two{.model = "demo", .prompt = "Is", .generation = {.max_new_tokens = 2}};
  EXPECT_THAT(client_->Generate(two),
              StatusIs(kDataLoss, HasSubstr("GenerateResponse.tokens: 3 tokens, asked for max_new_tokens = 2")));
  EXPECT_THAT(client_->GenerateStream(two, nullptr), StatusIs(kDataLoss, HasSubstr("max_new_tokens = 2")));
  EXPECT_THAT(client_->Generate({.model = "demo", .prompt = "Is"}), IsOk());  // the server's default: not checked
}

// A data-set job counted a row the client refused before sending as an attempt, and an operator grepping the
// server log for its request id found nothing: such refusals say so.
TEST_F(AttributionClientTest, RefusalsBeforeSendingAreMarked) {
  const absl::StatusOr<Attribution> refused =
      client_->Attribute({.model = "demo", .prompt = "Is", .target = " No", .method = "bogus"});
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("method")));
  EXPECT_TRUE(RefusedBeforeSending(refused.status()));
  service_.logprobs.add_target();  // without its token: refused after the server answered
  const absl::StatusOr<Logprobs> answered = client_->GetLogprobs({.model = "demo", .prompt = "Is", .target = " No"});
  EXPECT_THAT(answered, StatusIs(kDataLoss));
  EXPECT_FALSE(RefusedBeforeSending(answered.status()));
}

// A gRPC server without the service (a wrong port) answered every call with a bare "Method not found!", which the
// CLI and the load generator printed as it was.
TEST(AttributionClientForeignServer, CallsNameTheServerAndWhatItLacks) {
  test_support::FakeAttributionServer other(/*serve_attribution=*/false);
  ASSERT_TRUE(other.ok());
  absl::StatusOr<std::unique_ptr<AttributionClient>> client =
      AttributionClient::Connect({.target = other.address(), .max_attempts = 1});
  ASSERT_THAT(client, IsOk());
  const std::string lacks = other.address() + " does not serve /attribution.v1.AttributionService/";
  EXPECT_THAT((*client)->ListModels(), StatusIs(absl::StatusCode::kUnimplemented,
                                                HasSubstr(lacks + "ListModels (no attribution server, or one older "
                                                                  "than this client): Method not found!")));
  EXPECT_THAT((*client)->AttributeStream({.model = "demo", .prompt = "Is", .target = " No"}, nullptr),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr(lacks + "AttributeStream")));
}

// Destroying a client with async calls in flight dropped the channel's last reference on a gRPC thread, which
// joined itself: a segfault or "double free" in 8 of 8 runs (grpc/grpc#32584). Its calls are now cancelled and
// released first; and the server stopped computing nothing for calls whose client was gone.
TEST(AttributionClientLifetime, DestroyingAClientCancelsItsCallsInFlight) {
  test_support::FakeAttributionServer server;
  ASSERT_TRUE(server.ok());
  server.service.attribute_delay_ms = 2000;
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<std::unique_ptr<AttributionClient>> client =
        AttributionClient::Connect({.target = server.address(), .max_attempts = 1});
    ASSERT_THAT(client, IsOk());
    absl::Mutex mu;
    std::vector<absl::StatusCode> codes;
    for (int i = 0; i < 4; ++i) {
      (*client)->AttributeAsync({.model = "demo", .prompt = "Is", .target = " No"}, [&](absl::StatusOr<Attribution> r) {
        absl::MutexLock lock(&mu);
        codes.push_back(r.status().code());
      });
    }
    absl::SleepFor(absl::Milliseconds(200));
    client->reset();
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](std::vector<absl::StatusCode>* c) { return c->size() == 4; }, &codes),
                                    absl::Seconds(30)));
    for (absl::StatusCode code : codes) EXPECT_EQ(code, absl::StatusCode::kCancelled);
  }
}

// A done callback may destroy its client; a sync call inside a callback waited for the gRPC threads the callback
// held (two such callbacks: forever, past every deadline) and now fails at once.
TEST(AttributionClientLifetime, CallbacksMayDestroyTheClientButNotWaitOnIt) {
  test_support::FakeAttributionServer server;
  ASSERT_TRUE(server.ok());
  server.service.models.add_models()->set_name("demo");
  for (int round = 0; round < 5; ++round) {
    absl::StatusOr<std::unique_ptr<AttributionClient>> connected =
        AttributionClient::Connect({.target = server.address(), .max_attempts = 1});
    ASSERT_THAT(connected, IsOk());
    std::unique_ptr<AttributionClient> client = std::move(*connected);
    absl::Notification done;
    absl::Status inner;
    client->ListModelsAsync([&](absl::StatusOr<std::vector<ModelInfo>> models) {
      EXPECT_THAT(models, IsOk());
      inner = client->ListModels().status();
      client.reset();
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_THAT(inner, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("make the Async call there")));
  }
}

// A callback that captures the client (a shared_ptr, as shared_from_this() code does) may hold its last reference:
// released on a gRPC thread after a done callback it aborted the process ("prior > 0"); released with a progress or
// on_token callback, the client's destructor waited for that very call forever.
TEST(AttributionClientLifetime, ACallbackHoldingTheClientsLastReferenceEndsItCleanly) {
  test_support::FakeAttributionServer server;
  ASSERT_TRUE(server.ok());
  server.service.models.add_models()->set_name("demo");
  server.service.generate.add_tokens()->set_id(5);
  for (const std::string kind : {"unary done", "stream done", "on_token", "progress"}) {
    for (int round = 0; round < 5; ++round) {
      SCOPED_TRACE(kind);
      absl::StatusOr<std::unique_ptr<AttributionClient>> connected =
          AttributionClient::Connect({.target = server.address(), .max_attempts = 1});
      ASSERT_THAT(connected, IsOk());
      std::shared_ptr<AttributionClient> client(std::move(*connected));
      auto finished = std::make_shared<absl::Notification>();
      const GenerateOptions generate{.model = "demo", .prompt = "Is"};
      if (kind == "unary done") {
        client->ListModelsAsync([client, finished](absl::StatusOr<std::vector<ModelInfo>>) { finished->Notify(); });
      } else if (kind == "stream done") {
        client->GenerateStreamAsync(generate, nullptr,
                                    [client, finished](absl::StatusOr<Generation>) { finished->Notify(); });
      } else if (kind == "on_token") {
        client->GenerateStreamAsync(
            generate, [client](const Token&) {}, [finished](absl::StatusOr<Generation>) { finished->Notify(); });
      } else {
        client->AttributeComponentsAsync(
            {.model = "demo", .pairs = {{"a b", "a c"}}}, [client](int64_t, int64_t) {},
            [finished](absl::StatusOr<ComponentAttribution>) { finished->Notify(); });
      }
      client.reset();
      ASSERT_TRUE(finished->WaitForNotificationWithTimeout(absl::Seconds(30)));
    }
  }
}

// Options gRPC would take for others: a deadline of 0 or less (every call DEADLINE_EXCEEDED, naming nothing), an
// attempt count clamped to [1, 5], backoffs out of order, a port read modulo 2^16 (":112636" reached 47100).
TEST(AttributionClientConnect, RefusesOptionsGrpcWouldTakeForOthers) {
  const auto refused = [](ClientOptions options, const std::string& message) {
    EXPECT_THAT(AttributionClient::Connect(options), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(message)));
  };
  refused({.target = "127.0.0.1:1", .timeout = absl::ZeroDuration()}, "timeout: 0 would expire every call at once");
  refused({.target = "127.0.0.1:1", .timeout = absl::Seconds(-5)}, "timeout: -5s");
  refused({.target = "127.0.0.1:1", .max_attempts = 0}, "max_attempts: 0 is outside [1, 5]");
  refused({.target = "127.0.0.1:1", .max_attempts = 100}, "max_attempts: 100 is outside [1, 5]");
  refused({.target = "127.0.0.1:1", .initial_backoff = absl::Seconds(3), .max_backoff = absl::Seconds(2)},
          "initial_backoff: 3s is above max_backoff (2s)");
  refused({.target = "127.0.0.1:112636"}, "target: port 112636 is outside [1, 65535]");
  refused({.target = "dns:///localhost:0"}, "target: port 0 is outside [1, 65535]");
  for (const std::string target :
       {"127.0.0.1:65535", "[::1]:50051", "dns:///localhost:50051", "localhost", "unix:/tmp/attribution:99999"}) {
    EXPECT_THAT(AttributionClient::Connect({.target = target, .timeout = absl::InfiniteDuration()}), IsOk()) << target;
  }
}

// The C++ API had one deadline for every call (ClientOptions::timeout) and no way to end one call: a service that
// embeds the client could not give an interactive call 2 s beside a 10-minute attribution, nor stop the work of a
// user who left (Python had both). A call's options now carry a timeout and a Cancellation.
TEST_F(AttributionClientTest, ACallsTimeoutReplacesTheClientsForThatCallOnly) {
  service_.attribute_delay_ms = 1500;
  const absl::Time start = absl::Now();
  EXPECT_THAT(
      client_->Attribute({.model = "demo", .prompt = "Is", .target = " No", .timeout = absl::Milliseconds(100)}),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));

  absl::StatusOr<std::unique_ptr<AttributionClient>> hasty =
      AttributionClient::Connect({.target = server_.address(), .timeout = absl::Milliseconds(100), .max_attempts = 1});
  ASSERT_THAT(hasty, IsOk());
  service_.attribute_delay_ms = 300;
  EXPECT_THAT((*hasty)->Attribute({.model = "demo", .prompt = "Is", .target = " No"}),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  const absl::StatusOr<Attribution> patient =
      (*hasty)->Attribute({.model = "demo", .prompt = "Is", .target = " No", .timeout = absl::Seconds(30)});
  EXPECT_NE(patient.status().code(), absl::StatusCode::kDeadlineExceeded) << patient.status();
  EXPECT_NE((*hasty)
                ->Attribute({.model = "demo", .prompt = "Is", .target = " No", .timeout = absl::InfiniteDuration()})
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);

  for (absl::Duration bad : {absl::ZeroDuration(), absl::Seconds(-1)}) {
    const absl::StatusOr<Logprobs> refused =
        client_->GetLogprobs({.model = "demo", .prompt = "Is", .target = " No", .timeout = bad});
    EXPECT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("timeout: ")));
    EXPECT_TRUE(RefusedBeforeSending(refused.status()));
  }
}

TEST_F(AttributionClientTest, ACancellationEndsItsCallsAndNoOther) {
  service_.attribute_delay_ms = 1500;
  auto cancellation = std::make_shared<Cancellation>();
  absl::Mutex mu;
  std::vector<absl::Status> cancelled_calls;
  std::optional<absl::Status> other_call;
  const AttributeOptions options{.model = "demo", .prompt = "Is", .target = " No", .cancellation = cancellation};
  client_->AttributeAsync(options, [&](absl::StatusOr<Attribution> r) {
    absl::MutexLock lock(&mu);
    cancelled_calls.push_back(r.status());
  });
  client_->AttributeStreamAsync(options, nullptr, [&](absl::StatusOr<Attribution> r) {
    absl::MutexLock lock(&mu);
    cancelled_calls.push_back(r.status());
  });
  client_->AttributeAsync({.model = "demo", .prompt = "Is", .target = " No"}, [&](absl::StatusOr<Attribution> r) {
    absl::MutexLock lock(&mu);
    other_call = r.status();
  });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time cancelled_at = absl::Now();
  cancellation->Cancel();
  EXPECT_TRUE(cancellation->cancelled());
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](std::vector<absl::Status>* c) { return c->size() == 2; }, &cancelled_calls),
                                    absl::Seconds(30)));
    EXPECT_LT(absl::Now() - cancelled_at, absl::Milliseconds(1000));  // not the server's 1.5 s
    for (const absl::Status& status : cancelled_calls) EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](std::optional<absl::Status>* s) { return s->has_value(); }, &other_call),
                                    absl::Seconds(30)));
    EXPECT_NE(other_call->code(), absl::StatusCode::kCancelled) << *other_call;
  }
  // Calls made after Cancel() are not sent.
  const int received = service_.attribute_calls.load();
  const absl::StatusOr<Attribution> late = client_->Attribute(options);
  EXPECT_THAT(late, StatusIs(absl::StatusCode::kCancelled, HasSubstr("cancellation: cancelled before")));
  EXPECT_TRUE(RefusedBeforeSending(late.status()));
  EXPECT_EQ(service_.attribute_calls.load(), received);
}

TEST_F(AttributionClientTest, GenerateMapsAWellFormedResponse) {
  v1::Token* token = service_.generate.add_tokens();
  token->set_id(50);
  token->set_text(" No");
  service_.generate.set_text(" No");
  absl::StatusOr<Generation> unary = client_->Generate({.model = "demo", .prompt = "Is"});
  ASSERT_THAT(unary, IsOk());
  EXPECT_EQ(unary->text, " No");
  std::string streamed;
  absl::StatusOr<Generation> stream =
      client_->GenerateStream({.model = "demo", .prompt = "Is"}, [&](const Token& t) { streamed += t.text; });
  ASSERT_THAT(stream, IsOk());
  ASSERT_EQ(stream->tokens.size(), 1u);
  EXPECT_EQ(stream->tokens[0].id, 50);
  EXPECT_EQ(streamed, " No");
}

}  // namespace
}  // namespace attribution::client
