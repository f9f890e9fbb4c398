// SPDX-License-Identifier: Apache-2.0
// Reading a job's rows (client/batch/batch_job.h) from hostile files: deep
// nesting, repeated keys and columns, settings of the wrong shape and broken
// choices are refused naming the file's line; files are replaced whole even
// with writers racing.
#include "client/batch/batch_job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "client/batch/input_rows.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalidArgument = absl::StatusCode::kInvalidArgument;

// `text` as the file `name` in `dir`; returns its path.
std::string Write(const TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.File(name);
  std::ofstream(path) << text;
  return path;
}

// A setting nested a million deep overflowed the stack (exit 139) where the row
// was copied.
TEST(ReadRows, ADeeplyNestedValueIsRefusedNamingTheLine) {
  TempDir dir;
  const std::string rows = Write(dir, "rows.jsonl",
                                 "{\"id\":\"a\",\"prompt\":\"p\"}\n{\"id\":\"x\",\"prompt\":\"p\","
                                 "\"settings\":{\"seed\":" +
                                     std::string(1000000, '[') + std::string(1000000, ']') + "}}\n");
  EXPECT_THAT(ReadRows(rows).status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.jsonl:2: objects and arrays nested more than 64 deep")));
}

// Settings are scalars: a list or an object is refused when the row is read,
// naming the setting.
TEST(ReadRows, ASettingThatIsAListOrAnObjectIsRefused) {
  TempDir dir;
  EXPECT_THAT(ReadRows(Write(dir, "rows.jsonl",
                             R"({"id":"x","prompt":"p","settings":{"seed":[1]}})"
                             "\n"))
                  .status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.jsonl:1: setting \"seed\" must be a number, a string or a "
                                                   "boolean, not array")));
  EXPECT_THAT(ReadRows(Write(dir, "object.jsonl",
                             R"({"id":"x","prompt":"p","settings":{"model":{}}})"
                             "\n"))
                  .status(),
              StatusIs(kInvalidArgument, HasSubstr("setting \"model\"")));
  EXPECT_THAT(ReadRows(Write(dir, "ok.jsonl",
                             R"({"id":"x","prompt":"p","settings":{"seed":1,"method":"saliency"}})"
                             "\n")),
              IsOk());
}

// nlohmann kept the last of a repeated key ("k2") silently; a repeated CSV
// column kept the second.
TEST(ReadRows, ARepeatedKeyOrColumnIsRefusedNamingIt) {
  TempDir dir;
  EXPECT_THAT(ReadRows(Write(dir, "rows.jsonl",
                             "{\"id\":\"k0\",\"prompt\":\"p\"}\n"
                             R"({"id":"k1","prompt":"p","target":" t","id":"k2"})"
                             "\n"))
                  .status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.jsonl:2: key \"id\" given twice in one object")));
  EXPECT_THAT(ReadRows(Write(dir, "rows.csv", "id,prompt,prompt,target\na,first,second, Yes\n")).status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.csv:1: column \"prompt\" repeats column 2 of the header")));
}

// Choices " Yes||" (CSV) reached the server as empty targets ("target: must
// hold at least one token"), and a label not among the choices was found only
// after every choice was scored: both are refused when the row is read, naming
// it.
TEST(ReadRows, AnEmptyChoiceOrALabelNotAmongTheChoicesIsRefusedNamingTheRow) {
  TempDir dir;
  EXPECT_THAT(ReadRows(Write(dir, "rows.csv", "id,prompt,choices,label\nq1,Is it warm?, Yes||, Yes\n")).status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.csv:2: row \"q1\": choice 2 of 3 is empty")));
  EXPECT_THAT(ReadRows(Write(dir, "rows.jsonl",
                             R"({"id":"q2","prompt":"p","choices":[" Yes",""]})"
                             "\n"))
                  .status(),
              StatusIs(kInvalidArgument, HasSubstr("rows.jsonl:1: row \"q2\": choice 2 of 2 is empty")));
  EXPECT_THAT(ReadRows(Write(dir, "label.jsonl",
                             R"({"id":"q3","prompt":"p","choices":[" Yes"," No"],"label":"Yes"})"
                             "\n"))
                  .status(),
              StatusIs(kInvalidArgument, HasSubstr("label.jsonl:1: row \"q3\": label \"Yes\" is not one of the "
                                                   "choices (\" Yes\", \" No\")")));
}

// A setting of the wrong type is named with its type, in English: "must be a
// integer" read as a typo.
TEST(MergeSettings, AValueOfTheWrongTypeIsRefusedNamingTheType) {
  EXPECT_THAT(MergeSettings(JobDefaults(), nlohmann::json{{"n_steps", 1.5}}, "row").status(),
              StatusIs(kInvalidArgument, HasSubstr("row: setting \"n_steps\" must be an integer")));
  EXPECT_THAT(MergeSettings(JobDefaults(), nlohmann::json{{"stdev", "1"}}, "row").status(),
              StatusIs(kInvalidArgument, HasSubstr("row: setting \"stdev\" must be a number")));
  EXPECT_THAT(MergeSettings(JobDefaults(), nlohmann::json{{"matrix", 1}}, "row").status(),
              StatusIs(kInvalidArgument, HasSubstr("row: setting \"matrix\" must be a boolean")));
}

