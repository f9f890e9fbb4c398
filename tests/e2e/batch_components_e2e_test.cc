// SPDX-License-Identifier: Apache-2.0
// attribution-batch's component rows (seed 003's prompt pairs as a data set) against the real server on the
// default model: pairs of its warmth questions whose corrupted prompt swaps a warm colour for a cold one (or
// back), so the answer flips. Each row's result equals the same AttributeComponents request sent alone; a
// bad pair is that row's error; a job killed twice and resumed, or run as two shards and merged, ends with the
// uninterrupted output; the
// Parquet table reads back equal (pyarrow) and the HTML pages show each row's grids; a CSV of the same
// pairs is the same job. (AttributeComponents itself is checked against TransformerLens in
// components_e2e_test.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "client/batch/html_pages.h"
#include "tests/testing/batch_process.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using nlohmann::json;
using test_support::CountLines;
using test_support::ReadFile;
using test_support::ReadResults;
using test_support::RunBatch;
using test_support::ServerProcess;
using test_support::TempDir;
using ::testing::HasSubstr;

constexpr int kPairs = 96;
constexpr int kBadRow = 5;           // its corrupted prompt is a token short
constexpr int kAttributionRow = 11;  // an attribution row among the component rows
constexpr int kLayerIgEvery = 4;     // rows i % 4 == 3: layer integrated gradients at heads and mlp_out
constexpr int kNoWrongAnswer = 14;   // no wrong answer under the (difference) metric: the row's error
constexpr int kLogProb = 20;         // metric log_prob: its wrong answer is not sent

// Pairs of warmth questions: the clean prompt's colour and the corrupted one's differ in warmth, one token each.
std::vector<json> Rows() {
  const std::vector<std::string> objects = {"cup", "box", "ball", "hat", "coat", "car", "door", "lamp"};
  const std::vector<std::pair<std::string, std::string>> swaps = {
      {"red", "blue"}, {"orange", "green"}, {"gold", "grey"}, {"blue", "red"}, {"green", "orange"}, {"grey", "gold"}};
  std::vector<json> rows;
  for (int i = 0; i < kPairs; ++i) {
    const std::string& object = objects[i % objects.size()];
    const auto& [clean, corrupted] = swaps[(i / objects.size()) % swaps.size()];
    const bool warm = clean == "red" || clean == "orange" || clean == "gold";
    auto prompt = [&](const std::string& colour) {
      return absl::StrCat("The ", object, " is ", colour, ". Q: Is it warm? A:");
    };
    json row = {{"id", absl::StrCat("pair", i)},
                {"clean", prompt(clean)},
                {"corrupted", prompt(corrupted)},
                {"answer", warm ? " Yes" : " No"},
                {"wrong_answer", warm ? " No" : " Yes"}};
    if (i % kLayerIgEvery == 3) {
      row["settings"] = {
          {"component_method", "layer_integrated_gradients"}, {"sites", "heads,mlp_out"}, {"n_steps", 8}};
    }
    if (i == kBadRow) row["corrupted"] = absl::StrCat("The ", object, " is. Q: Is it warm? A:");
    if (i == kNoWrongAnswer) row.erase("wrong_answer");
    if (i == kLogProb) row["settings"] = {{"metric", "log_prob"}};
    if (i == kAttributionRow) row = {{"id", "attribution"}, {"prompt", prompt(clean)}, {"target", " Yes"}};
    rows.push_back(row);
  }
  return rows;
}

std::string WriteJsonl(const TempDir& dir) {
  const std::string path = dir.File("pairs.jsonl");
  std::ofstream out(path);
  for (const json& row : Rows()) out << row.dump() << "\n";
  return path;
}

