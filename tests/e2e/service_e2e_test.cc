// SPDX-License-Identifier: Apache-2.0
// End to end over loopback: the real server binary on the demo model, every RPC through the client
// library, results compared with the engine run directly in this process (the wire must add nothing),
// concurrency, cancellation and deadlines, metrics, drain on SIGTERM, startup failures and retries.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "attribution/v1/attribution.grpc.pb.h"
#include "client/attribution_client.h"
#include "engine/attribution/attributor.h"
#include "engine/attribution/faithfulness.h"
#include "engine/tokenizer/tokenizer.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using client::AttributeOptions;
using client::Attribution;
using client::AttributionClient;
using test_support::DemoModelDir;
using test_support::MetricValue;
using test_support::ServerProcess;
using test_support::WaitForQueuedRows;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kPrompt[] = "Is it true that vaccines cause autism?";
constexpr char kTarget[] = " No";

std::unique_ptr<AttributionClient> Connect(const std::string& address, client::ClientOptions options = {}) {
  options.target = address;
  return std::move(*AttributionClient::Connect(options));
}

// The same model, tokenizer and attribution engine, in this process.
class DirectEngine {
 public:
  DirectEngine() {
    model_ = std::move(*engine::CausalLM::Load(DemoModelDir(), {}));
    tokenizer_ = std::move(*engine::Tokenizer::Load(DemoModelDir()));
    engine_ = std::move(*engine::BatchingEngine::Create(engine::MakeModelExecutor(model_), {}));
    attributor_ = std::make_unique<engine::Attributor>(model_, engine_.get());
  }
  std::vector<int64_t> Encode(const std::string& text, bool special) { return tokenizer_->Encode(text, special)->ids; }
  engine::AttributionResult Attribute(engine::AttributionRequest request) {
    return *attributor_->AttributeAndWait(request);
  }

 private:
  std::shared_ptr<const engine::CausalLM> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<engine::BatchingEngine> engine_;
  std::unique_ptr<engine::Attributor> attributor_;
};

// Attributions of the same request agree to float32 rounding of the log-probs behind them (perturbation
// methods difference log-probs of magnitude ~10: rounding ~1e-6 each), however the rows were batched.
void ExpectSameValues(const std::vector<double>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], 1e-5 * (1 + std::fabs(expected[i]))) << i;
}

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto started = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
    ASSERT_THAT(started, IsOk());
    server_ = started->release();
  }
  static void TearDownTestSuite() { delete server_; }
  static ServerProcess* server_;
};
ServerProcess* ServiceTest::server_ = nullptr;

TEST_F(ServiceTest, HealthAndModelsDescribeTheServer) {
  auto client = Connect(server_->address());
  EXPECT_EQ(*client->Health(), "SERVING");
  auto models = client->ListModels();
  ASSERT_THAT(models, IsOk());
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].name, "demo");
  EXPECT_EQ((*models)[0].architecture, "llama");
  EXPECT_EQ((*models)[0].num_layers, 2);
  EXPECT_GT((*models)[0].resident_weight_bytes, 0);
  EXPECT_EQ((*models)[0].max_top_k, 20);
  // The limits requests are refused by: the engine's rows per request (EngineOptions), choices (AttributionLimits).
  EXPECT_EQ((*models)[0].max_rows, int64_t{1} << 16);
  EXPECT_EQ((*models)[0].max_pairs, 64);
  EXPECT_EQ((*models)[0].max_queued_tokens, int64_t{1} << 24);
  EXPECT_EQ((*models)[0].max_queued_bytes, int64_t{8} << 30);
  // engine.max_kv_cache_bytes (8 GiB) over the demo model's KV bytes a token, from its config.json: keys and
  // values x 2 layers x 2 KV heads x head_dim 16 x 4 bytes (float32).
  EXPECT_EQ((*models)[0].max_kv_cache_tokens, (int64_t{8} << 30) / (2 * 2 * 2 * 16 * 4));
  EXPECT_EQ((*models)[0].max_choices, 256);
}

