// SPDX-License-Identifier: Apache-2.0
// The batch runner (client/batch/batch_runner.h) against fake servers on loopback that answer what a test
// sets: servers' bytes that are not UTF-8, requests over a gRPC message limit, rows of another model,
// choices no probability can rank.
#include "client/batch/batch_runner.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "attribution/v1/attribution.grpc.pb.h"
#include "tests/testing/fake_attribution_service.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

namespace v1 = ::attribution::v1;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using nlohmann::json;
using ::testing::HasSubstr;

// One prompt token, one feature, its value 0.5.
grpc::Status OneFeature(const v1::AttributeRequest&, v1::AttributeResponse* out) {
  out->add_prompt_tokens()->set_text("Is");
  v1::Feature* feature = out->add_features();
  feature->set_token_end(1);
  feature->set_text("Is");
  out->add_sequence_attribution(0.5);
  return grpc::Status::OK;
}

// The target's tokens as an answer lists them: its ids, or one token for a text.
template <typename AddToken>
void AddTarget(const v1::Input& target, AddToken add) {
  if (target.token_ids().empty()) {
    add()->set_id(1);
    return;
  }
  for (int64_t id : target.token_ids()) add()->set_id(id);
}

// Answers with the handlers a test sets; counts the calls.
class FakeService final : public v1::AttributionService::Service {
 public:
  std::function<grpc::Status(const v1::AttributeRequest&, v1::AttributeResponse*)> attribute = OneFeature;
  // When set, answers Attribute instead of `attribute`, seeing the call's context.
  std::function<grpc::Status(grpc::ServerContext*, const v1::AttributeRequest&, v1::AttributeResponse*)>
      attribute_in_context;
  std::function<grpc::Status(const v1::LogprobsRequest&, v1::LogprobsResponse*)> logprobs;
  v1::ListModelsResponse models;
  std::atomic<int> attribute_calls = 0;
  std::atomic<int> list_models_calls = 0;

  grpc::Status Attribute(grpc::ServerContext* context, const v1::AttributeRequest* in,
                         v1::AttributeResponse* out) override {
    ++attribute_calls;
    grpc::Status status = attribute_in_context ? attribute_in_context(context, *in, out) : attribute(*in, out);
    // As the server's, an answer is of the method and target asked for (the client checks it).
    if (out->method() == v1::METHOD_UNSPECIFIED) out->set_method(in->method());
    if (out->target_tokens_size() == 0) AddTarget(in->target(), [&] { return out->add_target_tokens(); });
    return status;
  }
  grpc::Status Logprobs(grpc::ServerContext*, const v1::LogprobsRequest* in, v1::LogprobsResponse* out) override {
    grpc::Status status = logprobs(*in, out);
    if (out->target_size() == 0) {
      AddTarget(in->target(), [&] {
        v1::Token* token = out->add_target()->mutable_token();
        token->set_log_prob(static_cast<float>(out->total_log_prob()));
        return token;
      });
    }
    return status;
  }
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*, v1::ListModelsResponse* out) override {
    ++list_models_calls;
    *out = models;
    return grpc::Status::OK;
  }
};

class BatchRunner : public ::testing::Test {
 protected:
  // Starts the fake server (accepting requests up to `max_request_bytes`) and the job's client of it.
  void Start(int max_request_bytes = -1) {
    v1::ModelInfo* model = service_.models.add_models();
    model->set_name("demo");
    model->set_architecture("llama");
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    builder.SetMaxReceiveMessageSize(max_request_bytes);
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> clients =
        ConnectToServers({"127.0.0.1:" + std::to_string(port)}, {});
    ASSERT_THAT(clients, IsOk());
    owned_ = std::move(*clients);
    for (auto& client : owned_) clients_.push_back(client.get());
  }
  void TearDown() override {
    owned_.clear();
    if (server_) server_->Shutdown();
  }

