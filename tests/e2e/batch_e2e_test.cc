// SPDX-License-Identifier: Apache-2.0
// attribution-batch against real servers on the default model, with a generated data set of its
// warmth questions (known answers): results equal the same requests sent one by one, a job killed
// with SIGKILL three times and resumed ends with the output of an uninterrupted run, two servers
// share the work (and one may die), shards merge into the single run, bad rows are recorded; hostile
// inputs and misuse (stray CSV quotes, no servers, directories, another job's results or shards, rows
// retried on resume, odd result lines) end in a clear error or the right file, never lost rows; bad
// flags exit 2, and a job that leaves rows for a rerun exits 3.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/batch_runner.h"
#include "client/batch/html_pages.h"
#include "client/batch/parquet_writer.h"
#include "client/batch/result_log.h"
#include "tests/testing/batch_process.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using nlohmann::json;
using test_support::CountLines;
using test_support::MetricValue;
using test_support::ReadFile;
using test_support::ReadResults;
using test_support::RunBatch;
using test_support::ServerProcess;
using test_support::TempDir;
using ::testing::HasSubstr;

constexpr int kRows = 2000;

// Every third row multiple choice (" Yes" / " No" with the known answer as label), the others with
// the known answer as target; one row with an empty prompt, which the server refuses.
std::string WriteRows(const TempDir& dir) {
  const std::vector<std::string> objects = {"cup", "box", "ball", "hat", "coat", "car", "door", "lamp", "kite", "boat"};
  const std::vector<std::pair<std::string, bool>> colours = {{"red", true},   {"orange", true}, {"gold", true},
                                                             {"blue", false}, {"green", false}, {"grey", false}};
  const std::string path = dir.File("rows.jsonl");
  std::ofstream out(path);
  for (int i = 0; i < kRows; ++i) {
    const auto& [colour, warm] = colours[i % colours.size()];
    const std::string& object = objects[(i / colours.size()) % objects.size()];
    json row = {{"id", absl::StrCat("q", i)},
                {"prompt", absl::StrCat("The ", object, " is ", colour, ". Q: Is it warm? A:")}};
    if (i == 7) row["prompt"] = "";
    if (i % 3 == 0) {
      row["choices"] = {" Yes", " No"};
      row["label"] = warm ? " Yes" : " No";
    } else {
      row["target"] = warm ? " Yes" : " No";
    }
    out << row.dump() << "\n";
  }
  return path;
}

// Same rows in the same order, each once; same statuses, tokens and choices; numbers equal up to the
// float noise of different batch compositions (1e-5 of the value's scale).
void ExpectSameResults(const std::vector<json>& actual, const std::vector<json>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(expected[i]["id"].get<std::string>());
    ASSERT_EQ(actual[i]["id"], expected[i]["id"]);
    for (const char* key : {"status", "error", "prompt_tokens", "target_tokens", "features", "predicted", "request_id",
                            "settings_hash"}) {
      EXPECT_EQ(actual[i].value(key, json()), expected[i].value(key, json())) << key;
    }
    for (const char* key : {"attribution", "choice_probs"}) {
      const json a = actual[i].value(key, json::array()), e = expected[i].value(key, json::array());
      ASSERT_EQ(a.size(), e.size()) << key;
      for (size_t j = 0; j < e.size(); ++j) {
        EXPECT_NEAR(a[j].get<double>(), e[j].get<double>(), 1e-5 * std::max(1.0, std::abs(e[j].get<double>()))) << key;
      }
    }
  }
}

class Batch : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    rows_ = new std::string(WriteRows(*dir_));
    auto a = ServerProcess::Start({});
    auto b = ServerProcess::Start({});
    start_status_ = a.ok() ? b.status() : a.status();
    if (!start_status_.ok()) return;
    a_ = a->release();
    b_ = b->release();
    // The uninterrupted single-server run every test compares with.
    const std::string reference = dir_->File("reference.jsonl");
    const absl::Time start = absl::Now();
    reference_exit_ = RunBatch({"--input=" + *rows_, "--output=" + reference, "--server=" + a_->address(),
                                "--method=saliency", "--progress=log"},
                               dir_->File("reference.log"));
    reference_seconds_ = absl::ToDoubleSeconds(absl::Now() - start);
    reference_results_ = new std::vector<json>(ReadResults(reference));
  }
  static void TearDownTestSuite() {
    delete a_;
    delete b_;
    delete reference_results_;
    delete rows_;
    delete dir_;
  }
  void SetUp() override {
    ASSERT_THAT(start_status_, IsOk());
    ASSERT_EQ(reference_exit_, 0) << ReadFile(dir_->File("reference.log"));
  }
  std::vector<std::string> Args(const std::string& output, const std::string& servers) const {
    return {"--input=" + *rows_, "--output=" + output, "--server=" + servers, "--method=saliency", "--progress=log"};
  }
  // Writes to `path` the first `count` rows of the data set that `keep` accepts (it may change them);
  // returns how many it wrote.
  static int WriteSubset(const std::string& path, int count, const std::function<bool(json&)>& keep) {
    std::ifstream rows(*rows_);
    std::ofstream subset(path);
    int kept = 0;
    for (std::string line; std::getline(rows, line) && kept < count;) {
      json row = json::parse(line);
      if (!keep(row)) continue;
      subset << row.dump() << "\n";
      ++kept;
    }
    return kept;
  }

  static TempDir* dir_;
  static std::string* rows_;
  static absl::Status start_status_;
  static ServerProcess *a_, *b_;
  static int reference_exit_;
  static double reference_seconds_;
  static std::vector<json>* reference_results_;
};

TempDir* Batch::dir_ = nullptr;
std::string* Batch::rows_ = nullptr;
absl::Status Batch::start_status_;
ServerProcess* Batch::a_ = nullptr;
ServerProcess* Batch::b_ = nullptr;
int Batch::reference_exit_ = -1;
double Batch::reference_seconds_ = 0;
std::vector<json>* Batch::reference_results_ = nullptr;

TEST_F(Batch, ResultsEqualTheSameRequestsSentOneByOne) {
  const std::vector<json>& results = *reference_results_;
  ASSERT_EQ(results.size(), static_cast<size_t>(kRows));
  std::cout << "[ batch    ] " << kRows << " rows in " << reference_seconds_ << " s\n";
  auto client = client::AttributionClient::Connect({.target = a_->address()});
  ASSERT_THAT(client, IsOk());
  int correct = 0, scored = 0;
  for (int i = 0; i < kRows; ++i) {
    const json& result = results[i];
    if (i == 7) {
      EXPECT_EQ(result["status"], "error");
      EXPECT_EQ(result["error"]["code"], "INVALID_ARGUMENT");
      EXPECT_THAT(result["error"]["message"].get<std::string>(), HasSubstr("prompt"));
      continue;
    }
    ASSERT_EQ(result["status"], "ok") << result.dump();
    if (result.contains("correct")) {
      ++scored;
      correct += result["correct"].get<bool>();
    }
    if (i % 97 != 1 && i % 97 != 3) continue;  // a sample of both kinds, one by one
    std::ifstream rows(*rows_);
    json row;
    for (std::string line; std::getline(rows, line);) {
      row = json::parse(line);
      if (row["id"] == result["id"]) break;
    }
    const std::string target =
        row.contains("target") ? row["target"].get<std::string>() : result["label"].get<std::string>();
    auto alone = (*client)->Attribute({.model = result["model"].get<std::string>(),
                                       .prompt = row["prompt"].get<std::string>(),
                                       .target = target,
                                       .method = "saliency"});
    ASSERT_THAT(alone, IsOk());
    ExpectSameResults({json{{"id", result["id"]}, {"attribution", alone->sequence}}},
                      {json{{"id", result["id"]}, {"attribution", result["attribution"]}}});
    if (row.contains("choices")) {
      for (size_t c = 0; c < 2; ++c) {
        auto logprobs = (*client)->GetLogprobs({.model = result["model"],
                                                .prompt = row["prompt"].get<std::string>(),
                                                .target = row["choices"][c].get<std::string>()});
        ASSERT_THAT(logprobs, IsOk());
        EXPECT_NEAR(std::exp(logprobs->total_log_prob), result["choice_probs"][c].get<double>(), 1e-6);
      }
    }
  }
  // The default model knows its warmth questions.
  EXPECT_GT(correct, scored * 9 / 10);
}

// Each row's calls carry its request id (x-request-id metadata) into the server's log lines, the
// failed row's too: one Attribute call per row, plus one Logprobs call per choice (a failed row: its one
// failed call).
TEST_F(Batch, TheServerLogsEachCallWithItsRowsRequestId) {
  std::map<std::string, std::map<std::string, int>> calls;  // request id -> rpc -> count
  std::istringstream log(a_->Log());
  for (std::string line; std::getline(log, line);) {
    const json entry = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (entry.is_object() && entry.contains("request_id")) {
      ++calls[entry["request_id"].get<std::string>()][entry["rpc"].get<std::string>()];
    }
  }
  std::ifstream rows(*rows_);
  std::map<std::string, size_t> choices;
  for (std::string line; std::getline(rows, line);) {
    const json row = json::parse(line);
    choices[row["id"].get<std::string>()] = row.value("choices", json::array()).size();
  }
  // Rows with the same model, settings and input share one id (the request is the same).
  std::map<std::string, std::map<std::string, int>> expected;
  for (const json& result : *reference_results_) {
    const std::string id = result["request_id"].get<std::string>();
    if (result["status"] == "error") {  // its first call failed, which one depends on the row
      EXPECT_EQ(calls[id].size(), 1u) << result["id"];
      calls.erase(id);
      continue;
    }
    ++expected[id]["Attribute"];
    if (const size_t n = choices[result["id"].get<std::string>()]; n > 0)
      expected[id]["Logprobs"] += static_cast<int>(n);
  }
  EXPECT_EQ(calls, expected);
}

