// SPDX-License-Identifier: Apache-2.0
// attribution-batch on hostile files and misuse, no server needed: stray CSV quotes, no servers,
// directories, shards of other jobs, odd result lines, bad flags (exit 2); the Parquet writer's corners
// read back by pyarrow; the settings hash of jobs written before later settings existed.

#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/html_pages.h"
#include "client/batch/input_rows.h"
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
using test_support::ReadFile;
using test_support::RunBatch;
using test_support::TempDir;
using ::testing::HasSubstr;

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
  EXPECT_THAT(ReadFile(log), HasSubstr("0 rows in 0 row groups, 52 columns"));
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
  // The keys it lists name the alias too, since both are taken.
  EXPECT_THAT(client::batch::MergeSettings(defaults, json{{"nsteps", 8}}, "row").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("completeness_tolerance or tolerance")));
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
      {"--ca=/x", "--ca: given without --tls (the connection would be plaintext)"},
      {"--tls_server_name=a", "--tls_server_name: given without --tls"},
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
  EXPECT_THAT(text, HasSubstr("--job: " + folder + ": a directory, not a file"));
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

// A merge into a results file a job is still appending to stops, naming the job's lock: it renamed its output
// over the file and the job went on appending to the file renamed away (its rows in no file), exiting 0.
TEST(BatchMerge, AMergeIntoAFileAJobIsWritingStops) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("live.jsonl"), log = dir.File("log");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n" << ShardLine("r1", "h") << "\n";
  std::ofstream(output) << ShardLine("r0", "h") << "\n";
  absl::StatusOr<int> lock = client::batch::LockResults(output);  // as a running job holds it
  ASSERT_THAT(lock, IsOk());
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("another job is writing this results file"));
  EXPECT_EQ(CountLines(output), 1u);
  ::close(*lock);
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl")}, log), 0)
      << ReadFile(log);
  EXPECT_EQ(CountLines(output), 2u);
}

// A merge --output of two names (a hard link) is refused: the rename that replaces it would leave the other name
// with the old results. Before, the merge replaced one name and exited 0.
TEST(BatchMerge, AnOutputOfTwoNamesIsRefused) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), output = dir.File("merged.jsonl"), log = dir.File("log");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n";
  std::ofstream(dir.File("s1.jsonl")) << ShardLine("r1", "h") << "\n";
  std::ofstream(output) << "old\n";
  ASSERT_EQ(::link(output.c_str(), dir.File("other.jsonl").c_str()), 0);
  const std::vector<std::string> merge = {"merge", "--input=" + input, "--output=" + output, dir.File("s0.jsonl"),
                                          dir.File("s1.jsonl")};
  EXPECT_EQ(RunBatch(merge, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(output + ": --output has 2 names (hard links)"));
  EXPECT_EQ(ReadFile(output), "old\n");
  ASSERT_EQ(::unlink(dir.File("other.jsonl").c_str()), 0);
  EXPECT_EQ(RunBatch(merge, log), 0) << ReadFile(log);
  EXPECT_EQ(CountLines(output), 2u);
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
  // The --job file's mistakes are usage errors, as the flags' are.
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + dir.File("out.jsonl"), "--job=" + dir.File("job.json"),
                      "--server=127.0.0.1:1"},
                     log),
            2);
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

// An --output (or merge --output) that is a directory says so; one that is a device or a pipe is refused before
// anything reads it, naming the flag; so is a shard that is one. Before, a directory "had 2 names (hard
// links)", /dev/zero was read without end (16 GB), /dev/full died of std::bad_alloc and a FIFO hung.
TEST(BatchCommandLine, AnOutputOrShardThatIsNoFileIsRefusedSayingWhatItIs) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), folder = dir.File("folder"), fifo = dir.File("fifo"),
                    log = dir.File("log");
  WriteTwoRowInput(input);
  ASSERT_EQ(::mkdir(folder.c_str(), 0755), 0);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n";
  const std::string server = "--server=127.0.0.1:1";
  EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + folder, server}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(folder + ": --output is a directory"));
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + folder, dir.File("s0.jsonl")}, dir.File("merge_log")),
            1);
  EXPECT_THAT(ReadFile(dir.File("merge_log")), HasSubstr(folder + ": --output is a directory"));
  for (const std::string& device : {std::string("/dev/zero"), std::string("/dev/full"), fifo}) {
    EXPECT_EQ(RunBatch({"--input=" + input, "--output=" + device, server}, log), 1);
    EXPECT_THAT(ReadFile(log), HasSubstr(device + ": --output is not a regular file")) << device;
    EXPECT_EQ(
        RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), dir.File("s0.jsonl"), device}, log),
        1);
    EXPECT_THAT(ReadFile(log), HasSubstr("shard file 2 " + device + ": not a regular file")) << device;
  }
  EXPECT_FALSE(std::ifstream(dir.File("m.jsonl")).good());
}