  // Runs `rows` with the job's defaults on model "demo" into out.jsonl; returns the summary.
  absl::StatusOr<JobSummary> Run(const std::vector<BatchRow>& rows, RunnerOptions options = {}) {
    json settings = JobDefaults();
    settings["model"] = "demo";
    const RowsInMemory in_memory(rows);
    absl::StatusOr<ModelFingerprints> fingerprints = FingerprintModels(in_memory, settings, clients_);
    if (!fingerprints.ok()) return fingerprints.status();
    absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(output_);
    if (!log.ok()) return log.status();
    options.initial_backoff = absl::Milliseconds(1);
    std::ostringstream progress;
    return RunJob(in_memory, settings, *fingerprints, clients_, **log, options, progress);
  }
  std::vector<json> Results() const {
    std::vector<json> results;
    std::ifstream in(output_);
    for (std::string line; std::getline(in, line);) results.push_back(json::parse(line));
    return results;
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<AttributionClient>> owned_;
  std::vector<AttributionClient*> clients_;
  TempDir dir_;
  const std::string output_ = dir_.File("out.jsonl");
};

// A server's error message that is not UTF-8 aborted the job (json::type_error 316 where the line was written).
TEST_F(BatchRunner, AMessageThatIsNotUtf8IsWrittenWithReplacementCharacters) {
  Start();
  service_.attribute = [](const v1::AttributeRequest&, v1::AttributeResponse*) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad bytes \xff\xfe here");
  };
  ASSERT_THAT(Run({{.id = "r0", .prompt = "Is it warm?", .target = " Yes"}}), IsOk());
  const std::vector<json> results = Results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["error"]["message"], "bad bytes \xEF\xBF\xBD\xEF\xBF\xBD here");
}

// A request over the server's message limit failed RESOURCE_EXHAUSTED, was retried as load, recorded for a
// rerun and the job exited 3 on every rerun: it is the row's final error, tried once, kept on resume. The
// servers' own RESOURCE_EXHAUSTED (load) is still retried.
TEST_F(BatchRunner, ARequestOverTheMessageLimitIsTheRowsFinalError) {
  Start(/*max_request_bytes=*/4096);
  ASSERT_THAT(Run({{.id = "big", .prompt = std::string(5000, 'a'), .target = " Yes"},
                   {.id = "small", .prompt = "Is it warm?", .target = " Yes"}}),
              IsOk());
  std::vector<json> results = Results();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0]["error"]["code"], "RESOURCE_EXHAUSTED");
  EXPECT_THAT(results[0]["error"]["message"].get<std::string>(),
              AllOf(HasSubstr("Received message larger than max"), HasSubstr("which no retry lifts: shorten")));
  EXPECT_EQ(results[0]["attempts"], 1);
  EXPECT_EQ(results[1]["status"], "ok");
  absl::StatusOr<std::unique_ptr<ResultLog>> reopened = ResultLog::Open(output_);
  ASSERT_THAT(reopened, IsOk());
  EXPECT_TRUE((*reopened)->done().contains("big"));
  reopened->reset();

  service_.attribute = [](const v1::AttributeRequest&, v1::AttributeResponse*) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
  };
  ASSERT_EQ(std::remove(output_.c_str()), 0);
  absl::StatusOr<JobSummary> busy = Run({{.id = "r0", .prompt = "Is it warm?", .target = " Yes"}}, {.max_attempts = 3});
  ASSERT_THAT(busy, IsOk());
  EXPECT_EQ(busy->to_retry, 1);
  EXPECT_EQ(Results()[0]["attempts"], 3);
}