// Numbers equal up to the float noise of different batch compositions, 1e-5 of `scale` (a grid entry is the
// difference of two metrics of that size: float32 noise in them stays when the entry is near 0); everything
// else exactly.
void ExpectNear(const json& actual, const json& expected, const std::string& key, double scale = 1) {
  if (expected.is_array()) {
    ASSERT_TRUE(actual.is_array()) << key;
    ASSERT_EQ(actual.size(), expected.size()) << key;
    for (size_t i = 0; i < expected.size(); ++i) ExpectNear(actual[i], expected[i], key, scale);
  } else if (expected.is_number_float()) {
    ASSERT_TRUE(actual.is_number()) << key;
    EXPECT_NEAR(actual.get<double>(), expected.get<double>(), 1e-5 * std::max(scale, std::abs(expected.get<double>())))
        << key;
  } else {
    EXPECT_EQ(actual, expected) << key;
  }
}

// The size of a component row's metrics, which bounds the float noise of its grid entries.
double MetricScale(const json& result) {
  return std::max(1.0, std::abs(result.value("clean_metric", 0.0)) + std::abs(result.value("corrupted_metric", 0.0)));
}

void ExpectSameResults(const std::vector<json>& actual, const std::vector<json>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(expected[i]["id"].get<std::string>());
    for (const auto& [key, value] : expected[i].items()) {
      if (key == "server_seconds" || key == "attempts") continue;
      ExpectNear(actual[i].value(key, json()), value, key, MetricScale(expected[i]));
    }
  }
}

// One server for the suite, and the job every test compares with: the rows run uninterrupted.
struct ReferenceJob {
  TempDir dir;
  std::string rows = WriteJsonl(dir);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start({});
  int exit_code = -1;
  std::vector<json> results;
};

class ComponentRows : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    job_ = new ReferenceJob;
    if (!job_->server.ok()) return;
    const std::string output = job_->dir.File("reference.jsonl");
    job_->exit_code = RunBatch(Args(job_->rows, output, {"--window=8"}), job_->dir.File("reference.log"));
    job_->results = ReadResults(output);
  }
  static void TearDownTestSuite() { delete job_; }
  void SetUp() override {
    ASSERT_THAT(job_->server, IsOk());
    ASSERT_EQ(job_->exit_code, 0) << ReadFile(job_->dir.File("reference.log"));
  }
  static std::vector<std::string> Args(const std::string& input, const std::string& output,
                                       const std::vector<std::string>& more = {}) {
    std::vector<std::string> args = {"--input=" + input, "--output=" + output, "--server=" + (*job_->server)->address(),
                                     "--progress=log"};
    args.insert(args.end(), more.begin(), more.end());
    return args;
  }

  static ReferenceJob* job_;
};

ReferenceJob* ComponentRows::job_ = nullptr;

