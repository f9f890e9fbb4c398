// SPDX-License-Identifier: Apache-2.0
// attribution-batch against real servers on the default model, with a generated data set of its
// warmth questions (known answers): results equal the same requests sent one by one, a job killed
// with SIGKILL three times and resumed ends with the output of an uninterrupted run, two servers
// share the work (and one may die), shards merge into the single run, bad rows are recorded.

#include <netinet/in.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/html_pages.h"
#include "client/batch/parquet_writer.h"
#include "tests/testing/batch_fixtures.h"
#include "tests/testing/batch_process.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using nlohmann::json;
using test_support::CountLines;
using test_support::ExpectSameResults;
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

constexpr const char* kAnswered = "attribution_rpcs_total{code=\"OK\",method=\"Attribute\",model=\"tiny-qa-llama\"}";

// A thread that sends `signal` to `server` once it has answered an eighth of the job's rows (polled: a fixed wait
// could fire before the runner had even asked every server for its models), or after 30 s.
std::thread SignalOnceAnEighthIsAnswered(ServerProcess& server, int signal) {
  return std::thread([&server, signal] {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (MetricValue(server.metrics_port(), kAnswered) < kRows / 8 && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(10));
    server.Signal(signal);
  });
}

TEST_F(Batch, TwoServersShareTheWorkAndOneMayDie) {
  auto c = ServerProcess::Start({});
  ASSERT_THAT(c, IsOk());
  const std::string output = dir_->File("two.jsonl"), log = dir_->File("two.log");
  // C runs the first part of the job, then dies: its rows go to B.
  std::thread killer = SignalOnceAnEighthIsAnswered(**c, SIGKILL);
  EXPECT_EQ(RunBatch(Args(output, absl::StrCat((*c)->address(), ",", b_->address())), log), 0) << ReadFile(log);
  killer.join();
  ExpectSameResults(ReadResults(output), *reference_results_);
  EXPECT_GT(MetricValue(b_->metrics_port(), kAnswered), 0);
  EXPECT_THAT(ReadFile(log), HasSubstr("errors INVALID_ARGUMENT: 1\n"));  // only the empty prompt
  EXPECT_THAT(ReadFile(log), ::testing::Not(HasSubstr("errors UNAVAILABLE")));
}

// A replica that stops answering without closing its connections (SIGSTOP: a hung process, a frozen node) held
// the rows dealt to it until their deadlines, the job waiting twice over; its pings unanswered for the keepalive,
// its calls fail UNAVAILABLE and its rows go to the other server.
TEST_F(Batch, AStoppedServersRowsGoToTheOtherAfterItsPingsGoUnanswered) {
  auto c = ServerProcess::Start({});
  ASSERT_THAT(c, IsOk());
  const std::string output = dir_->File("stopped.jsonl"), log = dir_->File("stopped.log");
  std::thread stopper = SignalOnceAnEighthIsAnswered(**c, SIGSTOP);
  std::vector<std::string> args = Args(output, absl::StrCat((*c)->address(), ",", b_->address()));
  // Without the pings every row at C fails DEADLINE_EXCEEDED after the 60 s.
  args.insert(args.end(), {"--keepalive=1", "--timeout=60"});
  EXPECT_EQ(RunBatch(args, log), 0) << ReadFile(log);
  stopper.join();
  (*c)->Signal(SIGCONT);
  ExpectSameResults(ReadResults(output), *reference_results_);
  EXPECT_THAT(ReadFile(log), HasSubstr("errors INVALID_ARGUMENT: 1\n"));  // only the empty prompt
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

// A --parquet or --html that cannot be written is found before any row runs, and the job writes nothing: found at
// the end, a whole job's table or pages were lost after all its work (and an empty results file was left).
TEST_F(Batch, UnwritableReportsAreRefusedBeforeAnyRowRuns) {
  const std::string output = dir_->File("unwritable.jsonl"), log = dir_->File("unwritable.log");
  const std::string regular = dir_->File("a_file");
  std::ofstream(regular) << "x\n";
  std::vector<std::string> args = Args(output, a_->address());
  args.push_back("--parquet=" + dir_->File("missing_folder") + "/table.parquet");
  EXPECT_EQ(RunBatch(args, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("missing_folder/table.parquet."));
  EXPECT_THAT(ReadFile(log), HasSubstr(".tmp: No such file or directory"));
  args.back() = "--html=" + regular;
  EXPECT_EQ(RunBatch(args, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("cannot create " + regular + ": Not a directory"));
  // A directory where the table or the index goes: it failed the rename after every row ran.
  const std::string folder = dir_->File("a_folder");
  std::filesystem::create_directories(folder + "/index.html");
  args.back() = "--parquet=" + folder;
  EXPECT_EQ(RunBatch(args, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("cannot replace " + folder + ": Is a directory"));
  args.back() = "--html=" + folder;
  EXPECT_EQ(RunBatch(args, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("cannot replace " + folder + "/index.html: Is a directory"));
  EXPECT_FALSE(std::filesystem::exists(output));
  EXPECT_FALSE(std::filesystem::exists(output + ".lock"));
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
                      "--html=" + html, "--faithfulness", "--matrix", "--parquet=" + parquet, "--n_steps=8"},
                     log),
            0)
      << ReadFile(log);
  const std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]["target_tokens"], (*reference_results_)[1]["target_tokens"]);
  // Saliency reads no steps: each answered row says so (before, only a single call's answer did).
  EXPECT_EQ(results[0]["unread_settings"], json::array({"n_steps"}));
  EXPECT_EQ(results[1]["unread_settings"], json::array({"n_steps"}));
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

}  // namespace
}  // namespace attribution