// A results file that stops taking lines (here past the file-size limit; a full disk alike) ends the job with
// its error at once, cancelling the calls in flight: the job waited for every answer (up to --max_attempts x
// --timeout) and then threw them away.
TEST_F(BatchRunner, AResultsFileThatCannotBeWrittenCancelsTheCallsInFlight) {
  Start();
  std::atomic<int> cancelled = 0;
  service_.attribute_in_context = [&](grpc::ServerContext* context, const v1::AttributeRequest& in,
                                      v1::AttributeResponse* out) {
    if (in.prompt().text() == "first") {  // answered once the other three are in flight here (5 s at most)
      for (int i = 0; i < 500 && service_.attribute_calls < 4; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return OneFeature(in, out);
    }
    for (int i = 0; i < 6000 && !context->IsCancelled(); ++i) {  // the others run until cancelled (a minute at most)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (context->IsCancelled()) ++cancelled;
    return OneFeature(in, out);
  };
  std::signal(SIGXFSZ, SIG_IGN);  // as the tools do: the write fails with EFBIG
  struct rlimit unlimited, small;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &unlimited), 0);
  small = unlimited;
  small.rlim_cur = 64;  // less than one result line
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  absl::StatusOr<JobSummary> summary = Run({{.id = "a", .prompt = "first", .target = " Yes"},
                                            {.id = "b", .prompt = "second", .target = " Yes"},
                                            {.id = "c", .prompt = "third", .target = " Yes"},
                                            {.id = "d", .prompt = "fourth", .target = " Yes"}},
                                           {.window = 4});
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &unlimited), 0);
  EXPECT_THAT(summary.status(), StatusIs(absl::StatusCode::kInternal, HasSubstr("File too large")));
  server_->Shutdown();  // waits for the handlers
  EXPECT_EQ(cancelled, 3);
}

// Each of the job's tries is one call: gRPC's own retries of UNAVAILABLE made each four (--max_attempts=2 sent 8
// calls to a server answering UNAVAILABLE, and the result said 2).
TEST_F(BatchRunner, EachTryIsOneCall) {
  Start();
  service_.attribute = [](const v1::AttributeRequest&, v1::AttributeResponse*) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; retry on another replica");
  };
  absl::StatusOr<JobSummary> summary =
      Run({{.id = "r0", .prompt = "Is it warm?", .target = " Yes"}}, {.max_attempts = 2});
  ASSERT_THAT(summary, IsOk());
  EXPECT_EQ(Results()[0]["attempts"], 2);
  EXPECT_EQ(service_.attribute_calls, 2);
}