TEST_F(ComponentRows, ResultsEqualTheSameRequestsSentOneByOne) {
  const std::vector<json>& results = job_->results;
  const std::vector<json> rows = Rows();
  ASSERT_EQ(results.size(), rows.size());
  auto client = client::AttributionClient::Connect({.target = (*job_->server)->address()});
  ASSERT_THAT(client, IsOk());
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& row = rows[i];
    const json& result = results[i];
    SCOPED_TRACE(result.dump().substr(0, 300));
    ASSERT_EQ(result["id"], row["id"]);
    if (i == kBadRow || i == kNoWrongAnswer) {
      EXPECT_EQ(result["status"], "error");
      EXPECT_EQ(result["error"]["code"], "INVALID_ARGUMENT");
      EXPECT_THAT(result["error"]["message"].get<std::string>(),
                  HasSubstr(i == kBadRow ? "equal length" : "wrong_answer: the metric logit_difference"));
      EXPECT_EQ(result["attempts"], i == kBadRow ? 1 : 0);  // the missing wrong answer is found without a call
      continue;
    }
    ASSERT_EQ(result["status"], "ok");
    if (i == kAttributionRow) {  // an attribution row in the same file is answered as one
      EXPECT_TRUE(result["attribution"].is_array());
      EXPECT_FALSE(result.contains("grid_values"));
      continue;
    }
    const bool layer_ig = i % kLayerIgEvery == 3;
    EXPECT_EQ(result["method"], layer_ig ? "layer_integrated_gradients" : "activation_patching");
    client::ComponentOptions request = {.model = result["model"],
                                        .pairs = {{.clean = row["clean"], .corrupted = row["corrupted"]}},
                                        .answer = row["answer"],
                                        .wrong_answer = row["wrong_answer"]};
    if (layer_ig) {
      request.method = "layer_integrated_gradients";
      request.sites = {"heads", "mlp_out"};
      request.n_steps = 8;
    }
    if (i == kLogProb) {
      request.metric = "log_prob";
      request.wrong_answer.clear();
    }
    absl::StatusOr<client::ComponentAttribution> alone = (*client)->AttributeComponents(request);
    ASSERT_THAT(alone, IsOk());
    ASSERT_EQ(alone->pairs.size(), 1u);
    // What the method ran with: layer integrated gradients reads the steps and the rule, patching reads neither.
    EXPECT_EQ(alone->settings_used.n_steps, layer_ig ? std::optional<int>(8) : std::nullopt);
    EXPECT_EQ(alone->settings_used.rule, layer_ig ? std::optional<std::string>("gausslegendre") : std::nullopt);
    EXPECT_EQ(result.value("n_steps_used", 0), layer_ig ? 8 : 0);
    EXPECT_EQ(result.value("rule_used", ""), layer_ig ? "gausslegendre" : "");
    EXPECT_FALSE(result.value("server_build", "").empty());
    const client::PairComponents& pair = alone->pairs[0];
    ExpectNear(result["clean_metric"], pair.clean_metric, "clean_metric");
    ExpectNear(result["corrupted_metric"], pair.corrupted_metric, "corrupted_metric");
    EXPECT_EQ(result["answer"], row["answer"]);
    if (i == kLogProb) {  // the answer's log-prob: near 0 on the clean prompt, far below on the corrupted one
      EXPECT_GT(result["clean_metric"].get<double>(), -0.1);
      EXPECT_LT(result["corrupted_metric"].get<double>(), -5.0);
      EXPECT_TRUE(result["wrong_answer"].is_null());
    } else {
      // The model answers the clean question and flips on the corrupted one: the logit difference changes sign.
      EXPECT_GT(result["clean_metric"].get<double>(), 1.0);
      EXPECT_LT(result["corrupted_metric"].get<double>(), -1.0);
      EXPECT_EQ(result["wrong_answer"], row["wrong_answer"]);
    }
    std::vector<std::string> clean_tokens;
    for (const client::Token& token : pair.clean_tokens) clean_tokens.push_back(token.text);
    EXPECT_EQ(result["clean_tokens"], clean_tokens);
    ASSERT_EQ(result["grid_values"].size(), pair.grids.size());
    ASSERT_EQ(pair.grids.size(), layer_ig ? 2u : 1u);
    double largest_delta = 0;
    for (size_t g = 0; g < pair.grids.size(); ++g) {
      const client::ComponentGrid& grid = pair.grids[g];
      EXPECT_EQ(result["grid_sites"][g], grid.site);
      EXPECT_EQ(result["grid_shapes"][g], grid.shape);
      EXPECT_EQ(result["grid_axes"][g], g == 0 ? "layer,head" : "layer,position");
      ExpectNear(result["grid_values"][g], grid.values, "grid_values", MetricScale(result));
      ExpectNear(result["grid_convergence_deltas"][g], grid.convergence_deltas, "grid_convergence_deltas",
                 MetricScale(result));
      for (double d : grid.convergence_deltas) largest_delta = std::max(largest_delta, std::abs(d));
    }
    // The colour is carried by head 1 of layer 0 (README's demo): every patching row names it first.
    const std::vector<double> heads = result["grid_values"][0];
    const size_t strongest =
        std::max_element(heads.begin(), heads.end(), [](double a, double b) { return std::abs(a) < std::abs(b); }) -
        heads.begin();
    if (layer_ig) {
      EXPECT_NEAR(std::abs(result["convergence_delta"].get<double>()), largest_delta, 1e-5 * (1 + largest_delta));
    } else {
      EXPECT_EQ(strongest, 1u);
      EXPECT_TRUE(result["convergence_delta"].is_null());
    }
  }
}