// The Parquet writer's corners, read back by pyarrow: nulls and missing keys in every type, empty lists,
// empty and null inner lists, null elements (NaN in JSON), long lists (more than one level run),
// booleans past a byte, non-ASCII strings; a value of the wrong type is refused naming its row and column.
TEST(ResultsParquet, EveryShapeReadsBackEqual) {
  TempDir dir;
  std::vector<json> rows;
  for (int i = 0; i < 20; ++i) {
    json row = {{"id", absl::StrCat("r", i)}, {"correct", i % 3 == 0}, {"attempts", i - 5}};
    // Seeds are uint64 (the request's type): every one a job accepts exports, 2^63 and up included.
    if (i % 4 != 2) row["seed"] = i % 4 == 0 ? json(18446744073709551615ull) : json(uint64_t{1} << 63 | i);
    if (i == 5) row["seed"] = 0;
    if (i % 4 == 1) row["objective"] = nullptr;
    if (i % 4 != 1) row["objective"] = -0.5 * i;
    if (i % 5 != 2) row["features"] = json::array({"caf\u00e9", "", "\u2581No"});
    if (i % 5 == 3) row["features"] = json::array();
    row["attribution"] = json::array();
    for (int k = 0; k < i; ++k) row["attribution"].push_back(k * 0.25);
    if (i % 7 == 6) row["attribution"].push_back(nullptr);  // a NaN, as JSON writes it
    if (i % 6 == 4) row["token_matrix"] = json::array({json::array(), json::array({1.5, nullptr}), nullptr});
    if (i % 6 == 5) row["token_matrix"] = json::array();
    if (i % 6 == 0) row["token_matrix"] = json::array({json::array({0.5}), json::array({1.0, 2.0, 3.0})});
    if (i == 7) row["error"] = {{"code", "INVALID_ARGUMENT"}, {"message", "prompt: empty"}};
    rows.push_back(row);
  }
  const std::string jsonl = dir.File("rows.jsonl"), parquet = dir.File("rows.parquet"), log = dir.File("check.log");
  {
    std::ofstream out(jsonl);
    for (const json& row : rows) out << row.dump() << "\n";
  }
  ASSERT_THAT(client::batch::WriteResultsParquet(jsonl, parquet), IsOk());
  EXPECT_EQ(std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", parquet, " ", jsonl, " > ", log, " 2>&1").c_str()),
            0)
      << ReadFile(log);
  EXPECT_THAT(ReadFile(log), HasSubstr("seed: uint64"));
  EXPECT_THAT(ReadFile(log), HasSubstr("20 rows in 1 row groups"));
  // The table is written a row group at a time (it held every row's values at once): groups of 3 rows, and
  // groups cut by their bytes (here every row), each read back by pyarrow on its own with the same values.
  for (const auto& [limits, groups] :
       std::vector<std::pair<client::batch::ParquetRowGroupLimits, int>>{{{.rows = 3}, 7}, {{.bytes = 1}, 20}}) {
    const std::string grouped = dir.File(absl::StrCat("rows_", groups, ".parquet"));
    ASSERT_THAT(client::batch::WriteResultsParquet(jsonl, grouped, limits), IsOk());
    EXPECT_EQ(
        std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", grouped, " ", jsonl, " > ", log, " 2>&1").c_str()), 0)
        << ReadFile(log);
    EXPECT_THAT(ReadFile(log), HasSubstr(absl::StrCat("20 rows in ", groups, " row groups")));
  }
  // A job of no rows: a table of its columns and no row group.
  const std::string empty = dir.File("empty.jsonl"), empty_parquet = dir.File("empty.parquet");
  std::ofstream(empty).flush();
  ASSERT_THAT(client::batch::WriteResultsParquet(empty, empty_parquet), IsOk());
  EXPECT_EQ(
      std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", empty_parquet, " ", empty, " > ", log, " 2>&1").c_str()),
      0)
      << ReadFile(log);
  EXPECT_THAT(ReadFile(log), HasSubstr("0 rows in 0 row groups, 43 columns"));
  absl::StatusOr<std::string> refused = client::batch::ParquetFile(
      {{"objective", client::batch::ParquetType::kDouble}}, {json{{"objective", 1.0}}, json{{"objective", "high"}}});
  EXPECT_THAT(refused.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("row 1, column \"objective\"")));
  refused =
      client::batch::ParquetFile({{"seed", client::batch::ParquetType::kInt64}}, {json{{"seed", uint64_t{1} << 63}}});
  EXPECT_THAT(refused.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("64 signed bits")));
  refused = client::batch::ParquetFile({{"seed", client::batch::ParquetType::kUint64}}, {json{{"seed", -1}}});
  EXPECT_THAT(refused.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("64 unsigned bits")));
}

// Settings added after the first release (over_choices, faithfulness, the component rows') leave the settings hash and
// the request ids of a job that does not set them as they were, so results written before still resume.
TEST(BatchSettings, LaterSettingsAtTheirDefaultsKeepTheHash) {
  json before = client::batch::JobDefaults();
  for (const char* later :
       {"over_choices", "faithfulness", "component_method", "metric", "direction", "sites", "granularity"}) {
    before.erase(later);
  }
  before["rule"] = "gausslegendre";  // the first release's default; "default" is the server's choice
  const json now = client::batch::JobDefaults();
  EXPECT_EQ(client::batch::SettingsDigest(now), client::batch::Digest(before));
  json asked = now;
  asked["faithfulness"] = true;
  EXPECT_NE(client::batch::SettingsDigest(asked), client::batch::SettingsDigest(now));
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"component_method", "layer_integrated_gradients"},
                                                        {"metric", "prob"},
                                                        {"direction", "noising"},
                                                        {"sites", "heads,mlp_out"},
                                                        {"granularity", "layer_position_head"}}) {
    json component = now;
    component[key] = value;
    EXPECT_NE(client::batch::SettingsDigest(component), client::batch::SettingsDigest(now)) << key;
  }
  const client::batch::BatchRow row{.id = "r", .prompt = "Q: Is it warm? A:", .target = " Yes"};
  EXPECT_NE(client::batch::RequestId("m", asked, row), client::batch::RequestId("m", now, row));
  // With a tolerance the server's choice is Fejér's second rule, and the old default now asks for other work.
  json tolerance = now, tolerance_old_default = before, tolerance_fejer = now;
  tolerance["completeness_tolerance"] = tolerance_old_default["completeness_tolerance"] =
      tolerance_fejer["completeness_tolerance"] = 1e-3;
  tolerance_fejer["rule"] = "fejer2";
  EXPECT_NE(client::batch::SettingsDigest(tolerance), client::batch::SettingsDigest(tolerance_old_default));
  EXPECT_EQ(client::batch::SettingsDigest(tolerance), client::batch::SettingsDigest(tolerance_fejer));
}

// --over_choices: the attributed quantity is the label's probability renormalised over the row's
// choices, the value the job also reports from each choice's Logprobs call (a separate RPC).
TEST_F(Batch, OverChoicesAttributesTheLabelsProbabilityRenormalisedOverTheChoices) {
  const std::string input = dir_->File("choices.jsonl"), output = dir_->File("over_choices.jsonl");
  // Choices the model gives little of its mass: renormalising over them changes the probability.
  ASSERT_EQ(WriteSubset(input, 30,
                        [](json& row) {
                          if (!row.contains("choices") || !row.contains("label")) return false;
                          row["choices"] = {" red", " blue"};
                          row["label"] = " red";
                          return true;
                        }),
            30);
  ASSERT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + a_->address(), "--method=saliency",
                      "--quantity=prob", "--over_choices", "--progress=log"},
                     dir_->File("over_choices.log")),
            0)
      << ReadFile(dir_->File("over_choices.log"));
  double largest_gap = 0;  // between the renormalised and the vocabulary probability
  for (const json& result : ReadResults(output)) {
    SCOPED_TRACE(result["id"].get<std::string>());
    ASSERT_EQ(result["status"], "ok") << result.dump();
    const auto choices = result["choices"].get<std::vector<std::string>>();
    const size_t label = std::find(choices.begin(), choices.end(), result["label"]) - choices.begin();
    ASSERT_LT(label, choices.size());
    const double renormalised = result["choice_probs_renormalised"][label].get<double>();
    EXPECT_NEAR(result["objective"].get<double>(), renormalised, 1e-5 * std::max(1.0, renormalised));
    largest_gap = std::max(largest_gap, std::abs(renormalised - result["choice_probs"][label].get<double>()));
  }
  EXPECT_GT(largest_gap, 0.1);  // the two quantities differ: the flag changed what was attributed
}

// A job to a completeness tolerance says per row how many points its answer took and whether it got there.
TEST_F(Batch, ToleranceRowsReportTheirPointsAndWhetherTheToleranceWasMet) {
  const std::string input = dir_->File("tolerance.jsonl"), output = dir_->File("tolerance_out.jsonl");
  ASSERT_EQ(WriteSubset(input, 6,
                        [](json& row) { return row.contains("target") && !row["prompt"].get<std::string>().empty(); }),
            6);
  const std::string log = dir_->File("tolerance.log");
  ASSERT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + a_->address(), "--tolerance=1e-3",
                      "--n_steps=512", "--progress=log"},
                     log),
            0)
      << ReadFile(log);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 6u);
  int met = 0;
  for (const json& result : results) {
    SCOPED_TRACE(result.dump());
    ASSERT_EQ(result["status"], "ok");
    // Fejér's second rule, the server's choice with a tolerance: 2^k - 1 points within n_steps 512.
    EXPECT_THAT(result["integration_steps"].get<int>(), ::testing::AnyOf(7, 15, 31, 63, 127, 255, 511));
    ASSERT_TRUE(result["tolerance_met"].is_boolean());
    // Met: |delta| within 1e-3 of f(input) - f(baseline), which is the attributions' sum less delta.
    const double delta = result["convergence_delta"].get<double>();
    const auto attribution = result["attribution"].get<std::vector<double>>();
    const double change = std::accumulate(attribution.begin(), attribution.end(), 0.0) - delta;
    if (result["tolerance_met"].get<bool>()) {
      EXPECT_LE(std::abs(delta), 1e-3 * std::abs(change));
      ++met;
    }
  }
  EXPECT_GT(met, 0);  // on the default model these questions meet 1e-3 at 127-255 points
  const std::string parquet = dir_->File("tolerance.parquet"), check = dir_->File("tolerance_check.log");
  ASSERT_THAT(client::batch::WriteResultsParquet(output, parquet), IsOk());
  EXPECT_EQ(
      std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", parquet, " ", output, " > ", check, " 2>&1").c_str()), 0)
      << ReadFile(check);
}

TEST_F(Batch, KilledThreeTimesAndResumedEndsWithTheUninterruptedOutput) {
  const std::string output = dir_->File("killed.jsonl"), log = dir_->File("killed.log");
  std::mt19937 random(20261201);
  // Each run picks up where the last stopped and is killed once it has added 15-30% of the rows (by
  // progress, not time: a run may be faster than the reference run was), which leaves rows for the final
  // run. Lines land in groups, so a kill also falls anywhere within a group's write.
  std::uniform_int_distribution<size_t> rows(kRows * 15 / 100, kRows * 30 / 100);
  for (int kill = 0; kill < 3; ++kill) {
    const size_t target = CountLines(output) + rows(random);
    EXPECT_EQ(RunBatch(Args(output, a_->address()), log, [&] { return CountLines(output) >= target; }), -1)
        << "finished before its kill";
  }
  EXPECT_EQ(RunBatch(Args(output, a_->address()), log), 0) << ReadFile(log);
  ExpectSameResults(ReadResults(output), *reference_results_);
}

TEST_F(Batch, TwoServersShareTheWorkAndOneMayDie) {
  auto c = ServerProcess::Start({});
  ASSERT_THAT(c, IsOk());
  const std::string output = dir_->File("two.jsonl"), log = dir_->File("two.log");
  const std::string served = "attribution_rpcs_total{code=\"OK\",method=\"Attribute\"}";
  // C runs the first part of the job, then dies: its rows go to B. The kill waits for C's answers
  // (polled; a fixed wait could fire before the runner had even asked every server for its models).
  std::thread killer([&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (MetricValue((*c)->metrics_port(), served) < kRows / 8 && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(10));
    (*c)->Signal(SIGKILL);
  });
  EXPECT_EQ(RunBatch(Args(output, absl::StrCat((*c)->address(), ",", b_->address())), log), 0) << ReadFile(log);
  killer.join();
  ExpectSameResults(ReadResults(output), *reference_results_);
  EXPECT_GT(MetricValue(b_->metrics_port(), served), 0);
  EXPECT_THAT(ReadFile(log), HasSubstr("errors INVALID_ARGUMENT: 1\n"));  // only the empty prompt
  EXPECT_THAT(ReadFile(log), ::testing::Not(HasSubstr("errors UNAVAILABLE")));
}

TEST_F(Batch, ShardsMergeIntoTheSingleRun) {
  std::vector<std::string> shards;
  for (int shard = 0; shard < 3; ++shard) {
    shards.push_back(dir_->File(absl::StrCat("shard-", shard, ".jsonl")));
    std::vector<std::string> args = Args(shards.back(), b_->address());
    args.push_back(absl::StrCat("--shard_index=", shard));
    args.push_back("--shard_count=3");
    ASSERT_EQ(RunBatch(args, dir_->File("shards.log")), 0) << ReadFile(dir_->File("shards.log"));
  }
  const std::string merged = dir_->File("merged.jsonl");
  std::vector<std::string> merge = {"merge", "--input=" + *rows_, "--output=" + merged};
  merge.insert(merge.end(), shards.begin(), shards.end());
  ASSERT_EQ(RunBatch(merge, dir_->File("merge.log")), 0) << ReadFile(dir_->File("merge.log"));
  ExpectSameResults(ReadResults(merged), *reference_results_);
}

