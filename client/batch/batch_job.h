// SPDX-License-Identifier: Apache-2.0
// A data-set attribution job: the rows (JSONL or CSV), the method settings all rows share (each row may
// override them), and the deterministic identity of each request.
//
//   ASSIGN_OR_RETURN(std::vector<BatchRow> rows, ReadRows("facts.jsonl"));  // input_rows.h
//   ASSIGN_OR_RETURN(nlohmann::json settings, MergeSettings(JobDefaults(), job_file_settings));
//   AttributeOptions request = ToAttributeOptions(EffectiveSettings(settings, rows[0]), rows[0], target);
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/attribution_client.h"
#include "client/batch/parquet_writer.h"

namespace attribution::client::batch {

// One input row. JSONL: {"id", "prompt", "target"} or {"id", "prompt", "choices": [...], "label"},
// plus optional "settings": {...} overriding the job's. CSV: a header naming id, prompt, target or
// choices ("|"-separated) and label; an empty cell is a field not given. No target and no choices: the
// server generates the target; a target given but empty is refused (an empty CSV target cell in a row
// without choices too).
// A component row (seed 003's prompt pairs) instead gives "clean", "corrupted", "answer" and, for the
// difference metrics, "wrong_answer" (CSV: columns of those names): one AttributeComponents call of
// one pair, with the job's component settings.
struct BatchRow {
  std::string id;
  std::string prompt;  // a component row's clean prompt
  std::optional<std::string> target;
  std::vector<std::string> choices;
  std::optional<std::string> label;
  std::optional<std::string> corrupted;  // set exactly for component rows
  std::optional<std::string> answer, wrong_answer;
  nlohmann::json settings = nlohmann::json::object();
  int64_t line = 0;  // where it was read (1-based), for messages
  bool components() const { return corrupted.has_value(); }
};

// The settings a job may set (from flags or a JSON job file) and rows may override, with their
// defaults: model, method, quantity, n_steps, rule, baseline, n_samples, stdev, seed,
// target_tokenization, include_special_tokens, matrix, completeness_tolerance, over_choices, faithfulness;
// and those of component rows: component_method, metric, direction, sites (comma-separated),
// granularity (n_steps and rule serve them too).
nlohmann::json JobDefaults();
// `overrides` onto `base`, each value in its default's type (an integer for a number setting becomes a
// double, so equal settings hash equally); an unknown key or a value of the wrong type is INVALID_ARGUMENT
// naming it.
absl::StatusOr<nlohmann::json> MergeSettings(const nlohmann::json& base, const nlohmann::json& overrides,
                                             const std::string& where);

// INVALID_ARGUMENT naming `where` when `baseline` reads as a token id but is not its decimal text ("00", "-0",
// "+5", " 5"): the servers run such spellings as the id, but the settings hash their text, so one job's resume
// with "0" was refused as another job's. Every baseline setting (flag, job file, row) goes through it.
absl::Status CheckBaselineTokenId(const std::string& baseline, const std::string& where);

// The settings `row` runs with: its own over the job's (MergeSettings, `where` naming them in errors). A
// component row's rule "default" becomes the rule the server runs for it, "gausslegendre": its request
// carries no tolerance, where an attribution row's "default" with a tolerance is Fejér's second rule, and the
// digests must name the work done.
absl::StatusOr<nlohmann::json> RowSettings(const nlohmann::json& job, const BatchRow& row, const std::string& where);

AttributeOptions ToAttributeOptions(const nlohmann::json& settings, const BatchRow& row, const std::string& target);
// Whether a component metric compares the answer with the wrong answer (logit_difference,
// normalized_logit_difference, prob_difference): only those read wrong_answer.
bool IsDifferenceMetric(const std::string& metric);
// A component row's request: its one prompt pair, its answer and (for the difference metrics) wrong answer, the
// settings' component method, metric, direction, sites, granularity, n_steps and rule (the tokenizer adds its
// special tokens, as attribution-cli components does).
ComponentOptions ToComponentOptions(const nlohmann::json& settings, const BatchRow& row);

// A stable hex digest of a JSON value (FNV-1a 64 of its canonical text: object keys sorted): of the
// settings (a result's settings_hash), of a model's identity, ...
std::string Digest(const nlohmann::json& value);
// The digest of a job's effective settings (settings_hash, and part of each request id). Settings added
// after the first release count only when set away from their defaults, so results written before
// they existed keep their hash and resume.
std::string SettingsDigest(const nlohmann::json& settings);

// The results file (JSONL) as a Parquet table at `parquet_path` (temp + rename): one row per line, a
// column per result field (error as error_code, error_message), nulls where a row has no value. It reads a
// line at a time and writes a row group whenever `limits` is reached, so its memory is one row group's.
absl::Status WriteResultsParquet(const std::string& results_path, const std::string& parquet_path,
                                 const ParquetRowGroupLimits& limits = {});
// The digest of everything that decides a request's answer (model fingerprint, settings, prompt,
// target), so a retried or resumed row carries the same request id.
std::string RequestId(const std::string& model_fingerprint, const nlohmann::json& settings, const BatchRow& row);
// The digest of the row as the input file gives it (prompt, target, choices, label, its own settings), which
// a result carries as input_hash: merge, which knows no job settings, tells a stale result by it.
std::string InputDigest(const BatchRow& row);

}  // namespace attribution::client::batch