// A model that gives every choice a NaN or zero probability predicts nothing: the first choice was reported
// as the prediction, and as correct when it was the label.
TEST_F(BatchRunner, ChoicesWithoutAFinitePositiveProbabilityHaveNoPrediction) {
  Start();
  for (const double log_prob : {std::nan(""), -std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(log_prob);
    service_.logprobs = [&](const v1::LogprobsRequest&, v1::LogprobsResponse* out) {
      out->set_total_log_prob(log_prob);
      return grpc::Status::OK;
    };
    std::remove(output_.c_str());
    ASSERT_THAT(Run({{.id = "labelled", .prompt = "Is it warm?", .choices = {" Yes", " No"}, .label = " Yes"},
                     {.id = "unlabelled", .prompt = "Is it warm?", .choices = {" Yes", " No"}}}),
                IsOk());
    const std::vector<json> results = Results();
    ASSERT_EQ(results.size(), 2u);
    EXPECT_TRUE(results[0]["predicted"].is_null()) << results[0].dump();
    EXPECT_TRUE(results[0]["correct"].is_null()) << results[0].dump();
    EXPECT_EQ(results[0]["status"], "ok");  // the label's attribution
    EXPECT_TRUE(results[1]["predicted"].is_null()) << results[1].dump();
    EXPECT_EQ(results[1]["error"]["code"], "FAILED_PRECONDITION");
    EXPECT_THAT(results[1]["error"]["message"].get<std::string>(), HasSubstr("no prediction to attribute"));
  }
  // One choice without a probability: the other is the prediction.
  service_.logprobs = [](const v1::LogprobsRequest& request, v1::LogprobsResponse* out) {
    out->set_total_log_prob(request.target().text() == " Yes" ? std::nan("") : -1.0);
    return grpc::Status::OK;
  };
  std::remove(output_.c_str());
  ASSERT_THAT(Run({{.id = "mixed", .prompt = "Is it warm?", .choices = {" Yes", " No"}, .label = " Yes"}}), IsOk());
  const json mixed = Results().at(0);
  EXPECT_EQ(mixed["predicted"], " No");
  EXPECT_EQ(mixed["correct"], false);
  EXPECT_EQ(mixed["choice_probs_renormalised"], json::parse("[null, 1.0]"));
}

// A job reads each row again when it runs it: an input rewritten since the rows were checked (a job rerun
// on a file still being written) stops the job before a row of the new file is sent or its line written.
TEST_F(BatchRunner, AnInputChangedSinceItWasCheckedStopsTheJob) {
  Start();
  const std::string input = dir_.File("rows.jsonl");
  std::ofstream(input) << R"({"id": "a", "prompt": "Is it warm?", "target": " Yes"})"
                       << "\n"
                       << R"({"id": "b", "prompt": "Is it cold?", "target": " No"})"
                       << "\n";
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(input);
  ASSERT_THAT(rows, IsOk());
  std::ofstream(input, std::ios::trunc) << R"({"id": "a", "prompt": "Is it hot?", "target": " Yes"})"
                                        << "\n";
  json settings = JobDefaults();
  settings["model"] = "demo";
  absl::StatusOr<ModelFingerprints> fingerprints = FingerprintModels(**rows, settings, clients_);
  ASSERT_THAT(fingerprints, IsOk());
  absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(output_);
  ASSERT_THAT(log, IsOk());
  std::ostringstream progress;
  EXPECT_THAT(RunJob(**rows, settings, *fingerprints, clients_, **log, {}, progress).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rows.jsonl: the input changed")));
  EXPECT_EQ(service_.attribute_calls, 0);
  EXPECT_TRUE(Results().empty());
}

// A choice given twice split its probability with itself (" Yes", " Yes" -> 0.5 / 0.5): the row's
// INVALID_ARGUMENT naming the choices, before any call.
TEST_F(BatchRunner, AChoiceGivenTwiceIsTheRowsError) {
  Start();
  ASSERT_THAT(Run({{.id = "twice", .prompt = "Is it warm?", .choices = {" Yes", " No", " Yes"}}}), IsOk());
  const json result = Results().at(0);
  EXPECT_EQ(result["error"]["code"], "INVALID_ARGUMENT") << result.dump();
  EXPECT_THAT(result["error"]["message"].get<std::string>(),
              HasSubstr("choices: choice 3 (\" Yes\") repeats choice 1"));
  EXPECT_EQ(result["attempts"], 0);
}

// A row naming its own model recorded the job model's fingerprint (and request id): each row records the
// fingerprint of the model it ran on, the servers asked once per model; a model no server holds fails
// only its rows.
TEST_F(BatchRunner, ARowOnItsOwnModelRecordsThatModelsFingerprint) {
  v1::ModelInfo* other = service_.models.add_models();
  other->set_name("other");
  other->set_architecture("qwen2");
  Start();
  const json other_settings = {{"model", "other"}};
  ASSERT_THAT(Run({{.id = "job", .prompt = "Is it warm?", .target = " Yes"},
                   {.id = "own", .prompt = "Is it warm?", .target = " Yes", .settings = other_settings},
                   {.id = "own2", .prompt = "Is it cold?", .target = " Yes", .settings = other_settings},
                   {.id = "gone", .prompt = "Is it warm?", .target = " Yes", .settings = {{"model", "gone"}}}}),
              IsOk());
  EXPECT_EQ(service_.list_models_calls, 3);  // demo, other, gone
  std::string demo = "demo", named_other = "other";
  const absl::StatusOr<std::string> demo_fingerprint = ModelFingerprint(clients_, demo);
  const absl::StatusOr<std::string> other_fingerprint = ModelFingerprint(clients_, named_other);
  ASSERT_THAT(demo_fingerprint, IsOk());
  ASSERT_THAT(other_fingerprint, IsOk());
  ASSERT_NE(*demo_fingerprint, *other_fingerprint);
  const std::vector<json> results = Results();
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[0]["model_fingerprint"], *demo_fingerprint);
  EXPECT_EQ(results[1]["model_fingerprint"], *other_fingerprint);
  EXPECT_EQ(results[1]["model"], "other");
  EXPECT_EQ(results[2]["model_fingerprint"], *other_fingerprint);
  EXPECT_EQ(results[3]["error"]["code"], "NOT_FOUND");
  EXPECT_THAT(results[3]["error"]["message"].get<std::string>(), HasSubstr("no model \"gone\""));
  // The same job resumes over these results.
  EXPECT_THAT(Run({{.id = "job", .prompt = "Is it warm?", .target = " Yes"},
                   {.id = "own", .prompt = "Is it warm?", .target = " Yes", .settings = other_settings},
                   {.id = "own2", .prompt = "Is it cold?", .target = " Yes", .settings = other_settings},
                   {.id = "gone", .prompt = "Is it warm?", .target = " Yes", .settings = {{"model", "gone"}}}}),
              IsOk());
}

// A gRPC server without the attribution service (a wrong port in --server) failed the job with gRPC's bare
// "Method not found!", naming neither the server nor what it lacked.
TEST_F(BatchRunner, AServerWithoutTheServiceIsNamed) {
  Start();
  test_support::FakeAttributionServer other(/*serve_attribution=*/false);
  ASSERT_TRUE(other.ok());
  absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> clients = ConnectToServers({other.address()}, {});
  ASSERT_THAT(clients, IsOk());
  std::string model = "demo";
  EXPECT_THAT(ModelFingerprint({(*clients)[0].get()}, model),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("server 1 (" + other.address() +
                                                                   ") is no attribution server (it lacks "
                                                                   "attribution.v1.AttributionService)")));
}