TEST_F(Batch, ResumingWithOtherSettingsIsRefused) {
  const std::string output = dir_->File("other.jsonl"), log = dir_->File("other.log");
  std::ofstream(output) << (*reference_results_)[0].dump() << "\n";
  std::vector<std::string> args = Args(output, a_->address());
  args.push_back("--method=input_x_gradient");
  EXPECT_EQ(RunBatch(args, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("done with other settings"));
}

TEST_F(Batch, CsvRowsHtmlPagesAndBadInputFiles) {
  const std::string csv = dir_->File("rows.csv"), output = dir_->File("csv.jsonl"), log = dir_->File("csv.log");
  const std::string html = dir_->File("html");
  std::ofstream(csv) << "id,prompt,target,choices,label\n"
                     << "a,\"The cup is red. Q: Is it warm? A:\", Yes,,\n"
                     << "b,\"The box is blue. Q: Is it warm? A:\",, Yes| No, No\n"
                     << "c&<,, Yes,,\n";
  const std::string parquet = dir_->File("csv.parquet");
  ASSERT_EQ(RunBatch({"--input=" + csv, "--output=" + output, "--server=" + a_->address(), "--method=saliency",
                      "--html=" + html, "--faithfulness", "--matrix", "--parquet=" + parquet},
                     log),
            0)
      << ReadFile(log);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]["target_tokens"], (*reference_results_)[1]["target_tokens"]);
  EXPECT_EQ(results[1]["predicted"], " No");
  EXPECT_EQ(results[2]["error"]["code"], "INVALID_ARGUMENT");
  // The Parquet table, read back by pyarrow, holds the JSONL's rows (a target row, a multiple-choice row
  // and an error; token matrices, choice lists, booleans and nulls).
  EXPECT_EQ(
      std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", parquet, " ", output, " > ", log, " 2>&1").c_str()), 0)
      << ReadFile(log);
  // The index lists every result, links the answered rows to their pages, escapes ids.
  const std::string index = ReadFile(html + "/index.html");
  EXPECT_THAT(index, HasSubstr("3 rows, 1 errors"));
  for (const char* id : {"a", "b"}) {
    EXPECT_THAT(index, HasSubstr(absl::StrCat("<a href=\"", client::batch::RowPagePath(id), "\">", id, "</a>")));
    EXPECT_THAT(ReadFile(absl::StrCat(html, "/", client::batch::RowPagePath(id))), HasSubstr("Attribution (saliency)"));
  }
  EXPECT_THAT(index, HasSubstr("<td>c&amp;&lt;</td><td>INVALID_ARGUMENT</td>"));
  // Row b's prediction is its label: its cell is green; the strongest features carry their colours.
  EXPECT_THAT(index, HasSubstr("<td style=\"background:rgb(159,255,159)\"> No</td>"));
  EXPECT_THAT(index, HasSubstr("<code style=\"background:rgb("));
  // --faithfulness: the AOPCs in the results, the deletion / insertion curves drawn on each page.
  EXPECT_TRUE(results[0]["comprehensiveness_aopc"].is_number());
  EXPECT_TRUE(results[0]["sufficiency_aopc"].is_number());
  const std::string page = ReadFile(absl::StrCat(html, "/", client::batch::RowPagePath("a")));
  EXPECT_THAT(page, HasSubstr("<svg"));
  EXPECT_THAT(page, HasSubstr("<polyline fill=\"none\" stroke=\"#1f77b4\""));
  EXPECT_THAT(page, HasSubstr("<polyline fill=\"none\" stroke=\"#ff7f0e\""));
  EXPECT_THAT(page, HasSubstr("<title>deleted 50%: p = "));
  EXPECT_TRUE(ReadFile(absl::StrCat(html, "/", client::batch::RowPagePath("c&<"))).empty());

  const std::string duplicate = dir_->File("duplicate.jsonl");
  std::ofstream(duplicate) << R"({"id": "x", "prompt": "a", "target": " b"})"
                           << "\n"
                           << R"({"id": "x", "prompt": "c", "target": " d"})"
                           << "\n";
  EXPECT_EQ(RunBatch({"--input=" + duplicate, "--output=" + output, "--server=" + a_->address()}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("duplicate.jsonl:2: id \"x\" repeats line 1"));

  const std::string latin1 = dir_->File("latin1.csv");
  std::ofstream(latin1) << "id,prompt,target\n"
                        << "a,caf\xe9, Yes\n";
  EXPECT_EQ(RunBatch({"--input=" + latin1, "--output=" + output, "--server=" + a_->address()}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("latin1.csv:2: not valid UTF-8"));
}

// Hostile inputs and misuse: none of these may lose rows, hang, or end in an uncaught exception.

// RFC 4180 as Python's csv module reads it: a quote opens a quoted field only at the field's start;
// inside an unquoted field it is text. Before, an even number of stray quotes merged rows silently.
TEST(BatchInput, AQuoteInsideAnUnquotedFieldIsText) {
  TempDir dir;
  const std::string csv = dir.File("rows.csv");
  std::ofstream(csv) << "id,prompt,target\n"
                     << "a,Is a 5\" screen big? A:, No\n"
                     << "b,Is a 7\" screen big? A:, Yes\n"
                     << "c,\"quoted, with \"\"quotes\"\"\", No\n";
  absl::StatusOr<std::vector<client::batch::BatchRow>> rows = client::batch::ReadRows(csv);
  ASSERT_THAT(rows, IsOk());
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].prompt, "Is a 5\" screen big? A:");
  EXPECT_EQ((*rows)[0].target, " No");
  EXPECT_EQ((*rows)[1].id, "b");
  EXPECT_EQ((*rows)[1].prompt, "Is a 7\" screen big? A:");
  EXPECT_EQ((*rows)[2].prompt, "quoted, with \"quotes\"");
  EXPECT_EQ((*rows)[2].line, 4);
}

// A target given but empty asked, silently, for a generated target (the request carried none): it is an
// error naming the row and the field, as is an empty list of choices. Left out, or an empty cell of a multiple-choice
// row, it is not.
TEST(BatchInput, AnEmptyTargetIsAnErrorNamingTheRow) {
  TempDir dir;
  const std::string jsonl = dir.File("rows.jsonl"), csv = dir.File("rows.csv"), mixed = dir.File("mixed.csv");
  std::ofstream(jsonl) << R"({"id": "a", "prompt": "Q: Is it warm? A:", "target": " Yes"})"
                       << "\n"
                       << R"({"id": "b", "prompt": "Q: Is it warm? A:", "target": ""})"
                       << "\n";
  EXPECT_THAT(client::batch::ReadRows(jsonl).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows.jsonl:2: row \"b\": \"target\" is empty")));
  const std::string no_choices = dir.File("no_choices.jsonl");
  std::ofstream(no_choices) << R"({"id": "a", "prompt": "Q: Is it warm? A:", "choices": []})"
                            << "\n";
  EXPECT_THAT(client::batch::ReadRows(no_choices).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no_choices.jsonl:1: \"choices\" is empty")));
  std::ofstream(csv) << "id,prompt,target\n"
                     << "a,Q: Is it warm? A:, Yes\n"
                     << "b,Q: Is it warm? A:,\n";
  EXPECT_THAT(client::batch::ReadRows(csv).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("rows.csv:3: row \"b\": the \"target\" cell is empty and the row has no choices")));
  std::ofstream(mixed) << "id,prompt,target,choices,label\n"
                       << "a,Q: Is it warm? A:, Yes,,\n"
                       << "b,Q: Is it warm? A:,, Yes| No, No\n";
  absl::StatusOr<std::vector<client::batch::BatchRow>> rows = client::batch::ReadRows(mixed);
  ASSERT_THAT(rows, IsOk());
  EXPECT_FALSE((*rows)[1].target.has_value());
  std::ofstream(jsonl) << R"({"id": "a", "prompt": "Q: Is it warm? A:"})"
                       << "\n";
  rows = client::batch::ReadRows(jsonl);
  ASSERT_THAT(rows, IsOk());
  EXPECT_FALSE((*rows)[0].target.has_value());  // left out: the server generates the target
}

// Integer ids keep their digits: one past INT64_MAX was read as int64 and wrapped to a negative id.
TEST(BatchInput, IntegerIdsKeepTheirDigits) {
  TempDir dir;
  const std::string jsonl = dir.File("rows.jsonl");
  std::ofstream(jsonl) << R"({"id": 18446744073709551615, "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": 9223372036854775808, "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": -9223372036854775808, "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": 7, "prompt": "a", "target": " b"})"
                       << "\n";
  absl::StatusOr<std::vector<client::batch::BatchRow>> rows = client::batch::ReadRows(jsonl);
  ASSERT_THAT(rows, IsOk());
  std::vector<std::string> ids;
  for (const client::batch::BatchRow& row : *rows) ids.push_back(row.id);
  EXPECT_THAT(ids, ::testing::ElementsAre("18446744073709551615", "9223372036854775808", "-9223372036854775808", "7"));
}

// Settings are checked against what the request carries: get<int>() wrapped 2^32 + 8 to 8 steps, and a
// seed of -1 was recorded as -1 but sent as 2^64 - 1.
TEST(BatchSettings, IntegersOutOfRangeAreRefusedNamingTheSetting) {
  const json defaults = client::batch::JobDefaults();
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"n_steps", 4294967304ull}}, "--job j").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--job j: setting \"n_steps\" must lie in")));
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"n_samples", -4294967296ll}}, "row").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"n_samples\"")));
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"seed", -1}}, "row").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"seed\" must lie in [0, 2^64)")));
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"n_steps", 512}, {"seed", 18446744073709551615ull}}, "row"),
              IsOk());
}

// The job file takes keys "as the flags" (README): --tolerance's key "tolerance" was refused as unknown.
TEST(BatchSettings, ToleranceIsTheJobFilesKeyOfCompletenessTolerance) {
  const json defaults = client::batch::JobDefaults();
  absl::StatusOr<json> merged = client::batch::MergeSettings(defaults, json{{"tolerance", 0.001}}, "--job j");
  ASSERT_THAT(merged, IsOk());
  EXPECT_EQ((*merged)["completeness_tolerance"], 0.001);
  EXPECT_FALSE(merged->contains("tolerance"));
  EXPECT_EQ(client::batch::SettingsDigest(*merged), client::batch::SettingsDigest(*client::batch::MergeSettings(
                                                        defaults, json{{"completeness_tolerance", 0.001}}, "--job j")));
  EXPECT_THAT(
      client::batch::MergeSettings(defaults, json{{"tolerance", 0.1}, {"completeness_tolerance", 0.1}}, "row").status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("give \"tolerance\" or \"completeness_tolerance\"")));
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"tolerance", "0.1"}}, "row").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("setting \"tolerance\" must be a number")));
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"nsteps", 8}}, "row").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown setting \"nsteps\" (")));
}

// A number setting spelled as an integer ("stdev": 1 in a job file) hashes as the flag's 1.0 does: before,
// its settings hash differed and the resume was refused.
TEST(BatchSettings, AnIntegerForANumberSettingHashesAsTheNumber) {
  const json defaults = client::batch::JobDefaults();
  json from_flags = defaults;
  from_flags["stdev"] = 1.0;
  from_flags["completeness_tolerance"] = 2.0;
  absl::StatusOr<json> from_file =
      client::batch::MergeSettings(defaults, json::parse(R"({"stdev": 1, "tolerance": 2})"), "--job j");
  ASSERT_THAT(from_file, IsOk());
  EXPECT_EQ(client::batch::SettingsDigest(*from_file), client::batch::SettingsDigest(from_flags));
  EXPECT_TRUE((*from_file)["stdev"].is_number_float());
  const client::batch::BatchRow row{.id = "r", .prompt = "Q: Is it warm? A:", .target = " Yes"};
  EXPECT_EQ(client::batch::RequestId("m", *from_file, row), client::batch::RequestId("m", from_flags, row));
}

