// SPDX-License-Identifier: Apache-2.0
// Which weights a data-set job's rows were computed with: the model digest the servers report, a late
// server of other weights under the model's name, weights swapped before a resume, dtype spellings,
// results files reached through links.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/result_log.h"
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
using test_support::ReadFile;
using test_support::ReadResults;
using test_support::RunBatch;
using test_support::ServerProcess;
using test_support::TempDir;
using ::testing::HasSubstr;
using BatchModelIdentity = test_support::BatchOnOneServer;

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
  std::istringstream lines(server.Log());
  for (std::string text; std::getline(lines, text);) {
    const json line = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object() || line.value("event", "") != "model_loaded") continue;
    const std::string detail = line.value("detail", "");  // "NAME PATH dtype ..."
    if (!detail.starts_with(name + " ")) continue;
    const size_t path = name.size() + 1;
    return detail.substr(path, detail.find(' ', path) - path);
  }
  return "";
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
TEST_F(BatchModelIdentity, TheWeightsDigestIsSha256OfTheModelFiles) {
  const client::ModelInfo info = DemoModelInfo(*server_);
  ASSERT_EQ(info.weights_digest.size(), 64u);
  ASSERT_EQ(info.model_digest.size(), 64u);
  EXPECT_NE(info.weights_digest, info.model_digest);
  const std::string script = dir_.File("digest.py");
  std::ofstream(script) << "import hashlib, os, sys\n"
                           "d = sys.argv[1]\n"
                           "names = sorted(n for n in os.listdir(d) if n in ('config.json', 'generation_config.json',\n"
                           "    'model.safetensors', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'))\n"
                           "if 'tokenizer.json' not in names and os.path.exists(os.path.join(d, "
                           "'special_tokens_map.json')):\n"
                           "    names = sorted(names + ['special_tokens_map.json'])\n"
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
TEST_F(BatchModelIdentity, ALateServerOfOtherWeightsUnderTheModelsNameGetsNoRowRecorded) {
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

// A row naming a model no server serves yet ends NOT_FOUND "model not served" (exit 3), and the rerun, against a
// server that serves it, runs that row. Before, its result line carried no settings_hash, and every resume
// was refused as "done with other settings", whatever changed.
TEST_F(BatchModelIdentity, ARowWhoseModelWasNotServedRunsOnceAServerServesIt) {
  const client::ModelInfo demo = DemoModelInfo(*server_);
  const std::string input = WriteQuestions("rows.jsonl", 3), output = dir_.File("out.jsonl");
  std::vector<json> rows;
  for (std::ifstream in(input); !in.eof();) {
    std::string line;
    if (std::getline(in, line) && !line.empty()) rows.push_back(json::parse(line));
  }
  rows[1]["settings"] = {{"model", "second"}};
  std::ofstream out(input);
  for (const json& row : rows) out << row.dump() << "\n";
  out.close();

  EXPECT_EQ(Run(input, output), 3) << ReadFile(log_);
  std::vector<json> results = ReadResults(output);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[1]["error"]["code"], "NOT_FOUND");
  EXPECT_THAT(results[1]["error"]["message"].get<std::string>(), HasSubstr("model not served: server 1 has no model"));

  const std::string dir = ServedModelDir(*server_, demo.name);
  auto both = ServerProcess::Start({absl::StrCat("--model=", demo.name, "=", dir, ",second=", dir)});
  ASSERT_THAT(both.status(), IsOk());
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + (*both)->address(), "--method=saliency",
                      "--progress=log"},
                     log_),
            0)
      << ReadFile(log_);
  results = ReadResults(output);
  ASSERT_EQ(Ids(results), (std::vector<std::string>{"r0", "r1", "r2"}));
  EXPECT_EQ(results[1]["status"], "ok");
  EXPECT_EQ(results[1]["model"], "second");
}