// A thread per row in flight: 40,000 failed to start and aborted the job (std::system_error).
TEST_F(BatchRunner, AWindowPastTheLimitIsRefused) {
  Start();
  EXPECT_THAT(Run({{.id = "r0", .prompt = "Is it warm?", .target = " Yes"}}, {.window = 40000}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("window 40000 must lie in [1, 1024]")));
  EXPECT_THAT(Run({{.id = "r0", .prompt = "Is it warm?", .target = " Yes"}}, {.window = kMaxWindow}), IsOk());
}

// A rolling update, a resume of an older file: rows of servers that do not report the settings their method ran
// with (before 146fc40) mixed with rows that do, unchecked and unsaid (KernelSHAP at 10 and 25 samples, 0.031
// apart). They are counted and named.
TEST_F(BatchRunner, RowsOfServersThatDoNotReportTheirSettingsAreNamedBesideRowsThatDo) {
  std::atomic<int> calls = 0;
  service_.attribute = [&](const v1::AttributeRequest& in, v1::AttributeResponse* out) {
    if (calls++ % 2 == 0) {  // a current server's answer
      out->mutable_settings_used()->set_n_samples(25);
      out->mutable_stats()->set_server_build("146fc405e291");
    }
    return OneFeature(in, out);
  };
  Start();
  const std::vector<BatchRow> rows = {{.id = "r0", .prompt = "Is it warm?", .target = " Yes"},
                                      {.id = "r1", .prompt = "Is it cold?", .target = " Yes"},
                                      {.id = "r2", .prompt = "Is it wet?", .target = " Yes"},
                                      {.id = "r3", .prompt = "Is it dry?", .target = " Yes"}};
  absl::StatusOr<JobSummary> summary = Run(rows, {.window = 1});
  ASSERT_THAT(summary, IsOk());
  EXPECT_THAT(summary->unchecked_settings, HasSubstr("2 rows (the first \"r1\") were answered by servers that do not "
                                                     "report the settings their method ran with"));
  std::ostringstream printed;
  PrintSummary(*summary, printed);
  EXPECT_THAT(printed.str(), HasSubstr("  warning: 2 rows"));
  // A resume counts the rows the file holds: two answered now, by a server that reports, beside two that did not.
  const std::vector<json> first = Results();
  std::ofstream(output_, std::ios::trunc) << first[0].dump() << "\n" << first[1].dump() << "\n";
  service_.attribute = [](const v1::AttributeRequest& in, v1::AttributeResponse* out) {
    out->mutable_settings_used()->set_n_samples(25);
    out->mutable_stats()->set_server_build("146fc405e291");
    return OneFeature(in, out);
  };
  summary = Run(rows, {.window = 1});
  ASSERT_THAT(summary, IsOk());
  EXPECT_THAT(summary->unchecked_settings, HasSubstr("1 row (the first \"r1\") was answered"));
}