// Excel's "CSV UTF-8" starts with a byte order mark: it became part of the first header name and the
// file was refused for an unknown key whose name looked like "id".
TEST(BatchInput, AByteOrderMarkIsSkipped) {
  TempDir dir;
  const std::string bom = "\xEF\xBB\xBF";
  const std::string csv = dir.File("excel.csv"), jsonl = dir.File("rows.jsonl");
  std::ofstream(csv) << bom << "id,prompt,target\r\nr0,Q: Is it warm? A:, Yes\r\n";
  std::ofstream(jsonl) << bom << R"({"id": "r0", "prompt": "Q: Is it warm? A:", "target": " Yes"})"
                       << "\n";
  for (const std::string& path : {csv, jsonl}) {
    absl::StatusOr<std::vector<client::batch::BatchRow>> rows = client::batch::ReadRows(path);
    ASSERT_THAT(rows, IsOk()) << path;
    ASSERT_EQ(rows->size(), 1u) << path;
    EXPECT_EQ((*rows)[0].id, "r0") << path;
    EXPECT_EQ((*rows)[0].target, " Yes") << path;
  }
}

// Bad flag values and unknown flags exited 1 (abseil's parser), where the tool documents 2.
TEST(BatchCommandLine, BadFlagsAreUsageErrors) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "a", "prompt": "Q: Is it warm? A:", "target": " Yes"})"
                       << "\n";
  const std::vector<std::string> job = {"--input=" + input, "--output=" + dir.File("out.jsonl"),
                                        "--server=127.0.0.1:1"};
  const std::pair<std::string, std::string> cases[] = {
      {"--window=abc", "--window: illegal value \"abc\""},
      {"--n_steps=nan", "--n_steps: illegal value \"nan\""},
      {"--tls=maybe", "--tls: illegal value \"maybe\""},
      {"--no_such_flag=1", "unknown flag --no_such_flag"},
      {"--progress=weird", "--progress: \"weird\" is not auto, bar or log"},
      {"--timeout=nan", "--timeout: give a number of seconds, not nan"},
      {"--timeout=0", "--timeout: give a number of seconds above 0, not 0"},
      {"--timeout=-1.5", "--timeout: give a number of seconds above 0, not -1.5"},
      {"--window=-4", "--window: give a number of rows (0: 32 per server), not -4"},
      {"--window=40000", "--window: give at most 1024 rows in flight (a thread each), not 40000"},
      {"--max_attempts=0", "--max_attempts: give a number of tries of at least 1, not 0"},
      {"--progress_seconds=-1", "--progress_seconds: give a number of seconds of at least 0, not -1"},
      {"--progress_seconds=nan", "--progress_seconds: give a number of seconds of at least 0, not nan"},
      {"--shard_index=3", "--shard_index 3 must lie in [0, --shard_count 1)"},
      {"--shard_count", "--shard_count: give a value"},
  };
  for (const auto& [flag, message] : cases) {
    std::vector<std::string> args = job;
    args.push_back(flag);
    EXPECT_EQ(RunBatch(args, log), 2) << flag << ": " << ReadFile(log);
    EXPECT_THAT(ReadFile(log), HasSubstr("attribution-batch: " + message)) << flag;
  }
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), "--window=x"}, log), 2);
  EXPECT_THAT(ReadFile(log), ::testing::Not(HasSubstr("ERROR: Illegal value")));
}

// An empty server list started no workers and waited forever (or divided by zero with --window).
TEST(BatchCommandLine, AnEmptyServerListIsAUsageError) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "a", "prompt": "Q: Is it warm? A:", "target": " Yes"})"
                       << "\n";
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  const auto hung = [&] { return absl::Now() > deadline; };
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--server="}, log, hung), 2);
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--server=", "--window=2"}, log, hung),
            2);
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--server=,,"}, log, hung), 2);
  EXPECT_THAT(ReadFile(log), HasSubstr("--server: give at least one server"));
  EXPECT_THAT(ReadFile(log), HasSubstr("--server: entry 1 of 3 is empty"));
}

// Ids (and other values of the rows) in messages reached the terminal raw, escape sequences included.
TEST(BatchCommandLine, ControlCharactersInMessagesAreEscaped) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "x\u001b[2J", "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": "x\u001b[2J", "prompt": "c", "target": " d"})"
                       << "\n";
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--server=127.0.0.1:1"}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("rows.jsonl:2: id \"x\\e[2J\" repeats line 1"));
  EXPECT_THAT(ReadFile(log), ::testing::Not(HasSubstr("\x1b")));
}

// A directory where a file belongs: an error naming it (libstdc++'s stream threw from underflow).
TEST(BatchCommandLine, ADirectoryForAnInputFileIsAnErrorNamingIt) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), folder = dir.File("folder.jsonl"), log = dir.File("log");
  ASSERT_EQ(::mkdir(folder.c_str(), 0755), 0);
  std::ofstream(input) << R"({"id": "a", "prompt": "Q: Is it warm? A:", "target": " Yes"})"
                       << "\n";
  const std::string output = "--output=" + dir.File("out.jsonl"), server = "--server=127.0.0.1:1";
  EXPECT_EQ(RunBatch({"--input=" + folder, output, server}, log), 1);
  EXPECT_EQ(RunBatch({"--input=" + input, "--job=" + folder, output, server}, log), 1);
  EXPECT_EQ(RunBatch({"merge", "--input=" + folder, output}, log), 1);
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, output, folder}, log), 1);
  const std::string text = ReadFile(log);
  EXPECT_THAT(text, HasSubstr("cannot read " + folder + ": Is a directory"));
  EXPECT_THAT(text, HasSubstr("--job: cannot read " + folder + ": Is a directory"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("terminate")));
}

// Shard result lines as a job writes them (the fields merge compares).
std::string ShardLine(const std::string& id, const std::string& settings_hash, const std::string& fingerprint = "m1") {
  return json{{"id", id},
              {"model_fingerprint", fingerprint},
              {"settings_hash", settings_hash},
              {"status", "ok"},
              {"features", {"x"}},
              {"attribution", {0.5}}}
      .dump();
}

// The input of rows r0 and r1 that the merge tests' shards answer.
void WriteTwoRowInput(const std::string& path) {
  std::ofstream(path) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                      << "\n"
                      << R"({"id": "r1", "prompt": "c", "target": " d"})"
                      << "\n";
}

// A merge that fails (a shard forgotten) leaves the output as it was: before, it truncated it first.
TEST(BatchMerge, AFailedMergeLeavesTheOutputAsItWas) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("merged.jsonl"), log = dir.File("log");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n";
  std::ofstream(dir.File("s1.jsonl")) << ShardLine("r1", "h") << "\n";
  ASSERT_EQ(
      RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl"), dir.File("s1.jsonl")}, log), 0)
      << ReadFile(log);
  const std::string merged = ReadFile(output);
  ASSERT_EQ(CountLines(output), 2u);
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"r1\" has no result"));
  EXPECT_EQ(ReadFile(output), merged);
  // A row its shard's job left for a rerun (the servers went away) is not a result to merge yet.
  json unavailable = json::parse(ShardLine("r1", "h"));
  unavailable["status"] = "error";
  unavailable["error"] = {{"code", "UNAVAILABLE"}, {"message", "connection refused"}};
  std::ofstream(dir.File("s1_unavailable.jsonl")) << unavailable.dump() << "\n";
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl"),
                      dir.File("s1_unavailable.jsonl")},
                     log),
            1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"r1\" ended UNAVAILABLE, which a rerun tries again"));
  EXPECT_EQ(ReadFile(output), merged);
}

// Shards of different jobs (settings or model) or with rows of another input are not joined.
TEST(BatchMerge, ShardsOfDifferentJobsAreRefused) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("merged.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": "r1", "prompt": "c", "target": " d"})"
                       << "\n"
                       << R"({"id": "r2", "prompt": "e", "target": " f", "settings": {"n_steps": 8}})"
                       << "\n";
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n";
  std::ofstream(dir.File("s1.jsonl")) << ShardLine("r1", "other") << "\n" << ShardLine("r2", "own") << "\n";
  std::ofstream(dir.File("s1_model.jsonl")) << ShardLine("r1", "h", "m2") << "\n" << ShardLine("r2", "own") << "\n";
  std::ofstream(dir.File("s1_foreign.jsonl")) << ShardLine("r1", "h") << "\n"
                                              << ShardLine("r2", "own") << "\n"
                                              << ShardLine("zzz", "h") << "\n";
  std::ofstream(dir.File("s1_good.jsonl")) << ShardLine("r1", "h") << "\n" << ShardLine("r2", "own") << "\n";
  const std::vector<std::string> merge = {"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl")};
  auto with = [&](const std::string& shard) {
    std::vector<std::string> args = merge;
    args.push_back(dir.File(shard));
    return args;
  };
  EXPECT_EQ(RunBatch(with("s1.jsonl"), log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"r1\" has settings_hash \"other\""));
  EXPECT_EQ(RunBatch(with("s1_model.jsonl"), log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"r1\" has model_fingerprint \"m2\""));
  EXPECT_EQ(RunBatch(with("s1_foreign.jsonl"), log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"zzz\" is not in " + input));
  EXPECT_FALSE(std::ifstream(output).good());
  // A row with its own settings may have its own hash.
  EXPECT_EQ(RunBatch(with("s1_good.jsonl"), log), 0) << ReadFile(log);
  EXPECT_EQ(CountLines(output), 3u);
}

// Rows that name their own model record its fingerprint: merge compares fingerprints per model, not across
// models (it refused such rows as another job's).
TEST(BatchMerge, RowsOnTheirOwnModelMerge) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("merged.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": "r1", "prompt": "c", "target": " d", "settings": {"model": "big"}})"
                       << "\n";
  const auto line = [](const std::string& id, const std::string& model, const std::string& fingerprint) {
    json result = json::parse(ShardLine(id, "h", fingerprint));
    result["model"] = model;
    return result.dump();
  };
  std::ofstream(dir.File("s0.jsonl")) << line("r0", "small", "m1") << "\n";
  std::ofstream(dir.File("s1.jsonl")) << line("r1", "big", "m2") << "\n";
  std::ofstream(dir.File("s1_other.jsonl")) << line("r1", "small", "m2") << "\n";
  EXPECT_EQ(
      RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl"), dir.File("s1.jsonl")}, log), 0)
      << ReadFile(log);
  EXPECT_EQ(
      RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl"), dir.File("s1_other.jsonl")},
               log),
      1);
  EXPECT_THAT(ReadFile(log), HasSubstr("row \"r1\" has model_fingerprint \"m2\""));
}

// merge ignored --html: it writes the index of the merged results, linking the pages the shards' jobs
// wrote to the folder (here none) and saying how many rows have none.
TEST(BatchMerge, HtmlWritesTheIndexOfTheMergedResults) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log"), html = dir.File("html");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n";
  std::ofstream(dir.File("s1.jsonl")) << ShardLine("r1", "h") << "\n";
  ASSERT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("merged.jsonl"), "--html=" + html,
                      dir.File("s0.jsonl"), dir.File("s1.jsonl")},
                     log),
            0)
      << ReadFile(log);
  EXPECT_THAT(ReadFile(html + "/index.html"), HasSubstr("2 rows, 0 errors"));
  EXPECT_THAT(ReadFile(log), HasSubstr("2 answered rows have no page in " + html));
}