TEST_F(ServiceTest, ReflectionDescribesEveryRpcAsGrpcurlSeesIt) {
  namespace reflection = ::grpc::reflection::v1alpha;
  auto stub = reflection::ServerReflection::NewStub(
      grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->ServerReflectionInfo(&context);
  reflection::ServerReflectionRequest request;
  request.set_list_services("");
  reflection::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
  std::set<std::string> services;
  for (const auto& service : response.list_services_response().service()) services.insert(service.name());
  EXPECT_TRUE(services.count("attribution.v1.AttributionService"));
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));

  // The descriptors (the service's file and what it imports) resolve every method's types.
  request.set_file_containing_symbol("attribution.v1.AttributionService");
  ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
  google::protobuf::DescriptorPool pool;
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    ASSERT_NE(pool.BuildFile(file), nullptr) << file.name();
  }
  const google::protobuf::ServiceDescriptor* service = pool.FindServiceByName("attribution.v1.AttributionService");
  ASSERT_NE(service, nullptr);
  std::set<std::string> methods;
  for (int i = 0; i < service->method_count(); ++i) {
    methods.insert(service->method(i)->name());
    EXPECT_NE(service->method(i)->input_type(), nullptr);
  }
  EXPECT_EQ(methods,
            (std::set<std::string>{"Attribute", "AttributeStream", "AttributeComponents", "AttributeComponentsStream",
                                   "Generate", "GenerateStream", "Logprobs", "ListModels"}));

  // Asked again and again on one stream, each answer is the first one's size: gRPC 1.51's service appended each
  // answer to the last (the 476th held 476 copies; 998 MB sent for 18 KB asked).
  const size_t first_size = response.ByteSizeLong();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
    ASSERT_EQ(response.ByteSizeLong(), first_size) << "answer " << i + 2;
  }
  // grpcurl resolves the health service gRPC serves (its descriptor was not in the pool: "Symbol not found").
  request.set_file_containing_symbol("grpc.health.v1.Health.Check");
  ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
  ASSERT_TRUE(response.has_file_descriptor_response()) << response.error_response().error_message();
  google::protobuf::FileDescriptorProto health;
  ASSERT_TRUE(health.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(health.package(), "grpc.health.v1");
  request.set_file_containing_symbol("attribution.v1.NoSuchMessage");
  ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
  EXPECT_EQ(response.error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(response.original_request().file_containing_symbol(), "attribution.v1.NoSuchMessage");
  request.set_all_extension_numbers_of_type("attribution.v1.AttributeRequest");
  ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
  EXPECT_EQ(response.all_extension_numbers_response().base_type_name(), "attribution.v1.AttributeRequest");
  EXPECT_EQ(response.all_extension_numbers_response().extension_number_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// The threads of a running process, from /proc/PID/status.
int Threads(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// Open reflection streams need no token: 24,000 of them held 24,000 of gRPC's threads for synchronous services
// and 6 GB. They hold no thread now, and past a bound new ones are refused RESOURCE_EXHAUSTED.
TEST_F(ServiceTest, OpenReflectionStreamsHoldBoundedThreadsAndOtherCallsGoOn) {
  namespace reflection = ::grpc::reflection::v1alpha;
  const int threads_before = Threads(server_->pid());
  auto stub = reflection::ServerReflection::NewStub(
      grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  constexpr int kStreams = 48;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<
      grpc::ClientReaderWriter<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse>>>
      open;
  int refused = 0;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    auto stream = stub->ServerReflectionInfo(contexts.back().get());
    reflection::ServerReflectionRequest request;
    request.set_list_services("");
    reflection::ServerReflectionResponse response;
    if (stream->Write(request) && stream->Read(&response)) {
      open.push_back(std::move(stream));  // answered, and held open
      continue;
    }
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
    ++refused;
  }
  const int threads_held = Threads(server_->pid());
  std::printf("[ measured ] %d reflection streams: %zu open, %d refused; server threads %d -> %d\n", kStreams,
              open.size(), refused, threads_before, threads_held);
  EXPECT_GT(refused, 0);
  EXPECT_LT(threads_held, threads_before + 24);
  auto client = Connect(server_->address());
  EXPECT_THAT(client->GetLogprobs({.model = "demo", .prompt = "a b c", .target = " d"}), IsOk());
  for (auto& stream : open) {
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
}

TEST_F(ServiceTest, AttributeEqualsTheEngineRunDirectly) {
  auto client = Connect(server_->address());
  for (const char* method :
       {"integrated_gradients", "feature_ablation", "saliency", "shapley_value_sampling", "lime", "kernel_shap"}) {
    SCOPED_TRACE(method);
    // The engine's request as the server built it before target continuation and fixed special tokens:
    // these two options give exactly that (what Captum parity needs).
    AttributeOptions options{.model = "demo",
                             .prompt = kPrompt,
                             .target = kTarget,
                             .target_tokenization = "separate",
                             .method = method,
                             .n_steps = 12,
                             .n_samples = 40,
                             .seed = 5,
                             .want_token_matrix = true,
                             .include_special_tokens = true};
    absl::StatusOr<Attribution> remote = client->Attribute(options);
    ASSERT_THAT(remote, IsOk());

    DirectEngine direct;
    engine::AttributionRequest request{.prompt_ids = direct.Encode(kPrompt, true),
                                       .target_ids = direct.Encode(kTarget, false),
                                       .method = *engine::ParseAttributionMethod(method),
                                       .n_steps = 12,
                                       .n_samples = 40,
                                       .seed = 5,
                                       .want_token_matrix = true};
    engine::AttributionResult local = direct.Attribute(request);
    ExpectSameValues(remote->sequence, local.sequence);
    ASSERT_EQ(remote->token_matrix.size(), local.per_token.size());
    for (size_t t = 0; t < local.per_token.size(); ++t) ExpectSameValues(remote->token_matrix[t], local.per_token[t]);
    EXPECT_NEAR(remote->objective, local.objective, 1e-6);
    ASSERT_EQ(remote->prompt_tokens.size(), request.prompt_ids.size());
    for (size_t i = 0; i < request.prompt_ids.size(); ++i)
      EXPECT_EQ(remote->prompt_tokens[i].id, request.prompt_ids[i]);
    ASSERT_EQ(remote->target_tokens.size(), request.target_ids.size());
    EXPECT_EQ(remote->features.size(), request.prompt_ids.size());
    EXPECT_EQ(remote->stats.rows, local.rows);
    EXPECT_GT(remote->stats.wall_seconds, 0);
  }
}

TEST_F(ServiceTest, FaithfulnessOnRequestEqualsTheEngineMeasuringTheSameExplanation) {
  auto client = Connect(server_->address());
  absl::StatusOr<Attribution> a = client->Attribute({.model = "demo",
                                                     .prompt = kPrompt,
                                                     .target = kTarget,
                                                     .target_tokenization = "separate",
                                                     .method = "feature_ablation",
                                                     .want_faithfulness = true,
                                                     .include_special_tokens = true});
  ASSERT_THAT(a, IsOk());
  ASSERT_TRUE(a->faithfulness.has_value());
  DirectEngine direct;
  engine::AttributionRequest request{.prompt_ids = direct.Encode(kPrompt, true),
                                     .target_ids = direct.Encode(kTarget, false),
                                     .method = engine::AttributionMethod::kFeatureAblation,
                                     .want_faithfulness = true};
  const engine::AttributionResult expected = direct.Attribute(request);
  const engine::Faithfulness& f = *expected.faithfulness;
  EXPECT_EQ(a->faithfulness->percents, f.percents);
  EXPECT_EQ(a->faithfulness->features_at, f.features_at);
  EXPECT_NEAR(a->faithfulness->full, f.full, 1e-9);
  EXPECT_NEAR(a->faithfulness->empty, f.empty, 1e-9);
  ExpectSameValues(a->faithfulness->deletion, f.deletion);
  ExpectSameValues(a->faithfulness->insertion, f.insertion);
  EXPECT_NEAR(a->faithfulness->comprehensiveness_aopc, f.comprehensiveness_aopc, 1e-9);
  EXPECT_NEAR(a->faithfulness->sufficiency_aopc, f.sufficiency_aopc, 1e-9);
  EXPECT_EQ(a->stats.rows, expected.rows);  // the 12 faithfulness rows are counted
  // p(target) at the input is the attribution's own log-prob objective, exponentiated.
  EXPECT_NEAR(f.full, std::exp(expected.objective), 1e-6);
  // Without the option, no faithfulness and 12 rows fewer.
  absl::StatusOr<Attribution> plain = client->Attribute({.model = "demo",
                                                         .prompt = kPrompt,
                                                         .target = kTarget,
                                                         .target_tokenization = "separate",
                                                         .method = "feature_ablation",
                                                         .include_special_tokens = true});
  ASSERT_THAT(plain, IsOk());
  EXPECT_FALSE(plain->faithfulness.has_value());
  EXPECT_EQ(plain->stats.rows + engine::FaithfulnessRowCount(), a->stats.rows);
}

TEST_F(ServiceTest, TokenOffsetsPointIntoThePromptText) {
  auto client = Connect(server_->address());
  const std::string prompt = "Zürich café, naïve";  // multi-byte characters: code points != bytes
  // The demo tokenizer merges "naïve" and " ok" across the word boundary: the target alone.
  absl::StatusOr<Attribution> a = client->Attribute(
      {.model = "demo", .prompt = prompt, .target = " ok", .target_tokenization = "separate", .method = "saliency"});
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->prompt_tokens.front().char_begin, a->prompt_tokens.front().char_end);  // bos: empty span
  EXPECT_EQ(a->prompt_tokens.back().char_end, 18);                                    // code points, not the 21 bytes
  // Token 0 is the bos token the tokenizer added: special, so a fixed token and no feature.
  EXPECT_EQ(a->prompt_tokens.front().text, "<s>");
  EXPECT_TRUE(a->prompt_tokens.front().special);
  EXPECT_EQ(a->fixed_tokens, std::vector<int64_t>{0});
  std::string covered;
  for (const client::Feature& f : a->features) covered += f.text;
  EXPECT_EQ(covered, prompt);
}

TEST_F(ServiceTest, StreamsReportProgressAndEndWithTheUnaryResult) {
  auto client = Connect(server_->address());
  // Feature ablation's rows include its prompt prefix's prefill (its stats counted one fewer).
  for (const std::string method : {"integrated_gradients", "feature_ablation"}) {
    SCOPED_TRACE(method);
    AttributeOptions options{.model = "demo", .prompt = kPrompt, .target = kTarget, .method = method, .n_steps = 20};
    std::vector<std::pair<int64_t, int64_t>> progress;
    absl::StatusOr<Attribution> streamed =
        client->AttributeStream(options, [&](int64_t done, int64_t total) { progress.emplace_back(done, total); });
    ASSERT_THAT(streamed, IsOk());
    ASSERT_FALSE(progress.empty());
    EXPECT_EQ(progress.back().first, progress.back().second);
    EXPECT_EQ(progress.back().second, streamed->stats.rows);
    EXPECT_EQ(streamed->stats.forward_passes, streamed->stats.rows);
    for (size_t i = 1; i < progress.size(); ++i) EXPECT_GT(progress[i].first, progress[i - 1].first);
    ExpectSameValues(streamed->sequence, client->Attribute(options)->sequence);
  }

  client::GenerateOptions generate{
      .model = "demo", .prompt = "Once upon a time", .generation = {.max_new_tokens = 12, .ignore_stop_tokens = true}};
  std::vector<int64_t> streamed_ids;
  auto generated = client->GenerateStream(generate, [&](const client::Token& t) { streamed_ids.push_back(t.id); });
  ASSERT_THAT(generated, IsOk());
  auto unary = client->Generate(generate);
  ASSERT_THAT(unary, IsOk());
  ASSERT_EQ(unary->tokens.size(), 12u);
  for (size_t i = 0; i < streamed_ids.size(); ++i) EXPECT_EQ(streamed_ids[i], unary->tokens[i].id);
  EXPECT_EQ(streamed_ids.size(), unary->tokens.size());
}

TEST_F(ServiceTest, LogprobsMatchTheGeneratedTokensAndTopAlternatives) {
  auto client = Connect(server_->address());
  auto generated = client->Generate(
      {.model = "demo", .prompt = "Once upon a time", .generation = {.max_new_tokens = 6, .ignore_stop_tokens = true}});
  ASSERT_THAT(generated, IsOk());
  std::vector<int64_t> ids;
  for (const client::Token& t : generated->tokens) ids.push_back(t.id);
  auto scored = client->GetLogprobs({.model = "demo", .prompt = "Once upon a time", .target_ids = ids, .top_k = 5});
  ASSERT_THAT(scored, IsOk());
  ASSERT_EQ(scored->target.size(), ids.size());
  double total = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    // Greedy decoding picks the argmax, so it is the top alternative, with the same log-prob.
    EXPECT_NEAR(scored->target[t].token.log_prob, generated->tokens[t].log_prob, 1e-4);
    ASSERT_EQ(scored->target[t].top.size(), 5u);
    EXPECT_EQ(scored->target[t].top[0].id, ids[t]);
    for (size_t k = 1; k < 5; ++k) EXPECT_LE(scored->target[t].top[k].log_prob, scored->target[t].top[k - 1].log_prob);
    total += scored->target[t].token.log_prob;
  }
  EXPECT_NEAR(scored->total_log_prob, total, 1e-4);
}

// Logprobs reported its one row with no forward pass ("rows": 1, "forward_passes": 0).
TEST_F(ServiceTest, LogprobsCountTheirRowAsOneForwardPass) {
  auto client = Connect(server_->address());
  auto scored = client->GetLogprobs({.model = "demo", .prompt = "Once upon a time", .target_ids = {5, 6, 7}});
  ASSERT_THAT(scored, IsOk());
  EXPECT_EQ(scored->stats.rows, 1);
  EXPECT_EQ(scored->stats.forward_passes, 1);
  EXPECT_EQ(scored->stats.backward_passes, 0);
}

// A generation's rows are its prefill and decode steps, each run forward once; forward_passes said 0.
TEST_F(ServiceTest, GenerationsCountEachRowAsOneForwardPass) {
  auto client = Connect(server_->address());
  const client::GenerateOptions options{
      .model = "demo", .prompt = "Once upon a time", .generation = {.max_new_tokens = 4, .ignore_stop_tokens = true}};
  for (const bool streamed : {false, true}) {
    SCOPED_TRACE(streamed ? "GenerateStream" : "Generate");
    auto generated =
        streamed ? client->GenerateStream(options, [](const client::Token&) {}) : client->Generate(options);
    ASSERT_THAT(generated, IsOk());
    EXPECT_GE(generated->stats.rows, 1);
    EXPECT_EQ(generated->stats.forward_passes, generated->stats.rows);
    EXPECT_EQ(generated->stats.backward_passes, 0);
  }
}

// An Attribute call that generates its target ran the generation's rows too: its stats left them out (the
// device time counted them), so its rows were those of the same call with the target given.
TEST_F(ServiceTest, AnAttributionOfAGeneratedTargetCountsTheGenerationsRows) {
  auto client = Connect(server_->address());
  const client::AttributeOptions generated_options{.model = "demo",
                                                   .prompt = "Once upon a time",
                                                   .generation = {.max_new_tokens = 4, .ignore_stop_tokens = true},
                                                   .method = "saliency"};
  absl::StatusOr<Attribution> generated = client->Attribute(generated_options);
  ASSERT_THAT(generated, IsOk());
  ASSERT_EQ(generated->target_tokens.size(), 4u);
  client::AttributeOptions given_options = generated_options;
  given_options.generation = {};
  for (const client::Token& token : generated->target_tokens) given_options.target_ids.push_back(token.id);
  absl::StatusOr<Attribution> given = client->Attribute(given_options);
  ASSERT_THAT(given, IsOk());
  // Four tokens take four generation rows (a prefill, then a decode step per token but the last), forward only.
  EXPECT_EQ(generated->stats.rows, given->stats.rows + 4);
  EXPECT_EQ(generated->stats.forward_passes, given->stats.forward_passes + 4);
  EXPECT_EQ(generated->stats.backward_passes, given->stats.backward_passes);
  // The stream's progress counts them too (it showed nothing while the target was generated): a token at a time
  // of max_new_tokens, then the attribution's rows after them, to the answer's rows.
  std::vector<std::pair<int64_t, int64_t>> progress;
  absl::StatusOr<Attribution> streamed = client->AttributeStream(
      generated_options, [&](int64_t done, int64_t total) { progress.emplace_back(done, total); });
  ASSERT_THAT(streamed, IsOk());
  ASSERT_GE(progress.size(), 5u);
  using Rows = std::pair<int64_t, int64_t>;  // done, total
  for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(progress[k], Rows(k + 1, 4));
  for (size_t i = 1; i < progress.size(); ++i) EXPECT_GT(progress[i].first, progress[i - 1].first);
  EXPECT_EQ(progress.back(), Rows(streamed->stats.rows, streamed->stats.rows));
}

TEST_F(ServiceTest, AsyncCallsOfEveryRpcRunTogetherAndMatchTheSyncOnes) {
  auto client = Connect(server_->address());
  const AttributeOptions attribute{.model = "demo", .prompt = kPrompt, .target = kTarget, .n_steps = 8};
  const client::GenerateOptions generate{
      .model = "demo", .prompt = "Once upon a time", .generation = {.max_new_tokens = 5, .ignore_stop_tokens = true}};
  // The demo tokenizer merges " time" and " there" across the word boundary: the target alone.
  const client::LogprobsOptions logprobs{
      .model = "demo", .prompt = "Once upon a time", .target = " there", .target_tokenization = "separate", .top_k = 2};
  std::mutex mu;
  std::condition_variable cv;
  int pending = 7;
  auto finished = [&] {
    std::lock_guard<std::mutex> lock(mu);
    if (--pending == 0) cv.notify_all();
  };
  std::optional<absl::StatusOr<Attribution>> a1, a2;
  std::optional<absl::StatusOr<client::Generation>> g1, g2;
  std::optional<absl::StatusOr<client::Logprobs>> l;
  std::optional<absl::StatusOr<std::vector<client::ModelInfo>>> m;
  std::optional<absl::StatusOr<std::string>> h;
  client->AttributeAsync(attribute, [&](auto r) {
    a1 = std::move(r);
    finished();
  });
  client->AttributeStreamAsync(attribute, nullptr, [&](auto r) {
    a2 = std::move(r);
    finished();
  });
  client->GenerateAsync(generate, [&](auto r) {
    g1 = std::move(r);
    finished();
  });
  client->GenerateStreamAsync(generate, nullptr, [&](auto r) {
    g2 = std::move(r);
    finished();
  });
  client->GetLogprobsAsync(logprobs, [&](auto r) {
    l = std::move(r);
    finished();
  });
  client->ListModelsAsync([&](auto r) {
    m = std::move(r);
    finished();
  });
  client->HealthAsync("", [&](auto r) {
    h = std::move(r);
    finished();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return pending == 0; });
  }
  ASSERT_THAT(*a1, IsOk());
  ASSERT_THAT(*a2, IsOk());
  ASSERT_THAT(*g1, IsOk());
  ASSERT_THAT(*g2, IsOk());
  ASSERT_THAT(*l, IsOk());
  ASSERT_THAT(*m, IsOk());
  ASSERT_THAT(*h, IsOk());
  ExpectSameValues((*a1)->sequence, client->Attribute(attribute)->sequence);
  ExpectSameValues((*a2)->sequence, (*a1)->sequence);
  EXPECT_EQ((*g1)->text, client->Generate(generate)->text);
  EXPECT_EQ((*g2)->text, (*g1)->text);
  EXPECT_NEAR((*l)->total_log_prob, client->GetLogprobs(logprobs)->total_log_prob, 1e-5);
  EXPECT_EQ((*m)->size(), 1u);
  EXPECT_EQ(**h, "SERVING");
}

TEST_F(ServiceTest, ThirtyTwoConcurrentClientsGetWhatEachGetsAlone) {
  // The demo tokenizer merges across word boundaries ("world again"): targets tokenized alone.
  const std::vector<AttributeOptions> kinds = {
      {.model = "demo", .prompt = kPrompt, .target = kTarget, .target_tokenization = "separate", .n_steps = 8},
      {.model = "demo",
       .prompt = "The cat sat on the mat",
       .target = " today",
       .target_tokenization = "separate",
       .method = "feature_ablation"},
      {.model = "demo",
       .prompt = "Hello world",
       .target = " again",
       .target_tokenization = "separate",
       .method = "input_x_gradient"},
      {.model = "demo",
       .prompt = "One two three four",
       .target = " five",
       .target_tokenization = "separate",
       .method = "shapley_value_sampling",
       .n_samples = 2,
       .seed = 7},
  };
  auto client = Connect(server_->address());
  std::vector<std::vector<double>> alone;
  for (const AttributeOptions& o : kinds) alone.push_back(client->Attribute(o)->sequence);
  constexpr int kClients = 32;
  std::vector<absl::StatusOr<Attribution>> results(kClients, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto own = Connect(server_->address());  // separate channels: separate connections
      results[i] = own->Attribute(kinds[i % kinds.size()]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_THAT(results[i], IsOk()) << i;
    ExpectSameValues(results[i]->sequence, alone[i % kinds.size()]);
  }
}

// Sends `request` and the same padded past 64 KiB with a field this server does not know: their answers (or
// errors) are alike.
template <typename Request, typename Response>
void ExpectPaddedRequestAnsweredAlike(v1::AttributionService::Stub& stub, const Request& request,
                                      grpc::Status (v1::AttributionService::Stub::*rpc)(grpc::ClientContext*,
                                                                                        const Request&, Response*)) {
  Request padded = request;
  padded.GetReflection()->MutableUnknownFields(&padded)->AddLengthDelimited(9999, std::string(size_t{100} << 10, 'x'));
  Response small_answer, large_answer;
  grpc::ClientContext small_context, large_context;
  const grpc::Status small_status = (stub.*rpc)(&small_context, request, &small_answer);
  const grpc::Status large_status = (stub.*rpc)(&large_context, padded, &large_answer);
  EXPECT_EQ(large_status.error_code(), small_status.error_code()) << large_status.error_message();
  EXPECT_EQ(large_status.error_message(), small_status.error_message());
  small_answer.clear_stats();
  large_answer.clear_stats();
  google::protobuf::util::MessageDifferencer differ;
  differ.set_float_comparison(google::protobuf::util::MessageDifferencer::APPROXIMATE);
  // An Attribute answer names the unknown field among the settings it did not read.
  if (const auto* unread = Response::descriptor()->FindFieldByName("unread_settings")) differ.IgnoreField(unread);
  std::string differences;
  differ.ReportDifferencesToString(&differences);
  EXPECT_TRUE(differ.Compare(small_answer, large_answer)) << differences;
}

// Requests of 64 KiB and more are read on a pool of their own, off gRPC's few handler threads (a request of
// megabytes of text held one for seconds, and the calls behind it waited): every RPC answers them as it answers
// the same request unpadded, its errors too.
TEST_F(ServiceTest, LargeRequestsAreAnsweredAsSmallOnes) {
  auto stub =
      v1::AttributionService::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  v1::AttributeRequest attribute;
  attribute.set_model("demo");
  attribute.mutable_prompt()->set_text(kPrompt);
  attribute.mutable_target()->set_text(kTarget);
  attribute.set_n_steps(8);
  ExpectPaddedRequestAnsweredAlike(*stub, attribute, &v1::AttributionService::Stub::Attribute);
  attribute.set_n_steps(-1);
  ExpectPaddedRequestAnsweredAlike(*stub, attribute, &v1::AttributionService::Stub::Attribute);

  v1::AttributeComponentsRequest components;
  components.set_model("demo");
  v1::PromptPair* pair = components.add_pairs();
  for (int64_t id : {10, 11, 12, 13}) pair->mutable_clean()->add_token_ids(id);
  for (int64_t id : {10, 14, 12, 13}) pair->mutable_corrupted()->add_token_ids(id);
  components.mutable_answer()->add_token_ids(5);
  components.mutable_wrong_answer()->add_token_ids(6);
  ExpectPaddedRequestAnsweredAlike(*stub, components, &v1::AttributionService::Stub::AttributeComponents);

  v1::GenerateRequest generate;
  generate.set_model("demo");
  generate.mutable_prompt()->set_text("Once upon a time");
  generate.mutable_generation()->set_max_new_tokens(5);
  ExpectPaddedRequestAnsweredAlike(*stub, generate, &v1::AttributionService::Stub::Generate);

  v1::LogprobsRequest logprobs;
  logprobs.set_model("demo");
  logprobs.mutable_prompt()->set_text("Once upon a time");
  logprobs.mutable_target()->set_text(" there");
  logprobs.set_top_k(2);
  ExpectPaddedRequestAnsweredAlike(*stub, logprobs, &v1::AttributionService::Stub::Logprobs);
  logprobs.clear_prompt();
  ExpectPaddedRequestAnsweredAlike(*stub, logprobs, &v1::AttributionService::Stub::Logprobs);
}

TEST_F(ServiceTest, DeadlinesAndCancellationEndCallsAndDropTheirRows) {
  const std::string long_prompt(600, 'a');
  auto hurried = Connect(server_->address(), {.timeout = absl::Milliseconds(200)});
  AttributeOptions heavy{.model = "demo", .prompt = long_prompt, .target = kTarget, .n_steps = 1000};
  absl::StatusOr<Attribution> late = hurried->Attribute(heavy);
  EXPECT_THAT(late, StatusIs(absl::StatusCode::kDeadlineExceeded));
  // Its rows leave the queue at the engine's next decision; until then they would tell the canceller
  // below that the next call is on the server when it may not be, and a call cancelled before the server
  // took it is never counted.
  ASSERT_TRUE(test_support::WaitForIdle(server_->metrics_port(), "demo", absl::Seconds(60)));

  // A call's own timeout, on a client whose timeout is long.
  auto client = Connect(server_->address());
  AttributeOptions timed = heavy;
  timed.timeout = absl::Milliseconds(200);
  EXPECT_THAT(client->Attribute(timed), StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_TRUE(test_support::WaitForIdle(server_->metrics_port(), "demo", absl::Seconds(60)));

  // A Cancellation, once the call's rows are on the server.
  auto cancellation = std::make_shared<client::Cancellation>();
  AttributeOptions cancellable = heavy;
  cancellable.cancellation = cancellation;
  std::thread canceller([&] {
    EXPECT_TRUE(WaitForQueuedRows(server_->metrics_port(), "demo"));
    cancellation->Cancel();
  });
  absl::StatusOr<Attribution> cancelled = client->Attribute(cancellable);
  canceller.join();
  EXPECT_THAT(cancelled, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_FALSE(client::RefusedBeforeSending(cancelled.status()));

  // The engine dropped the rest: the queue drains quickly and new work is served at once.
  absl::StatusOr<Attribution> after =
      client->Attribute({.model = "demo", .prompt = kPrompt, .target = kTarget, .n_steps = 8});
  ASSERT_THAT(after, IsOk());
  EXPECT_LT(after->stats.wall_seconds, 30);
  // The client saw CANCELLED at once; the server may learn it after the next connection's call was
  // served. The cancelled call then ends at its running batch's next pause.
  EXPECT_TRUE(test_support::WaitForIdle(server_->metrics_port(), "demo", absl::Seconds(30)));
  auto metrics = test_support::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_NE(metrics->find("attribution_rpcs_total{code=\"CANCELLED\",method=\"Attribute\",model=\"demo\"}"),
            std::string::npos);
  EXPECT_NE(metrics->find("attribution_engine_queued_rows{model=\"demo\"} 0"), std::string::npos);
}

TEST_F(ServiceTest, MetricsCountRpcsBatchesAndResidentBytes) {
  auto client = Connect(server_->address());
  ASSERT_THAT(client->GetLogprobs({.model = "demo", .prompt = "a b c", .target = " d"}), IsOk());
  auto metrics = test_support::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_THAT(metrics, IsOk());
  for (const char* expected :
       {"attribution_rpcs_total{code=\"OK\",method=\"Logprobs\",model=\"demo\"}",
        "attribution_rpc_seconds_bucket{code=\"OK\",method=\"Logprobs\",model=\"demo\"", "attribution_rpcs_in_flight",
        "attribution_batch_rows_bucket{kind=\"score\",model=\"demo\"", "attribution_batch_padding_waste_bucket",
        "attribution_engine_rows_total{model=\"demo\"}", "attribution_engine_tokens_total{model=\"demo\"}",
        "attribution_engine_queued_rows{model=\"demo\"}", "attribution_model_resident_weight_bytes{model=\"demo\"} "}) {
    EXPECT_NE(metrics->find(expected), std::string::npos) << expected;
  }
  EXPECT_THAT(test_support::HttpGet(server_->metrics_port(), "/other"), StatusIs(absl::StatusCode::kNotFound));
  // One JSON log line per request.
  const std::string log = server_->LogOnceItHolds(R"("rows":1,"rpc":"Logprobs")");
  EXPECT_NE(log.find(R"("code":"OK","device_s":)"), std::string::npos);
  EXPECT_NE(log.find(R"("rows":1,"rpc":"Logprobs")"), std::string::npos) << log;
}

// The latency histogram had the method as its only label: refusals answered in microseconds (unknown
// model, RESOURCE_EXHAUSTED under overload) landed beside served calls and pulled the dashboard's
// quantiles down exactly when the server was overloaded. They are now series of their own code.
TEST_F(ServiceTest, LatencyOfRefusedCallsIsKeptApartFromServedCalls) {
  const int port = server_->metrics_port();
  const std::string served = "attribution_rpc_seconds_count{code=\"OK\",method=\"Attribute\",model=\"demo\"}";
  const std::string refused = "attribution_rpc_seconds_count{code=\"NOT_FOUND\",method=\"Attribute\",model=\"\"}";
  const double served_before = test_support::MetricValue(port, served);
  const double refused_before = test_support::MetricValue(port, refused);
  auto client = Connect(server_->address());
  EXPECT_THAT(client->Attribute({.model = "no-such-model", .prompt = kPrompt, .target = kTarget}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(test_support::MetricValue(port, refused), refused_before + 1);
  EXPECT_EQ(test_support::MetricValue(port, served), served_before);
  // A name the server does not serve is no label value: any client could add series without bound.
  auto metrics = test_support::HttpGet(port, "/metrics");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_EQ(metrics->find("no-such-model"), std::string::npos);
}

// Two servers whose limits lower the defaults differently answered one request far apart (KernelSHAP: 0.8
// relative) and neither answer said why. Each answer names the settings it ran with and the server's build: sent
// to the other server, those settings get the same numbers there.
TEST(ServiceProvenance, TheSettingsAnAnswerRanWithReproduceItOnAServerConfiguredOtherwise) {
  auto usual = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  auto lowered = ServerProcess::Start({"--model=demo=" + DemoModelDir(), "--max_samples=10", "--max_steps=8"});
  ASSERT_THAT(usual, IsOk());
  ASSERT_THAT(lowered, IsOk());
  auto on_usual = Connect((*usual)->address());
  auto on_lowered = Connect((*lowered)->address());
  for (const char* method : {"kernel_shap", "integrated_gradients", "gradient_shap"}) {
    SCOPED_TRACE(method);
    const AttributeOptions asked{
        .model = "demo", .prompt = kPrompt, .target = kTarget, .method = method, .baseline = "eos"};
    absl::StatusOr<Attribution> there = on_lowered->Attribute(asked);
    absl::StatusOr<Attribution> here = on_usual->Attribute(asked);
    ASSERT_THAT(there, IsOk());
    ASSERT_THAT(here, IsOk());
    const client::SettingsUsed& used = there->settings_used;
    EXPECT_NE(here->sequence, there->sequence);
    EXPECT_FALSE(there->stats.server_build.empty());
    EXPECT_EQ(there->stats.server_build, here->stats.server_build);
    ASSERT_TRUE(used.baseline.has_value());
    EXPECT_NE(*used.baseline, "eos");  // the token id the name stood for
    AttributeOptions again = asked;
    again.baseline = *used.baseline;
    if (used.n_samples) again.n_samples = *used.n_samples;
    if (used.n_steps) again.n_steps = *used.n_steps;
    if (used.rule) again.rule = *used.rule;
    if (used.seed) again.seed = *used.seed;
    if (used.stdev) again.stdev = *used.stdev;
    EXPECT_EQ(used.n_samples.has_value(), std::string(method) != "integrated_gradients");
    EXPECT_EQ(used.n_samples.value_or(10), 10);
    EXPECT_EQ(used.n_steps.value_or(8), 8);
    absl::StatusOr<Attribution> reproduced = on_usual->Attribute(again);
    ASSERT_THAT(reproduced, IsOk());
    ASSERT_EQ(reproduced->sequence.size(), there->sequence.size());
    double scale = 1e-12;
    for (double value : there->sequence) scale = std::max(scale, std::abs(value));
    for (size_t f = 0; f < there->sequence.size(); ++f) {
      EXPECT_NEAR(reproduced->sequence[f], there->sequence[f], 1e-4 * scale) << f;
    }
  }
}

// One server, several models: each model's calls are series of their own, as its engine metrics are.
TEST(ServiceMetrics, RpcsAreCountedPerModel) {
  auto server = ServerProcess::Start({"--model=first=" + DemoModelDir(), "--model=second=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client = Connect((*server)->address());
  for (int i = 0; i < 2; ++i) {
    ASSERT_THAT(client->GetLogprobs({.model = "second", .prompt = "a b", .target = " c"}), IsOk());
  }
  ASSERT_THAT(client->GetLogprobs({.model = "first", .prompt = "a b", .target = " c"}), IsOk());
  const int port = (*server)->metrics_port();
  ASSERT_TRUE(test_support::WaitForIdle(port, "first", absl::Seconds(30)));  // every answer counted
  EXPECT_EQ(MetricValue(port, R"(attribution_rpcs_total{code="OK",method="Logprobs",model="second"})"), 2);
  EXPECT_EQ(MetricValue(port, R"(attribution_rpcs_total{code="OK",method="Logprobs",model="first"})"), 1);
  EXPECT_EQ(MetricValue(port, R"(attribution_rpc_seconds_count{code="OK",method="Logprobs",model="second"})"), 2);
}

// A generation's keys and values (the test's demo model: 2 x 2 layers x 2 KV heads x 16 x 4 bytes = 512 bytes a
// token) are held against engine.max_kv_cache_bytes from its first step to its end: one that could never fit is
// refused before any work, naming the field, and a generation that fits runs and returns its memory.
TEST(ServiceMemory, AGenerationsKvCacheCountsAgainstTheQueueMemory) {
  test_support::TempDir dir;
  const std::string config = dir.File("server.json");
  std::ofstream(config) << R"({"models": [{"name": "demo", "path": ")" << DemoModelDir()
                        << R"(", "engine": {"max_kv_cache_bytes": 65536}}]})";  // 128 tokens of KV cache
  auto server = ServerProcess::Start({"--config=" + config});
  ASSERT_THAT(server, IsOk());
  auto client = Connect((*server)->address());
  const std::string prompt = "Q: Is the kettle warm? A:";
  EXPECT_THAT(
      client->Generate(
          {.model = "demo", .prompt = prompt, .generation = {.max_new_tokens = 200, .ignore_stop_tokens = true}}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("generation.max_new_tokens: the KV cache of"), HasSubstr("tokens needs"),
                     HasSubstr("(engine.max_kv_cache_bytes)"))));
  EXPECT_THAT(client->Attribute({.model = "demo",
                                 .prompt = prompt,
                                 .generation = {.max_new_tokens = 200, .ignore_stop_tokens = true},
                                 .method = "saliency"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("generation.max_new_tokens: the KV cache of")));
  absl::StatusOr<client::Generation> fits = client->Generate(
      {.model = "demo", .prompt = prompt, .generation = {.max_new_tokens = 40, .ignore_stop_tokens = true}});
  ASSERT_THAT(fits, IsOk());
  EXPECT_EQ(fits->tokens.size(), 40u);
  const int port = (*server)->metrics_port();
  ASSERT_TRUE(test_support::WaitForIdle(port, "demo", absl::Seconds(30)));
  EXPECT_EQ(MetricValue(port, R"(attribution_engine_kv_cache_bytes{model="demo"})"), 0);
}

// The severity of every JSON line of `log` by its "event" or "rpc" and "code" (e.g. "rpc Logprobs OK");
// lines without a severity as "missing".
std::multimap<std::string, std::string> SeveritiesByLine(const std::string& log) {
  std::multimap<std::string, std::string> severities;
  std::istringstream lines(log);
  for (std::string text; std::getline(lines, text);) {
    const nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object()) continue;
    const std::string what = line.contains("rpc")
                                 ? absl::StrCat("rpc ", line.value("rpc", ""), " ", line.value("code", ""))
                                 : line.value("event", "");
    severities.emplace(what, line.value("severity", "missing"));
  }
  return severities;
}

// The log lines had no severity: collectors that read stderr without one (GKE, for one) file every
// line, each served call's included, as an error.
TEST_F(ServiceTest, EveryLogLineCarriesASeverity) {
  auto client = Connect(server_->address());
  ASSERT_THAT(client->GetLogprobs({.model = "demo", .prompt = "a b c", .target = " d"}), IsOk());
  EXPECT_THAT(client->GetLogprobs({.model = "no-such-model", .prompt = "a b c", .target = " d"}),
              StatusIs(absl::StatusCode::kNotFound));
  const std::multimap<std::string, std::string> severities =
      SeveritiesByLine(server_->LogOnceItHolds(R"("code":"NOT_FOUND")"));
  for (const auto& [what, severity] : severities) {
    EXPECT_THAT(severity, ::testing::AnyOf("DEBUG", "INFO", "WARNING", "ERROR")) << what;
  }
  for (const char* line : {"rpc Logprobs OK", "rpc Logprobs NOT_FOUND", "serving"}) {
    ASSERT_GT(severities.count(line), 0u) << line;
  }
  EXPECT_EQ(severities.find("rpc Logprobs OK")->second, "INFO");
  EXPECT_EQ(severities.find("rpc Logprobs NOT_FOUND")->second, "INFO");  // the client's mistake
  EXPECT_EQ(severities.find("serving")->second, "INFO");
  auto [code, log] = ServerProcess::RunToExit({"--model=m=/nonexistent-model-dir"});
  EXPECT_EQ(code, 1);
  const std::multimap<std::string, std::string> failed = SeveritiesByLine(log);
  ASSERT_EQ(failed.count("startup_failed"), 1u) << log;
  EXPECT_EQ(failed.find("startup_failed")->second, "ERROR");
}

TEST(ServerLifecycle, SigtermFinishesCallsInFlightRefusesNewOnesAndExitsZero) {
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client = Connect((*server)->address(), {.max_attempts = 2});
  std::atomic<bool> started{false};
  absl::StatusOr<Attribution> in_flight = absl::UnknownError("not run");
  std::thread call([&] {
    started = true;
    in_flight =
        client->Attribute({.model = "demo", .prompt = std::string(300, 'b'), .target = kTarget, .n_steps = 200});
  });
  while (!started) std::this_thread::yield();
  EXPECT_TRUE(WaitForQueuedRows((*server)->metrics_port(), "demo"));
  auto prober = Connect((*server)->address(), {.max_attempts = 1});
  // A check that names the service follows the server as the overall one does (it was NOT_FOUND).
  constexpr char kService[] = "attribution.v1.AttributionService";
  EXPECT_EQ(prober->Health(kService).value_or("error"), "SERVING");
  (*server)->Signal(SIGTERM);
  for (int attempt = 0; attempt < 1000 && prober->Health().value_or("gone") == "SERVING"; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // until the server began draining
  }
  EXPECT_EQ(prober->Health(kService).value_or("error"), "NOT_SERVING");
  auto late = Connect((*server)->address(), {.max_attempts = 2})->ListModels();
  EXPECT_THAT(late, StatusIs(absl::StatusCode::kUnavailable));
  call.join();
  EXPECT_THAT(in_flight, IsOk());
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0) << (*server)->Log();
  EXPECT_NE((*server)->Log().find("\"detail\":\"every call finished\",\"event\":\"stopped\""), std::string::npos);
}

// gRPC removes the socket file at a unix: address before it binds: a second server there started, took the
// path, and the first went on serving no one. It is refused as a TCP port in use is.
TEST(ServerLifecycle, ASecondServerOnAUnixSocketInUseIsRefused) {
  test_support::TempDir dir;
  const std::string listen = "--listen=unix:" + dir.File("server.sock");
  auto first = ServerProcess::Start({"--model=demo=" + DemoModelDir(), listen});
  ASSERT_THAT(first, IsOk());
  auto [code, log] = ServerProcess::RunToExit({"--model=demo=" + DemoModelDir(), listen});
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log, HasSubstr("a server is listening there (in use)"));
  absl::StatusOr<std::vector<client::ModelInfo>> models = Connect("unix:" + dir.File("server.sock"))->ListModels();
  ASSERT_THAT(models, IsOk());
  EXPECT_EQ(models->front().name, "demo");
}

// --port_file gave a unix socket's port as 1 (what gRPC reports there), which scripts connected to: 0 now. The
// file is removed as the server stops: a script waiting for the next start's file read this run's ports.
TEST(ServerLifecycle, ThePortFileSaysNoPortAtAUnixSocketAndGoesAwayAtTheStop) {
  test_support::TempDir dir;
  const std::string ports = dir.File("ports");
  std::unique_ptr<ServerProcess> server = ServerProcess::Spawn(
      {"--model=demo=" + DemoModelDir(), "--listen=unix:" + dir.File("server.sock"), "--port_file=" + ports});
  std::string text;
  for (int i = 0; i < 1200 && std::count(text.begin(), text.end(), '\n') < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the file appears once the server serves
    std::ifstream in(ports);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ASSERT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << server->Log();
  EXPECT_EQ(text.substr(0, text.find('\n')), "0");
  server->Signal(SIGTERM);
  EXPECT_EQ(server->Wait(absl::Seconds(60)), 0) << server->Log();
  EXPECT_NE(::access(ports.c_str(), F_OK), 0) << "the port file outlived the server";
}

// Two servers given one --port_file (a second started before the first stopped, as a rolling restart may): the
// one that stops first leaves the file the other wrote, where it removed it while the other served.
TEST(ServerLifecycle, AServerStoppingLeavesThePortFileAnotherServerWrote) {
  test_support::TempDir dir;
  const std::string ports = dir.File("ports");
  // The file's text once it differs from `before` (the server writing it serves by then), or "" after 120 s.
  const auto ports_after = [&](const std::string& before) {
    for (int i = 0; i < 1200; ++i) {
      std::ifstream in(ports);
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (std::count(text.begin(), text.end(), '\n') == 2 && text != before) return text;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return std::string();
  };
  std::unique_ptr<ServerProcess> first =
      ServerProcess::Spawn({"--model=demo=" + DemoModelDir(), "--port_file=" + ports});
  const std::string first_ports = ports_after("");
  ASSERT_NE(first_ports, "") << first->Log();
  std::unique_ptr<ServerProcess> second =
      ServerProcess::Spawn({"--model=demo=" + DemoModelDir(), "--port_file=" + ports});
  const std::string second_ports = ports_after(first_ports);
  ASSERT_NE(second_ports, "") << second->Log();
  first->Signal(SIGTERM);
  EXPECT_EQ(first->Wait(absl::Seconds(60)), 0) << first->Log();
  std::ifstream in(ports);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), second_ports)
      << "the second server's port file was removed";
  second->Signal(SIGTERM);
  EXPECT_EQ(second->Wait(absl::Seconds(60)), 0) << second->Log();
  EXPECT_NE(::access(ports.c_str(), F_OK), 0) << "the port file outlived the server that wrote it";
}

// A second SIGINT while the server drains ends it at once, as Ctrl-C twice means; before, it was ignored and
// the drain waited out the grace period (here 10 minutes) for the long call in flight.
TEST(ServerLifecycle, ASecondSignalWhileDrainingExitsAtOnce) {
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir(), "--grace_period_seconds=600"});
  ASSERT_THAT(server, IsOk());
  auto client = Connect((*server)->address(), {.max_attempts = 1});
  absl::StatusOr<Attribution> in_flight = absl::UnknownError("not run");
  std::thread call([&] {
    in_flight =
        client->Attribute({.model = "demo", .prompt = std::string(300, 'b'), .target = kTarget, .n_steps = 1000});
  });
  EXPECT_TRUE(WaitForQueuedRows((*server)->metrics_port(), "demo"));
  (*server)->Signal(SIGINT);
  // Health turns NOT_SERVING once the drain began (polled: a signal gives no other word back).
  auto prober = Connect((*server)->address(), {.max_attempts = 1});
  for (int attempt = 0; attempt < 1000 && prober->Health().value_or("gone") == "SERVING"; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(prober->Health().value_or("gone"), "NOT_SERVING") << (*server)->Log();
  (*server)->Signal(SIGINT);
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 1) << (*server)->Log();
  EXPECT_THAT((*server)->Log(), HasSubstr("signal 2 again while draining: exiting at once, calls cut off"));
  call.join();
  EXPECT_THAT(in_flight, StatusIs(absl::StatusCode::kUnavailable));
}