TEST_F(BatchRunner, RowsThatCannotBeCheckedAloneOrOfMethodsThatReadNoSettingsAreNotNamed) {
  Start();  // OneFeature: an older server's answers only
  const std::vector<BatchRow> rows = {{.id = "r0", .prompt = "Is it warm?", .target = " Yes"},
                                      {.id = "r1", .prompt = "Is it cold?", .target = " Yes"}};
  absl::StatusOr<JobSummary> summary = Run(rows);
  ASSERT_THAT(summary, IsOk());
  EXPECT_EQ(summary->unchecked_settings, "");
  // A current server's answers of a method that reads no settings (saliency): nothing to check.
  std::remove(output_.c_str());
  service_.attribute = [](const v1::AttributeRequest& in, v1::AttributeResponse* out) {
    if (in.prompt().text() == "Is it warm?") out->mutable_stats()->set_server_build("146fc405e291");
    return OneFeature(in, out);
  };
  summary = Run(rows);
  ASSERT_THAT(summary, IsOk());
  EXPECT_EQ(summary->unchecked_settings, "");
}

// The job's settings are checked against the tightest of the servers' limits, not the last server's: an n_samples
// over one server's limit failed half the rows, and the errors stayed in the file.
TEST(ModelFingerprint, TakesTheTightestLimitsAndNamesTheServersWhereTheyDiffer) {
  std::vector<std::unique_ptr<FakeService>> services;
  std::vector<std::unique_ptr<grpc::Server>> servers;
  std::vector<std::string> targets;
  for (int max_samples : {10, 1024, 10}) {
    auto service = std::make_unique<FakeService>();
    v1::ModelInfo* model = service->models.add_models();
    model->set_name("demo");
    model->set_architecture("llama");
    model->mutable_limits()->set_max_steps(512);
    model->mutable_limits()->set_max_samples(max_samples);
    grpc::ServerBuilder builder;
    builder.RegisterService(service.get());
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    servers.push_back(builder.BuildAndStart());
    ASSERT_NE(servers.back(), nullptr);
    targets.push_back("127.0.0.1:" + std::to_string(port));
    services.push_back(std::move(service));
  }
  for (const std::vector<std::string>& order : {std::vector<std::string>{targets[1], targets[0]}, targets}) {
    absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> clients = ConnectToServers(order, {});
    ASSERT_THAT(clients, IsOk());
    std::vector<AttributionClient*> pointers;
    for (auto& client : *clients) pointers.push_back(client.get());
    std::string model = "demo", differing;
    ModelInfo info;
    ASSERT_THAT(ModelFingerprint(pointers, model, nullptr, &info, nullptr, &differing), IsOk());
    EXPECT_EQ(info.max_samples, 10);
    EXPECT_EQ(info.max_steps, 512);
    EXPECT_THAT(differing, HasSubstr("(" + targets[1] + "): max_steps 512, max_samples 1024"));
    EXPECT_THAT(differing, HasSubstr("(" + targets[0] + "): max_steps 512, max_samples 10"));
  }
  std::vector<AttributionClient*> alike;
  absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> clients =
      ConnectToServers({targets[0], targets[2]}, {});
  ASSERT_THAT(clients, IsOk());
  for (auto& client : *clients) alike.push_back(client.get());
  std::string model = "demo", differing = "unset";
  ASSERT_THAT(ModelFingerprint(alike, model, nullptr, nullptr, nullptr, &differing), IsOk());
  EXPECT_EQ(differing, "");
  for (auto& server : servers) server->Shutdown();
}

// Ids reach the terminal in the summary's worst rows: an escape sequence in one is printed escaped.
TEST(PrintSummary, EscapesControlCharactersInIds) {
  JobSummary summary{.rows = 1, .done = 1, .abs_deltas = {0.5}, .worst_deltas = {{0.5, "r\x1b[2J"}}};
  std::ostringstream out;
  PrintSummary(summary, out);
  EXPECT_THAT(out.str(), HasSubstr("0.5  r\\e[2J\n"));
  EXPECT_THAT(out.str(), ::testing::Not(HasSubstr("\x1b")));
}

}  // namespace
}  // namespace attribution::client::batch