// A shard cut short mid-line (its job killed): merge says so, and what to do, instead of "not valid JSON".
TEST(BatchMerge, AShardEndingInAPartialLineIsRefusedSayingSo) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": "r2", "prompt": "c", "target": " d"})"
                       << "\n";
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n"
                                      << R"({"id":"r2","sta)";
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(dir.File("s0.jsonl") +
                                       ":2: the shard ends in a partial line (its job was interrupted): run that "
                                       "shard's command again"));
  EXPECT_FALSE(std::ifstream(dir.File("m.jsonl")).good());
}

// merge accepted lines a resumed job refuses: of another shape ("status" "weird"), or cut short.
TEST(BatchMerge, AShardLineOfAnotherShapeIsRefusedNamingIt) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  std::ofstream(input) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                       << "\n"
                       << R"({"id": "r2", "prompt": "c", "target": " d"})"
                       << "\n";
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n"
                                      << R"({"id":"r2","status":"weird"})"
                                      << "\n";
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(dir.File("s0.jsonl") + ":2: a line is not a result of this tool"));
  EXPECT_FALSE(std::ifstream(dir.File("m.jsonl")).good());
}

// A value nested a million deep in a shard line or the job file overflowed the stack (exit 139) where it was
// copied: it is refused naming the file (and the shard's line).
TEST(BatchMerge, ADeeplyNestedShardLineOrJobFileIsRefused) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log"),
                    deep = std::string(1000000, '[') + std::string(1000000, ']');
  std::ofstream(input) << R"({"id": "r0", "prompt": "a", "target": " b"})"
                       << "\n";
  std::ofstream(dir.File("s0.jsonl")) << "\n"
                                      << R"({"id":"r0","status":"ok","features":)" << deep << "}\n";
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(dir.File("s0.jsonl") + ":2: objects and arrays nested more than 64 deep"));
  std::ofstream(dir.File("job.json")) << R"({"seed": )" << deep << "}";
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--job=" + dir.File("job.json"),
                      "--server=127.0.0.1:1"},
                     log),
            1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--job " + dir.File("job.json") + ": objects and arrays nested more than 64"));
}

// --parquet naming --output or --input (or the lock file beside --output) silently replaced that file, and
// so did merge's --output naming --input: usage errors, whichever path names the file (a link, "."), the
// files left as they were.
TEST(BatchCommandLine, AWrittenFileThatIsAnotherOfTheJobsFilesIsAUsageError) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("out.jsonl"), log = dir.File("log");
  const std::string row = R"({"id": "a", "prompt": "Q: Is it warm? A:", "target": " Yes"})";
  std::ofstream(input) << row << "\n";
  std::ofstream(output) << ShardLine("a", "h") << "\n";
  ASSERT_EQ(::symlink(input.c_str(), dir.File("link.jsonl").c_str()), 0);
  ASSERT_EQ(::link(output.c_str(), dir.File("hard.jsonl").c_str()), 0);
  const std::vector<std::string> job = {"--input=" + input, "--output=" + output, "--server=127.0.0.1:1"};
  const std::pair<std::string, std::string> cases[] = {
      {"--parquet=" + output, "--output and --parquet name one file"},
      {"--parquet=" + input, "--input and --parquet name one file"},
      {"--parquet=" + dir.File("link.jsonl"), "--input and --parquet name one file"},
      {"--parquet=" + dir.File("hard.jsonl"), "--output and --parquet name one file"},
      {"--parquet=" + output + ".lock", "--output's lock file and --parquet name one file"},
  };
  for (const auto& [flag, message] : cases) {
    std::vector<std::string> args = job;
    args.push_back(flag);
    EXPECT_EQ(RunBatch(args, log), 2) << flag << ": " << ReadFile(log);
    EXPECT_THAT(ReadFile(log), HasSubstr("attribution-batch: " + message)) << flag;
  }
  // Neither file exists yet: the paths resolve to one.
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("new.jsonl"), "--server=127.0.0.1:1",
                      "--parquet=" + dir.path() + "/../" + dir.path().substr(dir.path().rfind('/') + 1) + "/new.jsonl"},
                     log),
            2);
  EXPECT_THAT(ReadFile(log), HasSubstr("--output and --parquet name one file"));
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + input, output}, log), 2);
  EXPECT_THAT(ReadFile(log), HasSubstr("--input and --output name one file"));
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("hard.jsonl"), output}, log), 2);
  EXPECT_THAT(ReadFile(log), HasSubstr("shard file 1 and --output name one file"));
  EXPECT_EQ(ReadFile(input), row + "\n");
  EXPECT_EQ(ReadFile(output), ShardLine("a", "h") + "\n");
}

// The index renders any result line without throwing: no error object, NaN attributions (null), values
// of unexpected types.
TEST(BatchIndex, OddlyShapedResultLinesRender) {
  TempDir dir;
  const std::string results = dir.File("results.jsonl");
  std::ofstream(results) << R"({"id":"e","status":"error"})"
                         << "\n"
                         << R"({"id":"n","status":"ok","features":["a","b","c"],"attribution":[null,1,"x"]})"
                         << "\n"
                         << R"({"id":"t","status":7,"error":"boom","features":"a","attribution":{},"correct":1})"
                         << "\n"
                         << R"({"id":3,"status":"ok"})"
                         << "\n"
                         << R"([1,2])"
                         << "\n";
  ASSERT_THAT(client::batch::WriteIndex(dir.File("html"), results), IsOk());
  const std::string index = ReadFile(dir.File("html/index.html"));
  EXPECT_THAT(index, HasSubstr("3 rows, 2 errors"));
  EXPECT_THAT(index, HasSubstr("<td>e</td><td>error</td>"));
  EXPECT_THAT(index, HasSubstr(">b</code>"));
  EXPECT_THAT(index, ::testing::Not(HasSubstr(">a</code>")));
}

// A results file with two results of one row (as two jobs writing it left it) is refused on reopening,
// naming the row and both lines: before, the later line silently replaced the earlier.
TEST(BatchResults, TwoResultsOfOneRowAreRefusedNamingBothLines) {
  TempDir dir;
  const std::string output = dir.File("out.jsonl");
  std::ofstream(output) << ShardLine("r0", "h") << "\n" << ShardLine("r1", "h") << "\n" << ShardLine("r0", "h") << "\n";
  EXPECT_THAT(
      client::batch::ResultLog::Open(output).status(),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr(output + ":3: row \"r0\" already has a result on line 1")));
}

// Resuming against real rows: one server, a handful of rows.
class BatchResume : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = ServerProcess::Start({});
    start_status_ = server.status();
    if (server.ok()) server_ = server->release();
  }
  static void TearDownTestSuite() { delete server_; }
  void SetUp() override { ASSERT_THAT(start_status_, IsOk()); }

  // `count` rows r0, r1, ... asking whether a thing of the colour `colours[i % size]` is warm.
  std::string WriteQuestions(const std::string& name, int count, const std::string& object = "cup") const {
    const std::vector<std::string> colours = {"red", "blue", "gold", "green"};
    const std::string path = dir_.File(name);
    std::ofstream out(path);
    for (int i = 0; i < count; ++i) {
      out << json{{"id", absl::StrCat("r", i)},
                  {"prompt", absl::StrCat("The ", object, " is ", colours[i % colours.size()], ". Q: Is it warm? A:")},
                  {"target", " Yes"}}
                 .dump()
          << "\n";
    }
    return path;
  }
  int Run(const std::string& input, const std::string& output) const {
    return RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                     "--progress=log"},
                    log_);
  }
  static std::vector<std::string> Ids(const std::vector<json>& results) {
    std::vector<std::string> ids;
    for (const json& result : results) ids.push_back(result["id"].get<std::string>());
    return ids;
  }

  TempDir dir_;
  const std::string log_ = dir_.File("batch.log");
  static absl::Status start_status_;
  static ServerProcess* server_;
};

absl::Status BatchResume::start_status_;
ServerProcess* BatchResume::server_ = nullptr;

// Another job's results file (same ids and settings, other prompts; or rows not in the input) is
// refused naming the file and the row; before, its rows counted as done.
TEST_F(BatchResume, AnotherJobsResultsFileIsRefused) {
  const std::string output = dir_.File("out.jsonl");
  ASSERT_EQ(Run(WriteQuestions("first.jsonl", 3), output), 0) << ReadFile(log_);
  const std::string before = ReadFile(output);
  EXPECT_EQ(Run(WriteQuestions("other.jsonl", 3, "box"), output), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(output + ":1: row \"r0\" done for another input (request_id "));
  EXPECT_EQ(RunBatch({"--input=" + WriteQuestions("fewer.jsonl", 2), "--output=" + output,
                      "--server=" + server_->address(), "--method=saliency"},
                     log_),
            1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(output + ":3: row \"r2\" is not in this job's input"));
  EXPECT_EQ(ReadFile(output), before);
  // The same job resumes as before.
  EXPECT_EQ(Run(dir_.File("first.jsonl"), output), 0) << ReadFile(log_);
  EXPECT_EQ(ReadFile(output), before);
}

// merge took a shard's result of a row whose prompt was edited since (a resumed job refuses it): both refuse
// it, naming the file's line and the row.
TEST_F(BatchResume, MergeRefusesAResultOfARowEditedSince) {
  const std::string output = dir_.File("shard.jsonl"), merged = dir_.File("merged.jsonl");
  ASSERT_EQ(Run(WriteQuestions("rows.jsonl", 2), output), 0) << ReadFile(log_);
  const std::string edited = WriteQuestions("edited.jsonl", 2, "box");
  EXPECT_EQ(RunBatch({"merge", "--input=" + edited, "--output=" + merged, output}, log_), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(output + ":1: row \"r0\" done for another input (input_hash "));
  EXPECT_FALSE(std::ifstream(merged).good());
  EXPECT_EQ(RunBatch({"merge", "--input=" + dir_.File("rows.jsonl"), "--output=" + merged, output}, log_), 0)
      << ReadFile(log_);
  EXPECT_EQ(ReadFile(merged), ReadFile(output));
}

// A row that failed for lack of capacity is run again on resume and lands where an uninterrupted run
// puts it; before, it went to the end of the file.
TEST_F(BatchResume, ARowTriedAgainKeepsItsPlaceInInputOrder) {
  const std::string input = WriteQuestions("rows.jsonl", 5), reference = dir_.File("reference.jsonl");
  ASSERT_EQ(Run(input, reference), 0) << ReadFile(log_);
  const std::vector<json> expected = ReadResults(reference);
  ASSERT_EQ(expected.size(), 5u);
  // As if the servers had gone while r1 ran and the job was killed after r3: r4 is not done either.
  const std::string output = dir_.File("resumed.jsonl");
  {
    std::ofstream out(output);
    for (int i = 0; i < 4; ++i) {
      json line = expected[i];
      if (i == 1) {
        line = {{"id", "r1"},
                {"request_id", expected[1]["request_id"]},
                {"status", "error"},
                {"error", {{"code", "UNAVAILABLE"}, {"message", "failed to connect"}}},
                {"attempts", 8}};
      }
      out << line.dump() << "\n";
    }
  }
  ASSERT_EQ(Run(input, output), 0) << ReadFile(log_);
  const std::vector<json> resumed = ReadResults(output);
  EXPECT_THAT(Ids(resumed), ::testing::ElementsAre("r0", "r1", "r2", "r3", "r4"));
  ExpectSameResults(resumed, expected);
  // A file left out of order (by an earlier version) is put back in order.
  {
    std::ofstream out(output);
    for (int i : {0, 2, 3, 4, 1}) out << expected[i].dump() << "\n";
  }
  ASSERT_EQ(Run(input, output), 0) << ReadFile(log_);
  EXPECT_THAT(Ids(ReadResults(output)), ::testing::ElementsAre("r0", "r1", "r2", "r3", "r4"));
}