TEST_F(ComponentRows, KilledTwiceAndResumedEndsWithTheUninterruptedOutput) {
  const std::string output = job_->dir.File("killed.jsonl"), log = job_->dir.File("killed.log");
  std::mt19937 random(20261205);
  std::uniform_int_distribution<size_t> rows(kPairs * 20 / 100, kPairs * 35 / 100);
  // A small window: lines land in smaller groups, so a kill falls before the job ends.
  const std::vector<std::string> args = Args(job_->rows, output, {"--window=2"});
  for (int kill = 0; kill < 2; ++kill) {
    const size_t target = CountLines(output) + rows(random);
    EXPECT_EQ(RunBatch(args, log, [&] { return CountLines(output) >= target; }), -1) << "finished before its kill";
  }
  EXPECT_EQ(RunBatch(args, log), 0) << ReadFile(log);
  ExpectSameResults(ReadResults(output), job_->results);
}

TEST_F(ComponentRows, ShardsMergeIntoTheSingleRun) {
  std::vector<std::string> merge = {"merge", "--input=" + job_->rows, "--output=" + job_->dir.File("merged.jsonl")};
  for (int shard = 0; shard < 2; ++shard) {
    merge.push_back(job_->dir.File(absl::StrCat("shard-", shard, ".jsonl")));
    const std::vector<std::string> args =
        Args(job_->rows, merge.back(), {absl::StrCat("--shard_index=", shard), "--shard_count=2"});
    ASSERT_EQ(RunBatch(args, job_->dir.File("shards.log")), 0) << ReadFile(job_->dir.File("shards.log"));
  }
  ASSERT_EQ(RunBatch(merge, job_->dir.File("merge.log")), 0) << ReadFile(job_->dir.File("merge.log"));
  ExpectSameResults(ReadResults(job_->dir.File("merged.jsonl")), job_->results);
}

TEST_F(ComponentRows, ParquetHtmlAndTheSamePairsAsCsv) {
  const TempDir& dir = job_->dir;
  const std::string csv = dir.File("pairs.csv"), output = dir.File("csv.jsonl"), log = dir.File("csv.log");
  const std::string parquet = dir.File("csv.parquet"), html = dir.File("html");
  // The JSONL job's component rows that use the job's settings (a CSV row has none of its own).
  std::vector<json> expected;
  {
    std::ofstream out(csv);
    out << "id,clean,corrupted,answer,wrong_answer\n";
    const std::vector<json> rows = Rows();
    for (size_t i = 0; i < rows.size(); ++i) {
      const json& row = rows[i];
      if (!row.contains("clean") || row.contains("settings")) continue;
      out << row["id"].get<std::string>() << "," << row["clean"].get<std::string>() << ","
          << row["corrupted"].get<std::string>() << "," << row["answer"].get<std::string>() << ","
          << row.value("wrong_answer", "") << "\n";
      expected.push_back(job_->results[i]);
    }
  }
  ASSERT_EQ(RunBatch(Args(csv, output, {"--parquet=" + parquet, "--html=" + html}), log), 0) << ReadFile(log);
  // The same results, request ids included (input and settings alike).
  ExpectSameResults(ReadResults(output), expected);

  const std::string check = dir.File("parquet.log");
  EXPECT_EQ(
      std::system(absl::StrCat(ATTRIBUTION_PARQUET_CHECK, " ", parquet, " ", output, " > ", check, " 2>&1").c_str()), 0)
      << ReadFile(check);
  EXPECT_THAT(ReadFile(check), HasSubstr("grid_values: list<element: list<element: double>>"));

  // Each answered row's page is the components report, tagged with its result; the index names each row's
  // strongest components ("heads L0 H1": layer 0, head 1).
  const std::string index = ReadFile(html + "/index.html");
  for (const json& result : ReadResults(output)) {
    const std::string page = ReadFile(html + "/" + client::batch::RowPagePath(result["id"]));
    if (result["status"] != "ok") {
      EXPECT_TRUE(page.empty());
      continue;
    }
    EXPECT_THAT(page, HasSubstr("<title>Component attribution</title>"));
    EXPECT_THAT(page, HasSubstr(result["request_id"].get<std::string>()));
    EXPECT_THAT(index, HasSubstr(client::batch::RowPagePath(result["id"])));
  }
  EXPECT_THAT(index, HasSubstr(">heads L"));
}