// Resuming against other weights under the same name, config and shapes is refused: the model_digest is part of
// the fingerprint. Before, the resumed rows mixed the two checkpoints' results silently.
TEST_F(BatchModelIdentity, ResumingAfterTheWeightsWereSwappedIsRefused) {
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

// A server whose limits lower the defaults of unset settings (max_samples 10 under KernelSHAP's 25) answers the
// same rows otherwise: a resume there stops at the first row that ran otherwise, naming both. Before, it mixed
// both servers' answers (0.03 apart) under one fingerprint and settings hash. Rows whose settings are set in the
// job run alike on both, and resume. Every line says what its method ran with, and which build.
TEST_F(BatchModelIdentity, RowsOfOneSettingsThatRanWithOtherSettingsStopTheJob) {
  auto lowered = ServerProcess::Start({"--max_samples=10"});
  ASSERT_THAT(lowered.status(), IsOk());
  const auto run_on = [&](const ServerProcess& server, const std::string& input, const std::string& output,
                          const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--input=" + input, "--output=" + output, "--server=" + server.address(),
                                     "--method=kernel_shap", "--progress=log"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunBatch(args, log_);
  };
  const std::string output = dir_.File("out.jsonl");
  ASSERT_EQ(run_on(*server_, WriteQuestions("first.jsonl", 2), output, {"--window=1"}), 0) << ReadFile(log_);
  for (const json& result : ReadResults(output)) {
    EXPECT_EQ(result.value("n_samples_used", -1), 25) << result;
    EXPECT_EQ(result.value("seed_used", -1), 0) << result;
    EXPECT_EQ(result.value("baseline_used", ""), "0") << result;
    EXPECT_FALSE(result.contains("n_steps_used")) << result;
    EXPECT_FALSE(result.value("server_build", "").empty()) << result;
  }
  EXPECT_EQ(run_on(**lowered, WriteQuestions("rows.jsonl", 4), output, {"--window=1"}), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr("row \"r2\" ran with {\"baseline_used\":\"0\",\"n_samples_used\":10,"));
  EXPECT_THAT(ReadFile(log_), HasSubstr("where row \"r0\" of the same settings ran with"));
  EXPECT_EQ(CountLines(output), 2u);

  const std::string set = dir_.File("set.jsonl");
  ASSERT_EQ(run_on(*server_, WriteQuestions("set_first.jsonl", 2), set, {"--n_samples=8"}), 0) << ReadFile(log_);
  ASSERT_EQ(run_on(**lowered, WriteQuestions("set_rows.jsonl", 4), set, {"--n_samples=8"}), 0) << ReadFile(log_);
  for (const json& result : ReadResults(set)) EXPECT_EQ(result.value("n_samples_used", -1), 8) << result;

  // Shards run against each server do not merge.
  const std::string rows = WriteQuestions("shard_rows.jsonl", 4);
  std::vector<std::string> merge = {"merge", "--input=" + rows, "--output=" + dir_.File("merged.jsonl")};
  for (int shard = 0; shard < 2; ++shard) {
    merge.push_back(dir_.File(absl::StrCat("shard-", shard, ".jsonl")));
    ASSERT_EQ(run_on(shard == 0 ? *server_ : **lowered, rows, merge.back(),
                     {absl::StrCat("--shard_index=", shard), "--shard_count=2"}),
              0)
        << ReadFile(log_);
  }
  EXPECT_EQ(RunBatch(merge, log_), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr("the shards ran against servers that fill unset settings differently"));

  // The lowered server's shard as a server before 146fc40 wrote it, without the settings it ran with: the shards
  // merge (nothing tells them apart), and the merge names the rows it could not check.
  {
    std::vector<json> older = ReadResults(merge[4]);
    std::ofstream out(merge[4], std::ios::trunc);
    for (json& result : older) {
      for (const char* key : {"server_build", "n_samples_used", "seed_used", "baseline_used"}) result.erase(key);
      out << result.dump() << "\n";
    }
  }
  EXPECT_EQ(RunBatch(merge, log_), 0) << ReadFile(log_);
  EXPECT_THAT(ReadFile(log_), HasSubstr("warning: 2 rows (the first \""));
  EXPECT_THAT(ReadFile(log_), HasSubstr("answered by servers that do not report the settings their method ran with"));

  // A job over both servers is told their limits differ before any row runs.
  EXPECT_EQ(RunBatch({"--input=" + rows, "--output=" + dir_.File("both.jsonl"),
                      "--server=" + server_->address() + "," + (*lowered)->address(), "--method=kernel_shap",
                      "--n_samples=8", "--progress=log"},
                     log_),
            0)
      << ReadFile(log_);
  EXPECT_THAT(ReadFile(log_),
              HasSubstr("warning: the servers' limits differ (server 1 (" + server_->address() + "): max_steps "));
  EXPECT_THAT(ReadFile(log_), HasSubstr("server 2 (" + (*lowered)->address() + "): max_steps 1024, max_samples 10"));
}

// A replica given the dtype as "fp32" serves the same model as one given "float32": both report "float32" and
// one model_digest, so a job resumes across them. Before, the digest hashed the spelling and the resume was
// refused as "done on another model".
TEST_F(BatchModelIdentity, ReplicasGivenTheDtypeInEitherSpellingServeOneModel) {
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
TEST_F(BatchModelIdentity, JobsThroughALinkAndTheRealPathExcludeEachOther) {
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

// --output with another name (a hard link): the lock is beside a name, so a job writing one name and one writing
// the other would not exclude each other; such a file is refused, linked before the job (naming --output, before
// any call) or while it runs (the results file, under the lock).
// Before, both jobs ran, the file held rows twice, and its resume failed DATA_LOSS.
TEST_F(BatchModelIdentity, AResultsFileOfTwoNamesIsRefused) {
  const std::string input = WriteQuestions("rows.jsonl", 3);
  const std::string a = dir_.File("a.jsonl"), b = dir_.File("b.jsonl");
  {
    absl::StatusOr<std::unique_ptr<client::batch::ResultLog>> holder = client::batch::ResultLog::Open(a);
    ASSERT_THAT(holder.status(), IsOk());
    ASSERT_EQ(::link(a.c_str(), b.c_str()), 0);
    EXPECT_EQ(Run(input, b), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr(b + ": --output has 2 names (hard links)"));
  }
  EXPECT_EQ(Run(input, a), 1);
  EXPECT_THAT(ReadFile(log_), HasSubstr(a + ": --output has 2 names (hard links)"));
  EXPECT_THAT(client::batch::ResultLog::Open(a).status(), ::testing::Not(IsOk()));
  EXPECT_EQ(CountLines(a), 0u);
  ASSERT_EQ(::unlink(b.c_str()), 0);
  EXPECT_EQ(Run(input, a), 0) << ReadFile(log_);
  EXPECT_EQ(CountLines(a), 3u);
}

// A resume through links (--output and --parquet) that rewrites the file replaces the link's target, and the
// links stay links: before, the rename replaced the link with a regular file and the target kept a stale copy.
TEST_F(BatchModelIdentity, AResumeThroughALinkKeepsTheLinkAndUpdatesItsTarget) {
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
TEST_F(BatchModelIdentity, OutOfRangeSettingsAreUsageErrorsNamingTheFlag) {
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
  // A tolerance with another method changes nothing, and the server accepts it as an unread setting (one set of
  // settings may go with every method; a row may name another method than the job's): the job refused it.
  const std::string tolerance_job = dir_.File("tolerance_job.json");
  std::ofstream(tolerance_job) << R"({"method": "feature_ablation", "tolerance": 0.001})";
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--method=feature_ablation", "--tolerance=0.001"}, {"--job=" + tolerance_job}}) {
    ::unlink(output.c_str());
    std::vector<std::string> args = {"--input=" + input, "--output=" + output, "--server=" + server_->address(),
                                     "--progress=log"};
    args.insert(args.end(), flags.begin(), flags.end());
    EXPECT_EQ(RunBatch(args, log_), 0) << ReadFile(log_);
    const std::vector<json> results = ReadResults(output);
    ASSERT_EQ(results.size(), 3u);
    for (const json& result : results) {
      EXPECT_EQ(result.value("status", ""), "ok") << result.dump();
      EXPECT_EQ(result.value("unread_settings", json::array()), json::array({"completeness_tolerance"}))
          << result.dump();
    }
  }
  ::unlink(output.c_str());
  // The same mistakes in the --job file are usage errors as the flags' are (they exited 1).
  const std::string bad_job = dir_.File("bad_job.json");
  for (const auto& [content, message] :
       std::vector<std::pair<std::string, std::string>>{{R"({"seed": -1})", "\"seed\" must lie in [0, 2^64)"},
                                                        {R"({"stdev": "abc"})", "stdev"},
                                                        {R"({"bogus": 1})", "bogus"}}) {
    std::ofstream(bad_job) << content;
    ::unlink(log_.c_str());
    EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + output, "--server=" + server_->address(), "--job=" + bad_job,
                        "--progress=log"},
                       log_),
              2)
        << content << ReadFile(log_);
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