// README: "flags given win" over the job file. A flag given with its default value (the method
// integrated_gradients) lost to the job file's, as if it had not been given.
TEST_F(BatchResume, AFlagGivenAtItsDefaultValueOverridesTheJobFile) {
  const std::string job = dir_.File("job.json"), output = dir_.File("flags.jsonl");
  std::ofstream(job) << R"({"method": "feature_ablation", "tolerance": 0.25})";
  ASSERT_EQ(
      RunBatch({"--input=" + WriteQuestions("rows.jsonl", 2), "--output=" + output, "--server=" + server_->address(),
                "--job=" + job, "--method=integrated_gradients", "--progress=log"},
               log_),
      0)
      << ReadFile(log_);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 2u);
  for (const json& result : results) {
    EXPECT_EQ(result["method"], "integrated_gradients") << result.dump();
    EXPECT_TRUE(result.contains("tolerance_met")) << result.dump();  // the job file's tolerance still counts
  }
}

// Servers gone mid-job left rows UNAVAILABLE and the job exited 0, as if it were complete: it exits 3,
// says how many rows a rerun tries again, and the rerun finishes the job.
TEST_F(BatchResume, RowsLeftForLackOfCapacityExitThreeAndTheRerunFinishes) {
  auto doomed = ServerProcess::Start({});
  ASSERT_THAT(doomed, IsOk());
  const std::string input = WriteQuestions("rows.jsonl", 20), output = dir_.File("gone.jsonl");
  // One row at a time and no retries: the server dies once the first rows are written, the rest fail
  // (each after the client library's own retries, 0.7 s).
  bool killed = false;
  const auto kill_server_after_first_rows = [&] {
    if (!killed && CountLines(output) >= 2) {
      (*doomed)->Signal(SIGKILL);
      killed = true;
    }
    return false;
  };
  const int code = RunBatch({"--input=" + input, "--output=" + output, "--server=" + (*doomed)->address(),
                             "--method=saliency", "--progress=log", "--window=1", "--max_attempts=1"},
                            log_, kill_server_after_first_rows);
  ASSERT_TRUE(killed) << ReadFile(log_);
  EXPECT_EQ(code, 3) << ReadFile(log_);
  size_t unavailable = 0;
  for (const json& result : ReadResults(output)) unavailable += result["status"] == "error";
  ASSERT_GT(unavailable, 0u);
  EXPECT_THAT(ReadFile(log_), HasSubstr(absl::StrCat("attribution-batch: ", unavailable,
                                                     " rows ended for lack of capacity or time; run the same "
                                                     "command again to retry them")));
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                      "--progress=log"},
                     log_),
            0)
      << ReadFile(log_);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 20u);
  for (const json& result : results) EXPECT_EQ(result["status"], "ok") << result.dump();
}

// --method=bogus (--quantity, --rule, ...) ran the job: every row written as INVALID_ARGUMENT, exit 0, and
// the rerun with the name corrected was refused, the file holding rows "done with other settings". A name
// the client library does not know, from a flag or the --job file, is now a usage error before any call,
// naming where it came from and the accepted values, and nothing is written. A row's own settings are data:
// a bad name there stays that row's error.
TEST_F(BatchResume, UnknownNamesInTheJobsSettingsAreUsageErrors) {
  const std::string input = WriteQuestions("rows.jsonl", 3), output = dir_.File("out.jsonl"),
                    job = dir_.File("job.json");
  std::ofstream(input, std::ios::app) << R"({"id": "own", "prompt": "Q: Is it warm? A:", "target": " Yes", )"
                                      << R"("settings": {"method": "bogus"}})"
                                      << "\n";
  std::ofstream(job) << R"({"method": "bogus"})";
  const std::vector<std::string> args = {"--input=" + input, "--output=" + output, "--server=" + server_->address(),
                                         "--progress=log"};
  const std::string unknown = "unknown value \"bogus\" (one of: ";
  const std::pair<std::string, std::string> cases[] = {
      {"--method=bogus", "--method: " + unknown + "attn_lrp, cp_lrp, feature_ablation, "},
      {"--quantity=bogus", "--quantity: " + unknown + "log_prob, logit, prob)"},
      {"--rule=bogus", "--rule: " + unknown + "default, fejer2, gausslegendre, "},
      {"--baseline=bogus", "--baseline: " + unknown + "bos, default, eos, pad, unk, zero or a token id)"},
      {"--target_tokenization=bogus", "--target_tokenization: " + unknown + "continuation, separate)"},
      {"--load_balancing=bogus", "--load_balancing: \"bogus\" is not pick_first or round_robin"},
      {"--job=" + job, "--job " + job + ": method: " + unknown + "attn_lrp, "},
  };
  for (const auto& [flag, message] : cases) {
    std::vector<std::string> bad = args;
    bad.push_back(flag);
    EXPECT_EQ(RunBatch(bad, log_), 2) << flag << ": " << ReadFile(log_);
    EXPECT_THAT(ReadFile(log_), HasSubstr("attribution-batch: " + message)) << flag;
    EXPECT_NE(::access(output.c_str(), F_OK), 0) << flag << " wrote " << output;
  }
  // The name corrected by a flag (which wins over the job file): the job runs.
  std::vector<std::string> corrected = args;
  corrected.insert(corrected.end(), {"--job=" + job, "--method=saliency"});
  ASSERT_EQ(RunBatch(corrected, log_), 0) << ReadFile(log_);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 4u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(results[i]["status"], "ok") << results[i].dump();
  EXPECT_EQ(results[3]["status"], "error");
  EXPECT_EQ(results[3]["error"]["code"], "INVALID_ARGUMENT");
  EXPECT_THAT(results[3]["error"]["message"].get<std::string>(), HasSubstr("method: " + unknown));
}

// One unreachable server among several stopped the job before it started (its ListModels failed: UNAVAILABLE,
// exit 1, nothing written). The servers that answer now name the model, and rows sent to the dead one move on
// to them, in either order of --server; with no server answering, the job exits 3 (a rerun may succeed).
TEST_F(BatchResume, AnUnreachableServerAmongSeveralLeavesItsRowsToTheOthers) {
  const std::string input = WriteQuestions("rows.jsonl", 6);
  const std::string orders[] = {"127.0.0.1:1," + server_->address(), server_->address() + ",127.0.0.1:1"};
  for (size_t i = 0; i < std::size(orders); ++i) {
    const std::string output = dir_.File(absl::StrCat("out", i, ".jsonl"));
    ASSERT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + orders[i], "--method=saliency",
                        "--progress=log"},
                       log_),
              0)
        << orders[i] << ": " << ReadFile(log_);
    const std::vector<json> results = ReadResults(output);
    ASSERT_EQ(results.size(), 6u) << orders[i];
    for (const json& result : results) EXPECT_EQ(result["status"], "ok") << orders[i] << ": " << result.dump();
  }
  const std::string output = dir_.File("none.jsonl");
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=127.0.0.1:1,127.0.0.1:1", "--method=saliency",
                      "--progress=log"},
                     log_),
            3);
  EXPECT_THAT(ReadFile(log_), HasSubstr("UNAVAILABLE: no server answered which models it holds (server 1: "));
  EXPECT_NE(::access(output.c_str(), F_OK), 0);
}

// A row that runs long (here 1024 integration steps beside saliency rows) holds back at most 4 x --window
// rows: before, the other workers ran every later row and their lines waited in memory, unwritten, until
// it finished. The server logs each call as it ends, so the rows it answered before the slow one are
// those the job ran ahead of it.
TEST_F(BatchResume, RowsRunAheadOfASlowRowAreBounded) {
  const std::string input = dir_.File("slow.jsonl"), output = dir_.File("slow_out.jsonl");
  constexpr int kCount = 60, kWindow = 2;
  {
    std::ofstream out(input);
    for (int i = 0; i < kCount; ++i) {
      json row = {{"id", absl::StrCat("r", i)},
                  {"prompt", absl::StrCat("Question ", i, ": the cup is red. Q: Is it warm? A:")},
                  {"target", " Yes"}};
      if (i == 0) row["settings"] = {{"method", "integrated_gradients"}, {"n_steps", 1024}};
      out << row.dump() << "\n";
    }
  }
  ASSERT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                      "--progress=log", absl::StrCat("--window=", kWindow)},
                     log_),
            0)
      << ReadFile(log_);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), static_cast<size_t>(kCount));
  std::map<std::string, std::string> row_of;  // request id -> row id
  for (const json& result : results) row_of[result["request_id"].get<std::string>()] = result["id"];
  std::vector<std::string> answered;  // this job's rows, in the order the server answered them
  std::istringstream server_log(server_->Log());
  for (std::string line; std::getline(server_log, line);) {
    const json entry = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!entry.is_object() || !entry.contains("request_id") || entry.value("rpc", "") != "Attribute") continue;
    if (auto row = row_of.find(entry["request_id"].get<std::string>()); row != row_of.end()) {
      answered.push_back(row->second);
    }
  }
  ASSERT_EQ(answered.size(), static_cast<size_t>(kCount));
  const size_t slow = std::find(answered.begin(), answered.end(), "r0") - answered.begin();
  EXPECT_LE(slow, static_cast<size_t>(4 * kWindow - 1)) << absl::StrJoin(answered, " ");
  // A job that cannot write (a row's page, where a file stands) stops, workers waiting for room included.
  const std::string not_a_directory = dir_.File("file");
  std::ofstream(not_a_directory) << "x";
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir_.File("unwritable.jsonl"), "--server=" + server_->address(),
                      "--method=saliency", "--progress=log", "--window=1", "--html=" + not_a_directory},
                     log_, [&] { return absl::Now() > deadline; }),
            1)
      << ReadFile(log_);
  EXPECT_THAT(ReadFile(log_), HasSubstr(not_a_directory));
}

// A response over the client's receive limit fails as RESOURCE_EXHAUSTED, which the job would retry as
// load although it never goes away: the job's channels accept any size (the server bounds its own).
TEST_F(BatchResume, TheJobsChannelsAcceptAnyResponseSize) {
  const client::ClientOptions small{.target = server_->address(), .max_receive_message_bytes = 64};
  auto job = client::batch::ConnectToServers({server_->address(), server_->address()}, small);
  ASSERT_THAT(job, IsOk());
  ASSERT_EQ(job->size(), 2u);
  auto models = (*job)[0]->ListModels();
  ASSERT_THAT(models, IsOk());
  ASSERT_FALSE(models->empty());
  const client::AttributeOptions request{.model = models->front().name,
                                         .prompt = "The cup is red. Q: Is it warm? A:",
                                         .target = " Yes",
                                         .method = "saliency"};
  for (const auto& client : *job) EXPECT_THAT(client->Attribute(request), IsOk());
  auto limited = client::AttributionClient::Connect(small);
  ASSERT_THAT(limited, IsOk());
  EXPECT_THAT((*limited)->Attribute(request).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("larger than max")));
}

// Two jobs writing one results file (a replacement pod while the old one still runs, two shells) went
// unnoticed and interleaved their lines: the second is refused, naming the file, while the first runs, and
// the lock outlives the rewrites that replace the file.
TEST_F(BatchResume, ASecondJobOnTheSameResultsFileIsRefused) {
  const std::string input = WriteQuestions("rows.jsonl", 2), output = dir_.File("locked.jsonl");
  ASSERT_EQ(Run(input, output), 0) << ReadFile(log_);
  const std::string before = ReadFile(output);
  {
    auto first = client::batch::ResultLog::Open(output);
    ASSERT_THAT(first, IsOk());
    ASSERT_THAT((*first)->Rewrite({{.text = before.substr(0, before.find('\n'))}}), IsOk());
    EXPECT_THAT(client::batch::ResultLog::Open(output).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         HasSubstr(output + ": another job is writing this results file")));
    EXPECT_EQ(Run(input, output), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr(output + ": another job is writing this results file"));
  }
  // Once the first job ends, the file is free again and the job finishes (r1, which the rewrite left out).
  EXPECT_EQ(Run(input, output), 0) << ReadFile(log_);
  EXPECT_THAT(Ids(ReadResults(output)), ::testing::ElementsAre("r0", "r1"));
}