// Layer integrated gradients with n_steps unset runs the server's default, which a lower max_steps lowers: rows of
// one settings hash ran 16 and 8 steps on two servers (grids up to 3.0 apart, deltas 0.2 and -2.8), mixed in one
// file with nothing to say so. Component answers now say what they ran with, and the job stops at a difference.
TEST(ComponentSettings, RowsOfOneSettingsThatRanWithOtherStepsStopTheJob) {
  TempDir dir;
  auto full = ServerProcess::Start({});
  auto lowered = ServerProcess::Start({"--max_steps=8"});
  ASSERT_THAT(full, IsOk());
  ASSERT_THAT(lowered, IsOk());
  std::vector<json> rows = Rows();
  rows.resize(6);
  const std::string input = dir.File("pairs.jsonl"), output = dir.File("out.jsonl"), log = dir.File("job.log");
  {
    std::ofstream out(input);
    for (json& row : rows) {
      row.erase("settings");
      out << row.dump() << "\n";
    }
  }
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output,
                      "--server=" + (*full)->address() + "," + (*lowered)->address(),
                      "--component_method=layer_integrated_gradients", "--window=1", "--progress=log"},
                     log),
            1)
      << ReadFile(log);
  EXPECT_THAT(ReadFile(log), HasSubstr("\"n_steps_used\":8"));
  EXPECT_THAT(ReadFile(log), HasSubstr("\"n_steps_used\":16"));
  EXPECT_THAT(ReadFile(log), HasSubstr("of the same settings ran with"));
  for (const json& result : ReadResults(output)) EXPECT_EQ(result.value("n_steps_used", 0), 16) << result.dump();
}

// An unknown name in a component setting, from a flag or the job file, is a usage error naming it (exit 2,
// nothing written), as for the attribution settings: sent anyway, every component row would fail alike.
TEST(ComponentSettings, UnknownNamesAreUsageErrors) {
  TempDir dir;
  const std::string rows = WriteJsonl(dir), output = dir.File("out.jsonl"), job = dir.File("job.json");
  std::ofstream(job) << R"({"component_method": "nope"})";
  const std::pair<std::string, std::string> cases[] = {
      {"--metric=foo", "--metric: unknown value \"foo\""},
      {"--component_method=bar", "--component_method: unknown value \"bar\""},
      {"--sites=heads,,mlp_out", "--sites: unknown value \"\""},
      {"--granularity=x", "--granularity: unknown value \"x\""},
      {"--direction=up", "--direction: unknown value \"up\""},
      {"--job=" + job, "component_method: unknown value \"nope\""},
  };
  for (const auto& [flag, message] : cases) {
    const std::string log = dir.File("usage.log");
    std::remove(log.c_str());
    EXPECT_EQ(RunBatch({"--input=" + rows, "--output=" + output, "--server=127.0.0.1:1", flag}, log), 2) << flag;
    EXPECT_THAT(ReadFile(log), HasSubstr(message)) << flag;
    EXPECT_EQ(CountLines(output), 0u) << flag;
  }
}

}  // namespace
}  // namespace attribution