// A crash leaves its signal and the failing thread's stack in the log, and the process still dies of
// that signal (a supervisor sees the crash, not an exit).
TEST(ServerLifecycle, ACrashWritesItsSignalAndStackTraceToTheLog) {
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  (*server)->Signal(SIGSEGV);
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), -1);  // died of a signal
  const std::string log = (*server)->Log();
  EXPECT_THAT(log, HasSubstr("*** SIGSEGV received at time=")) << log;
  EXPECT_THAT(log, HasSubstr("PC: @ ")) << log;
}

TEST(ServerLifecycle, BadConfigurationsFailAtStartupWithAClearMessage) {
  test_support::TempDir dir;
  {
    std::ofstream(dir.File("typo.json")) << R"({"models": [{"name": "m", "path": "/x", "dtyp": "float32"}]})";
    std::ofstream(dir.File("broken.json")) << R"({"models": [)";
    std::ofstream(dir.File("empty.json")) << R"({"models": []})";
    std::filesystem::create_directory(dir.File("a_folder"));
  }
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"--config=" + dir.File("typo.json")}, "models[0] has an unknown key \"dtyp\""},
      {{"--config=" + dir.File("broken.json")}, "not valid JSON"},
      {{"--config=" + dir.File("missing.json")}, "missing.json"},
      {{"--config=" + dir.File("empty.json")}, "no models"},
      {{"--model=demo"}, "expected NAME=PATH"},
      {{"--model=demo=/nonexistent"}, "model \"demo\" (/nonexistent)"},
      {{"--model=demo=" + DemoModelDir(), "--dtype=float64"}, "float64"},
      {{"--model=demo=" + DemoModelDir(), "--quantization=int3"}, "int3"},
      {{"--model=demo=" + DemoModelDir(), "--tls_cert=" + dir.File("none.pem")},
       "tls: cert_file and key_file go together"},
      {{"--model=demo=" + DemoModelDir(), "--auth_tokens_file=" + dir.File("none")}, "none"},
      // NaN read as an infinite duration, 1e-300 as 0 ("never"), and a negative --max_batch_seconds as the default.
      {{"--model=demo=" + DemoModelDir(), "--max_uncontended_batch_seconds=nan"},
       "--max_uncontended_batch_seconds = nan: give a finite number of seconds"},
      {{"--model=demo=" + DemoModelDir(), "--max_batch_seconds=-1"},
       "--max_batch_seconds = -1: give seconds above 0, or 0 for the device's default"},
      {{"--model=demo=" + DemoModelDir(), "--grace_period_seconds=-1"}, "grace_period_seconds must lie between 0"},
      {{"--model=demo=" + DemoModelDir(), "--client_read_timeout_seconds=1e-300"},
       "--client_read_timeout_seconds = 1e-300: give"},
      // A port file that could not be written was left out (or empty) without a word: a script waited forever.
      {{"--model=demo=" + DemoModelDir(), "--port_file=/nonexistent/folder/ports"},
       "--port_file /nonexistent/folder/ports: cannot write in /nonexistent/folder"},
      {{"--model=demo=" + DemoModelDir(), "--port_file=" + dir.File("a_folder")},
       "--port_file " + dir.File("a_folder") + ": a directory, not a file"},
  };
  for (const Case& c : cases) {
    auto [code, log] = ServerProcess::RunToExit(c.args);
    EXPECT_EQ(code, 1) << log;
    EXPECT_NE(log.find(c.message), std::string::npos) << "expected \"" << c.message << "\" in:\n" << log;
  }
}