// A resume, a merge and --parquet held the whole results file in memory several times over (a 143 MB file took
// 784 MB: a shard past ~170 MB of results was OOM-killed in its 1 GiB pod on resume or merge). Each now keeps
// per row only what it checks and where the line is, copying lines by offset, and --parquet one row group:
// on a 60 MB file each stays under the file's size, and the files are as before (in input order, the row
// tried again in its place; the table equal to the JSONL as pyarrow reads it, in several row groups).
TEST_F(BatchResume, ALargeResultsFileResumesMergesAndConvertsInLessMemoryThanItsSize) {
  const std::string prompt =
      "The cup on the kitchen table is red and it was filled with hot tea a minute ago by my grandmother, who "
      "likes her tea very hot and strong. Q: Is the cup warm to the touch right now? A:";
  const auto row = [&](int i) {
    return json{{"id", absl::StrCat("r", i)}, {"prompt", prompt}, {"target", " Yes"}}.dump() + "\n";
  };
  const std::string one = dir_.File("one.jsonl"), one_output = dir_.File("one_out.jsonl");
  std::ofstream(one) << row(0);
  ASSERT_EQ(Run(one, one_output), 0) << ReadFile(log_);
  std::string line = ReadFile(one_output);
  line.pop_back();  // its newline
  const std::string first_id = "\"id\":\"r0\"";
  const size_t id_at = line.find(first_id);
  ASSERT_NE(id_at, std::string::npos) << line;
  // The same real result for every row (the rows are alike), under each row's id.
  const auto result_of = [&](int i) {
    return std::string(line).replace(id_at, first_id.size(), absl::StrCat("\"id\":\"r", i, "\""));
  };
  constexpr int64_t kFileBytes = 60'000'000;
  const int rows = static_cast<int>(kFileBytes / static_cast<int64_t>(line.size() + 1)), middle = rows / 2;
  const std::string input = dir_.File("rows.jsonl"), output = dir_.File("large.jsonl");
  {
    std::ofstream in(input), out(output);
    for (int i = 0; i < rows; ++i) {
      in << row(i);
      json result = json::parse(result_of(i));
      if (i == middle) {  // left for a rerun: dropped on opening, run again, and rewritten into its place
        result["status"] = "error";
        result["error"] = {{"code", "UNAVAILABLE"}, {"message", "connection refused"}};
      }
      out << (i == middle ? result.dump() : result_of(i)) << "\n";
    }
  }
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(output));
  ASSERT_GT(file_bytes, kFileBytes * 9 / 10);

  const std::string parquet = dir_.File("large.parquet");
  int64_t peak = 0;
  ASSERT_EQ(RunBatch(
                {"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                 "--progress=log", "--parquet=" + parquet},
                log_, [] { return false; }, &peak),
            0)
      << ReadFile(log_);
  EXPECT_LT(peak, file_bytes) << "resume and --parquet of a " << file_bytes << "-byte results file";
  {
    std::ifstream resumed(output);
    int i = 0;
    for (std::string text; std::getline(resumed, text); ++i) {
      if (i == middle) {
        const json result = json::parse(text);
        EXPECT_EQ(result["id"], absl::StrCat("r", middle));
        EXPECT_EQ(result["status"], "ok");
      } else if (text != result_of(i)) {
        ADD_FAILURE() << "line " << i + 1 << " changed: " << text.substr(0, 200);
        break;
      }
    }
    EXPECT_EQ(i, rows);
  }
  const std::string check = dir_.File("large_check.log");
  EXPECT_EQ(
      std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", parquet, " ", output, " > ", check, " 2>&1").c_str()), 0)
      << ReadFile(check);
  const int groups = (rows + 999) / 1000;  // ParquetRowGroupLimits' 1000 rows
  EXPECT_THAT(ReadFile(check), HasSubstr(absl::StrCat(rows, " rows in ", groups, " row groups")));

  // Four shards, rows dealt round-robin, so the merged file interleaves them line by line.
  std::vector<std::string> merge = {"merge", "--input=" + input, "--output=" + dir_.File("merged.jsonl")};
  {
    std::ifstream resumed(output);
    std::vector<std::ofstream> shards;
    for (int s = 0; s < 4; ++s) {
      merge.push_back(dir_.File(absl::StrCat("shard", s, ".jsonl")));
      shards.emplace_back(merge.back());
    }
    int i = 0;
    for (std::string text; std::getline(resumed, text); ++i) shards[i % 4] << text << "\n";
  }
  ASSERT_EQ(RunBatch(
                merge, log_, [] { return false; }, &peak),
            0)
      << ReadFile(log_);
  EXPECT_LT(peak, file_bytes) << "merge of 4 shards of a " << file_bytes << "-byte results file";
  EXPECT_TRUE(ReadFile(dir_.File("merged.jsonl")) == ReadFile(output)) << "the merged file differs from the job's";
}

// A job read its whole input into memory, parsed, before its first row (a 100 MB CSV of 1,000,000 rows took
// 756 MB), and each shard's pod reads the whole file: past ~130 MB of input a shard was OOM-killed in its
// 1 GiB pod. It now keeps per row where the row is and digests of it, and reads a row again when it runs it:
// a shard of a 48 MB CSV (prompts quoted across lines among its rows) runs in less memory than the file's
// size, and its lines are those its rows get as a file of their own (all but the server's timings).
TEST_F(BatchResume, AShardOfALargeInputRunsInLessMemoryThanTheInput) {
  constexpr int kRows = 500'000, kShards = 2'500, kShard = 1;  // 200 rows run
  const std::vector<std::string> colours = {"red", "blue", "gold", "green"};
  const std::string input = dir_.File("large.csv"), alone = dir_.File("alone.csv");
  {
    std::ofstream all(input), own(alone);
    all << "id,prompt,target\n";
    own << "id,prompt,target\n";
    for (int i = 0; i < kRows; ++i) {
      const std::string prompt = absl::StrCat("Question ", i, ": the cup on the table is ", colours[i % colours.size()],
                                              ". Q: Is it warm to the touch? A:");
      const std::string field =
          i % 7 == 0 ? absl::StrCat("\"", prompt.substr(0, 12), "\n\"\"", prompt.substr(12), "\"") : prompt;
      const std::string record = absl::StrCat("r", i, ",", field, ",", i % 2 == 0 ? " Yes" : " No", "\n");
      all << record;
      if (i % kShards == kShard) own << record;
    }
  }
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(input));
  // One row at a time on both runs: the same batch compositions, so the same numbers.
  const auto run = [&](const std::string& rows, const std::string& output, std::vector<std::string> more,
                       int64_t* peak) {
    std::vector<std::string> args = {"--input=" + rows,   "--output=" + output, "--server=" + server_->address(),
                                     "--method=saliency", "--progress=log",     "--window=1"};
    args.insert(args.end(), more.begin(), more.end());
    return RunBatch(
        args, log_, [] { return false; }, peak);
  };
  int64_t peak = 0;
  const std::string shard = dir_.File("shard.jsonl"), expected = dir_.File("alone.jsonl");
  ASSERT_EQ(run(input, shard, {absl::StrCat("--shard_count=", kShards), absl::StrCat("--shard_index=", kShard)}, &peak),
            0)
      << ReadFile(log_);
  EXPECT_LT(peak, file_bytes) << "a shard of a " << file_bytes << "-byte input";
  ASSERT_EQ(run(alone, expected, {}, nullptr), 0) << ReadFile(log_);
  const auto without_timings = [](const std::string& path) {
    std::vector<std::string> lines;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find("\"server_seconds\":");
      const size_t end = at == std::string::npos ? at : line.find_first_of(",}", at);
      lines.push_back(at == std::string::npos ? line : line.erase(at, end - at));
    }
    return lines;
  };
  const std::vector<std::string> lines = without_timings(shard), expected_lines = without_timings(expected);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kRows / kShards));
  EXPECT_THAT(lines, ::testing::ContainerEq(expected_lines));
  EXPECT_THAT(lines[3], HasSubstr("\"id\":\"r7501\""));
}

// A line of another shape than the tool writes is refused when the job resumes, naming its line.
TEST_F(BatchResume, AResultLineOfAnotherShapeIsRefused) {
  const std::string input = WriteQuestions("rows.jsonl", 2), output = dir_.File("odd.jsonl");
  ASSERT_EQ(Run(input, output), 0) << ReadFile(log_);
  std::ofstream(output, std::ios::app) << R"({"id":"r9","status":"error"})"
                                       << "\n";
  EXPECT_EQ(Run(input, output), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(output + ":3: a line is not a result of this tool"));
}

// The model as the servers report it: the demo model's ModelInfo (name, weights_digest, model_digest).
client::ModelInfo DemoModelInfo(const ServerProcess& server) {
  auto client = client::AttributionClient::Connect({.target = server.address()});
  EXPECT_THAT(client.status(), IsOk());
  if (!client.ok()) return {};
  absl::StatusOr<std::vector<client::ModelInfo>> models = (*client)->ListModels();
  EXPECT_THAT(models.status(), IsOk());
  if (!models.ok() || models->empty()) return {};
  return models->front();
}

// The folder `server` loaded its model `name` from, as its "model_loaded" log line says ("NAME PATH dtype ...").
std::string ServedModelDir(const ServerProcess& server, const std::string& name) {
  const std::string log = server.Log(), marker = "\"detail\":\"" + name + " ";
  const size_t begin = log.find(marker);
  if (begin == std::string::npos) return "";
  const size_t path = begin + marker.size();
  return log.substr(path, log.find(' ', path) - path);
}

// A copy of the model `server` serves under `dir`/NAME (NAME: its name) whose weights differ in one bit of
// the first tensor's first value: the same name, config and shapes, other weights.
std::string OtherWeightsCopy(const TempDir& dir, const ServerProcess& server, const std::string& name) {
  const std::filesystem::path copy = std::filesystem::path(dir.File("other")) / name;
  std::filesystem::create_directories(copy);
  for (const auto& entry : std::filesystem::directory_iterator(ServedModelDir(server, name))) {
    std::filesystem::copy_file(entry.path(), copy / entry.path().filename());
  }
  std::fstream weights(copy / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header = 0;
  weights.read(reinterpret_cast<char*>(&header), sizeof(header));
  weights.seekg(static_cast<std::streamoff>(8 + header));
  char byte = 0;
  weights.read(&byte, 1);
  byte ^= 1;  // the lowest mantissa bit of a float32 / 16-bit value (little-endian): finite stays finite
  weights.seekp(static_cast<std::streamoff>(8 + header));
  weights.write(&byte, 1);
  return copy.parent_path().string();
}

// A loopback port nothing listens on now (the kernel's pick, released).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t size = sizeof(address);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  ::close(fd);
  return ntohs(address.sin_port);
}

