// SPDX-License-Identifier: Apache-2.0
// Resuming attribution-batch against one real server and a handful of rows: another job's results,
// rows tried again, rows left for a rerun (exit 3), results and inputs larger than memory should hold,
// a second job on the same file.

#include <netinet/in.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/batch_runner.h"
#include "client/batch/parquet_writer.h"
#include "client/batch/result_log.h"
#include "tests/testing/batch_fixtures.h"
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
using test_support::ExpectSameResults;
using test_support::ReadFile;
using test_support::ReadResults;
using test_support::RunBatch;
using test_support::ServerProcess;
using ::testing::HasSubstr;

using BatchResume = test_support::BatchOnOneServer;

// `count` rows ID_PREFIX0, ID_PREFIX1, ... of one question, row i with settings of its own: `settings(i)`.
void WriteOneQuestion(const std::string& path, const std::string& id_prefix, int count,
                      const std::function<json(int)>& settings) {
  std::ofstream rows(path);
  for (int i = 0; i < count; ++i) {
    rows << json{{"id", absl::StrCat(id_prefix, i)},
                 {"prompt", "Q: Is it warm? A:"},
                 {"target", " Yes"},
                 {"settings", settings(i)}}
                .dump()
         << "\n";
  }
}

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

// Shards of two jobs (other --quantity) whose rows all have settings of their own, so every settings_hash differs
// anyway: merge refuses them by the job's settings (job_settings_hash), naming both lines. Before, it merged
// them and exited 0. Results written before lines carried job_settings_hash still resume and merge.
TEST_F(BatchResume, MergeRefusesShardsOfOtherJobsWhoseRowsAllHaveTheirOwnSettings) {
  const std::string input = dir_.File("own.jsonl"), merged = dir_.File("merged.jsonl");
  WriteOneQuestion(input, "o", 4, [](int i) { return json{{"seed", i + 1}}; });
  const auto shard = [&](const std::string& output, int index, const std::string& quantity) {
    return RunBatch(
        {"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
         "--quantity=" + quantity, "--shard_index=" + std::to_string(index), "--shard_count=2", "--progress=log"},
        log_);
  };
  const std::string s0 = dir_.File("s0.jsonl"), s1 = dir_.File("s1.jsonl"), s1_other = dir_.File("s1_other.jsonl");
  ASSERT_EQ(shard(s0, 0, "log_prob"), 0) << ReadFile(log_);
  ASSERT_EQ(shard(s1, 1, "log_prob"), 0) << ReadFile(log_);
  ASSERT_EQ(shard(s1_other, 1, "prob"), 0) << ReadFile(log_);
  const std::vector<json> first = ReadResults(s0), second = ReadResults(s1), other = ReadResults(s1_other);
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(second.size(), 2u);
  ASSERT_EQ(other.size(), 2u);
  const json job_hash = first[0]["job_settings_hash"];
  ASSERT_TRUE(job_hash.is_string());
  for (const json& result : {first[1], second[0], second[1]}) EXPECT_EQ(result["job_settings_hash"], job_hash);
  EXPECT_NE(first[0]["settings_hash"], job_hash);  // the row's own seed counts in its settings_hash only
  EXPECT_NE(other[0]["job_settings_hash"], job_hash);
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + merged, s0, s1_other}, log_), 1);
  EXPECT_THAT(
      ReadFile(log_),
      HasSubstr(absl::StrCat(s1_other, ":1: row \"o1\" has job_settings_hash \"",
                             other[0]["job_settings_hash"].get<std::string>(), "\", but row \"o0\" of ", s0,
                             ":1 has \"", job_hash.get<std::string>(), "\": the shards come from different jobs")));
  EXPECT_FALSE(std::ifstream(merged).good());
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + merged, s0, s1}, log_), 0) << ReadFile(log_);
  EXPECT_EQ(CountLines(merged), 4u);
  // A shard written before results carried the field: it resumes as done, and merges as before.
  {
    std::ofstream out(s0);
    for (json result : first) {
      result.erase("job_settings_hash");
      out << result.dump() << "\n";
    }
  }
  const std::string old = ReadFile(s0);
  EXPECT_EQ(shard(s0, 0, "log_prob"), 0) << ReadFile(log_);
  EXPECT_EQ(ReadFile(s0), old);
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + merged, s0, s1}, log_), 0) << ReadFile(log_);
  EXPECT_EQ(CountLines(merged), 4u);
}

// Two jobs (other --quantity) whose rows all set the quantity themselves send the same requests; resuming one's
// file with the other's flags was accepted, and merge refused the mixed file later. The resume refuses it now.
TEST_F(BatchResume, ResumeRefusesAFileOfAJobWithOtherSettingsWhoseRowsAllOverrideThem) {
  const std::string input = dir_.File("overridden.jsonl"), output = dir_.File("out.jsonl");
  WriteOneQuestion(input, "q", 2, [](int) { return json{{"quantity", "prob"}}; });
  const auto run = [&](const std::string& quantity) {
    return RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--method=saliency",
                     "--quantity=" + quantity},
                    log_);
  };
  ASSERT_EQ(run("log_prob"), 0) << ReadFile(log_);
  const std::string before = ReadFile(output);
  const std::string job_hash = ReadResults(output)[0]["job_settings_hash"].get<std::string>();
  EXPECT_EQ(run("logit"), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(absl::StrCat(output,
                                                     ":1: row \"q0\" done by a job with other settings "
                                                     "(job_settings_hash ",
                                                     job_hash, ", this job's ")));
  EXPECT_EQ(ReadFile(output), before);
  EXPECT_EQ(run("log_prob"), 0) << ReadFile(log_);
  EXPECT_EQ(ReadFile(output), before);
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
  // Refused by the client library, never sent: it said 1 attempt, and no server line carried its request id.
  EXPECT_EQ(results[3]["attempts"], 0);
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
  EXPECT_THAT(ReadFile(log_),
              HasSubstr("UNAVAILABLE: no server answered which models it holds (server 1 (127.0.0.1:1): "));
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

}  // namespace
}  // namespace attribution