TEST(ServerModels, ServesASentencePieceTokenizerBesideGrpcsProtobuf) {
  // libsentencepiece bundles its own protobuf; the server loads it in isolation (see
  // engine/tokenizer/sentencepiece_backend.h), so a tokenizer.model-only model serves.
  auto server = ServerProcess::Start({"--model=spm=" + DemoModelDir() + "-sentencepiece"});
  ASSERT_THAT(server, IsOk());
  auto client = Connect((*server)->address());
  const std::string prompt = "Hello world, naïve café";
  absl::StatusOr<Attribution> a =
      client->Attribute({.model = "spm", .prompt = prompt, .target = " again", .method = "feature_ablation"});
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->fixed_tokens, std::vector<int64_t>{0});  // <s>: special, no feature
  std::string covered;
  for (const client::Feature& f : a->features) covered += f.text;
  EXPECT_EQ(covered, prompt);
  EXPECT_THAT(client->Generate({.model = "spm", .prompt = "the time", .generation = {.max_new_tokens = 4}}), IsOk());
  // Its nmt_nfkc normalizer drops whitespace: libsentencepiece encodes " " and "  \u3000" to no tokens. Such a
  // target tokenized on its own answered OK with a generated target (an empty one reads as unset), and Logprobs
  // named target_ids, which the caller never set.
  for (const std::string target : {" ", "  \u3000"}) {
    const auto makes_no_tokens =
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("target.text: makes no tokens"));
    EXPECT_THAT(client->Attribute({.model = "spm",
                                   .prompt = prompt,
                                   .target = target,
                                   .target_tokenization = "separate",
                                   .method = "saliency"}),
                makes_no_tokens);
    EXPECT_THAT(
        client->GetLogprobs({.model = "spm", .prompt = prompt, .target = target, .target_tokenization = "separate"}),
        makes_no_tokens);
  }
}