// ModelInfo.weights_digest is SHA-256 over the model's files in name order, each as name, "\n", size, "\n",
// bytes: Python's hashlib over the same files (an independent implementation) gives the same digest.
TEST_F(BatchResume, TheWeightsDigestIsSha256OfTheModelFiles) {
  const client::ModelInfo info = DemoModelInfo(*server_);
  ASSERT_EQ(info.weights_digest.size(), 64u);
  ASSERT_EQ(info.model_digest.size(), 64u);
  EXPECT_NE(info.weights_digest, info.model_digest);
  const std::string script = dir_.File("digest.py");
  std::ofstream(script) << "import hashlib, os, sys\n"
                           "d = sys.argv[1]\n"
                           "names = sorted(n for n in os.listdir(d) if n in ('config.json', 'generation_config.json',\n"
                           "    'model.safetensors', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'))\n"
                           "h = hashlib.sha256()\n"
                           "for n in names:\n"
                           "    data = open(os.path.join(d, n), 'rb').read()\n"
                           "    h.update(n.encode() + b'\\n' + str(len(data)).encode() + b'\\n' + data)\n"
                           "print(h.hexdigest())\n";
  const std::string command = absl::StrCat(ATTRIBUTION_PYTHON, " ", script, " ", ServedModelDir(*server_, info.name),
                                           " > ", dir_.File("digest"));
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  EXPECT_EQ(ReadFile(dir_.File("digest")), info.weights_digest + "\n");
}

// A server that was down when the job started comes up serving other weights under the model's name (as a
// replica the job's ListModels did not reach would): no row is recorded as its answer. Each of its answers
// is refused by its model_digest and the row goes to the next server; before, its answers were recorded under
// the first server's fingerprint.
TEST_F(BatchResume, ALateServerOfOtherWeightsUnderTheModelsNameGetsNoRowRecorded) {
  const client::ModelInfo demo = DemoModelInfo(*server_);
  const std::string other_dir = OtherWeightsCopy(dir_, *server_, demo.name);
  const int port = FreePort();
  const std::string input = WriteQuestions("rows.jsonl", 120), output = dir_.File("late.jsonl");
  std::unique_ptr<ServerProcess> late;
  absl::Status late_status = absl::UnknownError("not started");
  const int exit_code = RunBatch(
      {"--input=" + input, "--output=" + output, absl::StrCat("--server=", server_->address(), ",127.0.0.1:", port),
       "--method=integrated_gradients", "--n_steps=16", "--window=2", "--progress=log"},
      log_, [&] {
        if (late == nullptr && CountLines(output) >= 2) {  // the job runs: bring the other server up
          auto started = ServerProcess::Start(
              {absl::StrCat("--listen=127.0.0.1:", port), test_support::ModelsFlag(other_dir, {demo.name})});
          late_status = started.status();
          if (started.ok()) late = std::move(*started);
        }
        return false;
      });
  ASSERT_THAT(late_status, IsOk());
  EXPECT_NE(DemoModelInfo(*late).model_digest, demo.model_digest);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 120u) << ReadFile(log_);
  int refused = 0;
  for (const json& result : results) {
    SCOPED_TRACE(result.dump());
    EXPECT_EQ(result.value("model_digest", ""), demo.model_digest);
    if (result["status"] == "ok") continue;
    // Rows whose tries all met the other weights: no result, tried again by a rerun.
    EXPECT_EQ(result["error"]["code"], "FAILED_PRECONDITION");
    EXPECT_THAT(result["error"]["message"].get<std::string>(), HasSubstr("answered by other weights"));
    ++refused;
  }
  EXPECT_EQ(exit_code, refused > 0 ? 3 : 0) << ReadFile(log_);
  // The late server answered calls (each refused): the job did meet it.
  EXPECT_THAT(late->Log(), HasSubstr("\"rpc\":\"Attribute\""));
}

// Resuming against other weights under the same name, config and shapes is refused: the model_digest is part of
// the fingerprint. Before, the resumed rows mixed the two checkpoints' results silently.
TEST_F(BatchResume, ResumingAfterTheWeightsWereSwappedIsRefused) {
  const client::ModelInfo demo = DemoModelInfo(*server_);
  const std::string input = WriteQuestions("rows.jsonl", 6), output = dir_.File("out.jsonl");
  ASSERT_EQ(Run(WriteQuestions("first.jsonl", 3), output), 0) << ReadFile(log_);
  auto swapped =
      ServerProcess::Start({test_support::ModelsFlag(OtherWeightsCopy(dir_, *server_, demo.name), {demo.name})});
  ASSERT_THAT(swapped.status(), IsOk());
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + (*swapped)->address(),
                      "--method=saliency", "--progress=log"},
                     log_),
            1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(output + ":1: row \"r0\" done on another model (model_fingerprint "));
  EXPECT_EQ(CountLines(output), 3u);
}

// A replica given the dtype as "fp32" serves the same model as one given "float32": both report "float32" and
// one model_digest, so a job resumes across them. Before, the digest hashed the spelling and the resume was
// refused as "done on another model".
TEST_F(BatchResume, ReplicasGivenTheDtypeInEitherSpellingServeOneModel) {
  const client::ModelInfo demo = DemoModelInfo(*server_);
  auto spelled = ServerProcess::Start({"--dtype=fp32"});
  ASSERT_THAT(spelled.status(), IsOk());
  const client::ModelInfo fp32 = DemoModelInfo(**spelled);
  EXPECT_EQ(demo.dtype, "float32");
  EXPECT_EQ(fp32.dtype, "float32");
  EXPECT_EQ(fp32.model_digest, demo.model_digest);
  const std::string output = dir_.File("out.jsonl");
  ASSERT_EQ(Run(WriteQuestions("first.jsonl", 2), output), 0) << ReadFile(log_);
  EXPECT_EQ(RunBatch({"--input=" + WriteQuestions("rows.jsonl", 4), "--output=" + output,
                      "--server=" + (*spelled)->address(), "--method=saliency", "--progress=log"},
                     log_),
            0)
      << ReadFile(log_);
  EXPECT_EQ(CountLines(output), 4u);
}

// --output given as a symbolic link: the lock is the real file's, so a job writing through the link and one
// writing the file by its own name exclude each other (before, both ran and interleaved their lines).
TEST_F(BatchResume, JobsThroughALinkAndTheRealPathExcludeEachOther) {
  const std::string input = WriteQuestions("rows.jsonl", 3);
  const std::string real = dir_.File("real.jsonl"), link = dir_.File("link.jsonl");
  ASSERT_EQ(::symlink("real.jsonl", link.c_str()), 0);
  {
    absl::StatusOr<std::unique_ptr<client::batch::ResultLog>> holder = client::batch::ResultLog::Open(real);
    ASSERT_THAT(holder.status(), IsOk());
    EXPECT_EQ(Run(input, link), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr(real + ": another job is writing this results file"));
  }
  {
    absl::StatusOr<std::unique_ptr<client::batch::ResultLog>> holder = client::batch::ResultLog::Open(link);
    ASSERT_THAT(holder.status(), IsOk());
    EXPECT_EQ(Run(input, real), 1);
  }
  EXPECT_EQ(CountLines(real), 0u);
}

// A resume through links (--output and --parquet) that rewrites the file replaces the link's target, and the
// links stay links: before, the rename replaced the link with a regular file and the target kept a stale copy.
TEST_F(BatchResume, AResumeThroughALinkKeepsTheLinkAndUpdatesItsTarget) {
  const std::string store = dir_.File("store");
  ASSERT_EQ(::mkdir(store.c_str(), 0755), 0);
  const std::string link = dir_.File("results.jsonl"), parquet_link = dir_.File("results.parquet");
  ASSERT_EQ(::symlink("store/res.jsonl", link.c_str()), 0);
  ASSERT_EQ(::symlink((store + "/res.parquet").c_str(), parquet_link.c_str()), 0);
  ASSERT_EQ(Run(WriteQuestions("first.jsonl", 3), link), 0) << ReadFile(log_);
  std::ofstream(store + "/res.jsonl", std::ios::app) << "{\"id\":\"r3\",\"partial";  // a kill mid-line
  ASSERT_EQ(RunBatch({"--input=" + WriteQuestions("rows.jsonl", 6), "--output=" + link, "--parquet=" + parquet_link,
                      "--server=" + server_->address(), "--method=saliency", "--progress=log"},
                     log_),
            0)
      << ReadFile(log_);
  struct stat info;
  ASSERT_EQ(::lstat(link.c_str(), &info), 0);
  EXPECT_TRUE(S_ISLNK(info.st_mode));
  ASSERT_EQ(::lstat(parquet_link.c_str(), &info), 0);
  EXPECT_TRUE(S_ISLNK(info.st_mode));
  EXPECT_EQ(Ids(ReadResults(store + "/res.jsonl")), (std::vector<std::string>{"r0", "r1", "r2", "r3", "r4", "r5"}));
  EXPECT_EQ(::stat((store + "/res.parquet").c_str(), &info), 0);
}

// A job setting out of range is a usage error naming its flag (or the --job file's key), before any row runs:
// the fixed ranges before any call, the servers' limits (ListModels) once the model is known. Before, every
// row was written with the server's INVALID_ARGUMENT, the job exited 0, and the rerun with the value corrected
// was refused as "done with other settings".
TEST_F(BatchResume, OutOfRangeSettingsAreUsageErrorsNamingTheFlag) {
  const std::string input = WriteQuestions("rows.jsonl", 3), output = dir_.File("out.jsonl");
  const std::string job = dir_.File("job.json");
  std::ofstream(job) << R"({"stdev": 11})";
  const std::pair<std::string, std::string> cases[] = {
      {"--n_steps=-5", "--n_steps: -5 is below 0"},
      {"--n_samples=-3", "--n_samples: -3 is below 0"},
      {"--stdev=-1", "--stdev: -1 is outside [0, 10]"},
      {"--tolerance=2", "--tolerance: 2 is outside [0, 1]"},
      {"--baseline=-1", "--baseline: token id -1 is below 0"},
      {"--job=" + job, "--job " + job + ": stdev: 11 is outside [0, 10]"},
      {"--n_steps=5000", "--n_steps: 5000 is over the servers' limit of 1024"},
      {"--baseline=99999", "--baseline: token id 99999 is past the model's vocabulary of 4000 tokens"},
  };
  for (const auto& [flag, message] : cases) {
    SCOPED_TRACE(flag);
    ::unlink(log_.c_str());
    EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(),
                        "--method=integrated_gradients", "--progress=log", flag},
                       log_),
              2);
    EXPECT_THAT(ReadFile(log_), HasSubstr(message));
    EXPECT_NE(::access(output.c_str(), F_OK), 0);
  }
  // A tolerance with another method: every server refuses it ("completeness_tolerance applies to
  // integrated_gradients only"), so the job wrote every row as that error and exited 0.
  const std::string tolerance_job = dir_.File("tolerance_job.json");
  std::ofstream(tolerance_job) << R"({"method": "feature_ablation", "tolerance": 0.001})";
  for (const auto& [flags, message] :
       {std::pair<std::vector<std::string>, std::string>{{"--method=feature_ablation", "--tolerance=0.001"},
                                                         "--tolerance: applies to integrated_gradients only, not "
                                                         "feature_ablation"},
        {{"--job=" + tolerance_job},
         "--job " + tolerance_job +
             ": completeness_tolerance: applies to integrated_gradients only, not "
             "feature_ablation"}}) {
    ::unlink(log_.c_str());
    std::vector<std::string> args = {"--input=" + input, "--output=" + output, "--server=" + server_->address(),
                                     "--progress=log"};
    args.insert(args.end(), flags.begin(), flags.end());
    EXPECT_EQ(RunBatch(args, log_), 2) << ReadFile(log_);
    EXPECT_THAT(ReadFile(log_), HasSubstr(message));
    EXPECT_NE(::access(output.c_str(), F_OK), 0);
  }
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(),
                      "--method=integrated_gradients", "--progress=log", "--n_steps=8"},
                     log_),
            0)
      << ReadFile(log_);
}

}  // namespace
}  // namespace attribution