// A shard with zeros inside a line (a crash's damage) is refused naming the line, read in bounded memory.
TEST(BatchMerge, AShardLineHoldingNulBytesIsRefusedNamingIt) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl"), std::ios::binary) << ShardLine("r0", "h") << std::string(1000, '\0') << "\n"
                                                        << ShardLine("r1", "h") << "\n";
  EXPECT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), dir.File("s0.jsonl")}, log), 1);
  EXPECT_THAT(ReadFile(log), HasSubstr(dir.File("s0.jsonl") + ":1: the line holds a NUL byte"));
}

// --parquet writes through PARQUET.tmp: what a writer killed before its rename left there is taken over, not
// left beside one more per kill (before, each kill left a PARQUET.XXXXXX.tmp no run removed).
TEST(BatchMerge, ParquetTakesOverTheTemporaryAKilledWriterLeft) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), table = dir.File("table.parquet"), log = dir.File("log");
  WriteTwoRowInput(input);
  std::ofstream(dir.File("s0.jsonl")) << ShardLine("r0", "h") << "\n" << ShardLine("r1", "h") << "\n";
  std::ofstream(table + ".tmp") << "half a table";
  ASSERT_EQ(RunBatch({"merge", "--input=" + input, "--output=" + dir.File("m.jsonl"), "--parquet=" + table,
                      dir.File("s0.jsonl")},
                     log),
            0)
      << ReadFile(log);
  EXPECT_TRUE(std::ifstream(table).good());
  EXPECT_FALSE(std::ifstream(table + ".tmp").good());
}

// A baseline token id is its decimal digits: --baseline=00 (run as 0, hashed as "00") is a usage error naming the
// flag, as in the job file. Before, a job started so refused its resume with --baseline=0 as other settings.
TEST(BatchSettings, ABaselineTokenIdOtherThanItsDigitsIsAUsageError) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), log = dir.File("log");
  WriteTwoRowInput(input);
  const std::string output = "--output=" + dir.File("out.jsonl"), server = "--server=127.0.0.1:1";
  for (const std::string baseline : {"00", "-0", "+5"}) {
    EXPECT_EQ(RunBatch({"--input=" + input, output, server, "--baseline=" + baseline}, log), 2) << baseline;
    EXPECT_THAT(ReadFile(log), HasSubstr("--baseline: baseline \"" + baseline + "\": write a token id as its decimal"));
  }
  std::ofstream(dir.File("job.json")) << R"({"baseline": "00"})";
  EXPECT_EQ(RunBatch({"--input=" + input, output, server, "--job=" + dir.File("job.json")}, log), 2);
  EXPECT_THAT(ReadFile(log), HasSubstr("--job " + dir.File("job.json") + ": baseline \"00\": write a token id"));
}

// An --output in --html's rows/ folder would be replaced by a row's page: a usage error.
TEST(BatchCommandLine, AnOutputAmongTheRowPagesIsAUsageError) {
  TempDir dir;
  const std::string input = dir.File("rows.jsonl"), html = dir.File("html"), log = dir.File("log");
  WriteTwoRowInput(input);
  ASSERT_EQ(::mkdir(html.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((html + "/rows").c_str(), 0755), 0);
  EXPECT_EQ(
      RunBatch({"--input=" + input, "--output=" + html + "/rows/r0.html", "--html=" + html, "--server=127.0.0.1:1"},
               log),
      2);
  EXPECT_THAT(ReadFile(log), HasSubstr("is in --html's folder of row pages"));
}

}  // namespace
}  // namespace attribution