// A component row's digests cover its pair and answers: a row edited since its result was written is told
// apart on resume and merge (input_hash) and sends another request id; an attribution row's do not change.
TEST(ComponentRows, DigestsCoverThePairAndTheAnswers) {
  const BatchRow row{
      .id = "r", .prompt = "The cup is red.", .corrupted = "The cup is blue.", .answer = " Yes", .wrong_answer = " No"};
  const nlohmann::json settings = JobDefaults();
  std::vector<BatchRow> edited(4, row);
  edited[0].prompt = "The cup is gold.";
  edited[1].corrupted = "The cup is grey.";
  edited[2].answer = " No";
  edited[3].wrong_answer.reset();
  for (const BatchRow& other : edited) {
    EXPECT_NE(InputDigest(other), InputDigest(row));
    EXPECT_NE(RequestId("m", settings, other), RequestId("m", settings, row));
  }
  // The same text as an attribution row's prompt is another row.
  const BatchRow attribution{.id = "r", .prompt = "The cup is red."};
  EXPECT_NE(InputDigest(attribution), InputDigest(row));
}

// A component request carries no tolerance, so the server runs Gauss-Legendre for its "default" rule: the
// digests say so, where an attribution row's "default" with a tolerance is Fejér's second rule. A resume with
// --rule=fejer2 would otherwise have passed as the same job and mixed two rules' grids in one file.
TEST(ComponentRows, TheDefaultRuleIsGaussLegendreWhateverTheTolerance) {
  nlohmann::json job = JobDefaults();
  job["completeness_tolerance"] = 1e-3;
  const BatchRow pair{.id = "r", .prompt = "a", .corrupted = "b", .answer = " Yes"};
  const BatchRow prompt{.id = "r", .prompt = "a", .target = " Yes"};
  auto digest = [&](const BatchRow& row, const std::string& rule) {
    nlohmann::json settings = job;
    settings["rule"] = rule;
    absl::StatusOr<nlohmann::json> effective = RowSettings(settings, row, "row");
    EXPECT_THAT(effective, IsOk());
    return SettingsDigest(*effective);
  };
  EXPECT_EQ(digest(pair, "default"), digest(pair, "gausslegendre"));
  EXPECT_NE(digest(pair, "default"), digest(pair, "fejer2"));
  EXPECT_EQ(digest(prompt, "default"), digest(prompt, "fejer2"));
  absl::StatusOr<nlohmann::json> effective = RowSettings(job, pair, "row");
  ASSERT_THAT(effective, IsOk());
  EXPECT_EQ(ToComponentOptions(*effective, pair).rule, "gausslegendre");
}

// wrong_answer is sent with the difference metrics only (the server refuses it with the others).
TEST(ComponentRows, TheWrongAnswerIsSentWithTheDifferenceMetricsOnly) {
  const BatchRow row{.id = "r", .prompt = "a", .corrupted = "b", .answer = " Yes", .wrong_answer = " No"};
  nlohmann::json settings = JobDefaults();
  for (const char* metric : {"logit_difference", "normalized_logit_difference", "prob_difference", "PROB_DIFFERENCE"}) {
    settings["metric"] = metric;
    EXPECT_EQ(ToComponentOptions(settings, row).wrong_answer, " No") << metric;
  }
  for (const char* metric : {"log_prob", "prob"}) {
    settings["metric"] = metric;
    EXPECT_EQ(ToComponentOptions(settings, row).wrong_answer, "") << metric;
  }
}

// A token id is its decimal digits: "00", "-0", "+5" and " 5" run as ids 0 and 5 but hash as their text, so a job
// started with --baseline=00 refused its resume with --baseline=0 as other settings. The job file and rows'
// settings pass MergeSettings; the flags SettingRangeError (batch_files_e2e_test).
TEST(MergeSettings, ABaselineTokenIdIsItsDecimalDigitsOnly) {
  for (const std::string baseline : {"00", "-0", "+5", " 5", "007"}) {
    EXPECT_THAT(MergeSettings(JobDefaults(), {{"baseline", baseline}}, "--job job.json").status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("--job job.json: baseline \"" + baseline + "\": write a token id as its decimal")))
        << baseline;
  }
  for (const std::string baseline : {"0", "5", "50256", "-5", "zero", "default"}) {
    EXPECT_THAT(MergeSettings(JobDefaults(), {{"baseline", baseline}}, "row"), IsOk()) << baseline;
  }
}

}  // namespace
}  // namespace attribution::client::batch