TEST(ClientRetries, UnavailableIsRetriedWithBackoffUntilTheServerComesUp) {
  // Learn a free port from a first server, stop it, and call that port while nothing listens: the
  // attempts fail UNAVAILABLE (refused, then "still loading") and are retried until a new server serves.
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  const std::string port = std::to_string((*server)->port());
  server->reset();
  // gRPC spaces the attempts by the backoff ±20% (doubling, at most max_backoff): retries about 3, 9, 19
  // and 29 s after the first attempt, time enough for a restart on a loaded machine.
  auto client = Connect("127.0.0.1:" + port,
                        {.max_attempts = 5, .initial_backoff = absl::Seconds(3), .max_backoff = absl::Seconds(10)});
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    *server = std::move(*ServerProcess::Start({"--model=demo=" + DemoModelDir(), "--listen=127.0.0.1:" + port}));
  });
  absl::StatusOr<std::vector<client::ModelInfo>> models = client->ListModels();
  restart.join();
  EXPECT_THAT(models, IsOk());
  // Without retries the same call fails at once.
  server->reset();
  auto once = Connect("127.0.0.1:" + port, {.max_attempts = 1})->ListModels();
  EXPECT_THAT(once, StatusIs(absl::StatusCode::kUnavailable));
}

// gRPC keeps whole milliseconds of a retry backoff and, given a zero one, fails every call of the channel
// ("Failed to create channel"); sizes and times past an int wrap; metadata past 8 KiB drops the connection.
// Connect names the option instead, and a 2 ms backoff makes a working channel.
TEST(ClientConnect, OptionsGrpcCannotHoldAreRefusedNamingThem) {
  for (auto [options, name] :
       {std::pair{client::ClientOptions{.initial_backoff = absl::Microseconds(500)}, "initial_backoff"},
        std::pair{client::ClientOptions{.max_backoff = absl::ZeroDuration()}, "max_backoff"},
        std::pair{client::ClientOptions{.connect_timeout = absl::Hours(24 * 30)}, "connect_timeout"},
        std::pair{client::ClientOptions{.bearer_token = std::string(client::kMaxBearerTokenBytes + 1, 't')},
                  "bearer_token"},
        std::pair{client::ClientOptions{.max_receive_message_bytes = int64_t{1} << 31}, "max_receive_message_bytes"},
        std::pair{client::ClientOptions{.max_message_bytes = 0}, "max_message_bytes"}}) {
    options.target = "127.0.0.1:1";
    EXPECT_THAT(client::AttributionClient::Connect(options),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(name) + ": ")));
  }
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client =
      Connect("127.0.0.1:" + std::to_string((*server)->port()),
              {.max_attempts = 3, .initial_backoff = absl::Milliseconds(2), .max_backoff = absl::Milliseconds(2)});
  EXPECT_THAT(client->ListModels(), IsOk());
}

TEST(ClientConnect, ASlowHandshakeIsWaitedForUpToTheConnectTimeout) {
  // A stopped server still completes TCP connections (the kernel's backlog) but sends no HTTP/2
  // SETTINGS until it runs again, as a busy or distant server answers late.
  auto server = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  // The server runs again after `stopped_for`, or as soon as the call has returned. The impatient call
  // gets a long stop, so a loaded machine that starts its connection late cannot make it succeed.
  auto call_while_stopped = [&](std::chrono::milliseconds stopped_for, client::ClientOptions options) {
    options.max_attempts = 1;
    auto client = Connect((*server)->address(), options);
    (*server)->Pause();
    std::promise<void> returned;
    std::thread resume([&, call_returned = returned.get_future()] {
      call_returned.wait_for(stopped_for);
      (*server)->Signal(SIGCONT);
    });
    absl::StatusOr<std::vector<client::ModelInfo>> models = client->ListModels();
    returned.set_value();
    resume.join();
    return models.status();
  };
  EXPECT_THAT(call_while_stopped(std::chrono::milliseconds(1500), {}), IsOk());
  absl::Status impatient = call_while_stopped(std::chrono::seconds(15), {.connect_timeout = absl::Milliseconds(200)});
  EXPECT_THAT(impatient, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_NE(std::string(impatient.message()).find("SETTINGS"), std::string::npos) << impatient;
}

// Logprobs calls each server has counted, once their sum reaches `total` (the count is made as the
// answer goes out, so it may trail the client by a moment).
std::pair<int64_t, int64_t> LogprobsAnswered(const ServerProcess& a, const ServerProcess& b, int64_t total) {
  auto answered = [](const ServerProcess& server) {
    return static_cast<int64_t>(
        MetricValue(server.metrics_port(), "attribution_rpcs_total{code=\"OK\",method=\"Logprobs\",model=\"demo\"}"));
  };
  std::pair<int64_t, int64_t> counts;
  for (int attempt = 0; attempt < 500; ++attempt) {
    counts = {answered(a), answered(b)};
    if (counts.first + counts.second >= total) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return counts;
}

TEST(ClientLoadBalancing, RoundRobinSpreadsCallsOverEveryReplicaPickFirstUsesOne) {
  auto a = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  auto b = ServerProcess::Start({"--model=demo=" + DemoModelDir()});
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  // Two addresses behind one target, as a headless service's DNS name resolves to its pods.
  const std::string target = absl::StrCat("ipv4:127.0.0.1:", (*a)->port(), ",127.0.0.1:", (*b)->port());
  const client::LogprobsOptions call{.model = "demo", .prompt = "a b", .target = " c"};
  auto round_robin = Connect(target, {.load_balancing = "round_robin"});
  // The first calls may find only one connection ready (a handshake can lag on a loaded machine): call
  // until both replicas have answered, then 20 calls must go in turn.
  int64_t calls = 0;
  std::pair<int64_t, int64_t> warm{0, 0};
  while ((warm.first == 0 || warm.second == 0) && calls < 200) {
    ASSERT_THAT(round_robin->GetLogprobs(call), IsOk());
    warm = LogprobsAnswered(**a, **b, ++calls);
  }
  for (int i = 0; i < 20; ++i) ASSERT_THAT(round_robin->GetLogprobs(call), IsOk());
  const auto [a_rr, b_rr] = LogprobsAnswered(**a, **b, calls + 20);
  EXPECT_EQ(a_rr + b_rr, calls + 20);
  EXPECT_GE(a_rr - warm.first, 9) << a_rr - warm.first << " / " << b_rr - warm.second;
  EXPECT_GE(b_rr - warm.second, 9) << a_rr - warm.first << " / " << b_rr - warm.second;
  auto pick_first = Connect(target, {.load_balancing = "pick_first"});
  for (int i = 0; i < 20; ++i) ASSERT_THAT(pick_first->GetLogprobs(call), IsOk());
  const auto [a_all, b_all] = LogprobsAnswered(**a, **b, calls + 40);
  EXPECT_EQ(a_all + b_all, calls + 40);
  EXPECT_TRUE(a_all - a_rr == 20 || b_all - b_rr == 20) << a_all - a_rr << " / " << b_all - b_rr;
  EXPECT_THAT(AttributionClient::Connect({.target = target, .load_balancing = "random"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace attribution
