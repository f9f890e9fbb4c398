// SPDX-License-Identifier: Apache-2.0
#include "client/batch/batch_job.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/batch/line_files.h"
#include "client/batch/parquet_writer.h"
#include "client/batch/untrusted_text.h"

namespace attribution::client::batch {
namespace {

using nlohmann::json;

uint64_t Fnv1a(const std::string& text) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

std::string Hex(uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof(buffer), "%016" PRIx64, value);
  return buffer;
}

}  // namespace

json JobDefaults() {
  return {{"model", ""},
          {"method", "integrated_gradients"},
          {"quantity", "log_prob"},
          {"n_steps", 0},
          {"rule", "default"},
          {"baseline", "default"},
          {"n_samples", 0},
          {"stdev", 0.0},
          {"seed", 0},
          {"target_tokenization", "continuation"},
          {"include_special_tokens", false},
          {"matrix", false},
          {"completeness_tolerance", 0.0},
          {"over_choices", false},
          {"faithfulness", false},
          {"component_method", "activation_patching"},
          {"metric", "logit_difference"},
          {"direction", "denoising"},
          {"sites", "heads"},
          {"granularity", "default"}};
}

namespace {

// The integer settings fit what the request carries (int32 counts, an unsigned 64-bit seed): nlohmann's
// get<int>() of 4294967304 is 8 and get<uint64_t>() of -1 is 2^64 - 1, another request than the one
// the results would record.
absl::Status CheckIntegerRange(const std::string& key, const json& value, const std::string& where) {
  if (!value.is_number_integer()) return absl::OkStatus();
  if (key == "seed") {
    if (value.is_number_unsigned() || value.get<int64_t>() >= 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": setting \"seed\" must lie in [0, 2^64), not ", JsonText(value)));
  }
  const bool fits = value.is_number_unsigned()
                        ? value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max())
                        : value.get<int64_t>() >= std::numeric_limits<int32_t>::min() &&
                              value.get<int64_t>() <= std::numeric_limits<int32_t>::max();
  if (fits) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(where, ": setting \"", key, "\" must lie in [",
                                                 std::numeric_limits<int32_t>::min(), ", ",
                                                 std::numeric_limits<int32_t>::max(), "], not ", JsonText(value)));
}

// Settings whose flag has another name: the job file takes keys "as the flags" (README), so --tolerance's
// key "tolerance" names completeness_tolerance, the request field it sets.
constexpr std::pair<absl::string_view, absl::string_view> kSettingAliases[] = {{"tolerance", "completeness_tolerance"}};

std::string SettingName(const std::string& key) {
  for (const auto& [alias, name] : kSettingAliases) {
    if (key == alias) return std::string(name);
  }
  return key;
}

}  // namespace

absl::StatusOr<json> MergeSettings(const json& base, const json& overrides, const std::string& where) {
  json merged = base;
  for (const auto& [alias, key] : kSettingAliases) {
    if (overrides.contains(alias) && overrides.contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": give \"", alias, "\" or \"", key, "\", not both (the same setting)"));
    }
  }
  for (const auto& [given_key, value] : overrides.items()) {
    const std::string key = SettingName(given_key);
    if (!base.contains(key)) {
      std::vector<std::string> known;
      for (const auto& item : base.items()) {
        known.push_back(item.key());
        for (const auto& [alias, name] : kSettingAliases) {
          if (item.key() == name) absl::StrAppend(&known.back(), " or ", alias);
        }
      }
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown setting \"", given_key, "\" (", absl::StrJoin(known, ", "), ")"));
    }
    const json& expected = base[key];
    const bool same_type = expected.is_number() ? value.is_number() : expected.type() == value.type();
    if (!same_type || (expected.is_number_integer() && !value.is_number_integer())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": setting \"", given_key, "\" must be ",
                       expected.is_number_integer() ? "an integer" : absl::StrCat("a ", expected.type_name())));
    }
    if (absl::Status range = CheckIntegerRange(key, value, where); !range.ok()) return range;
    if (key == "baseline") {
      if (absl::Status id = CheckBaselineTokenId(value.get<std::string>(), where); !id.ok()) return id;
    }
    // In the default's type: the digest sees the text, and "stdev": 1 must hash as --stdev=1 (1.0) does.
    merged[key] = expected.is_number_float() ? json(value.get<double>()) : value;
  }
  return merged;
}

absl::Status CheckBaselineTokenId(const std::string& baseline, const std::string& where) {
  int64_t id = 0;
  if (!absl::SimpleAtoi(baseline, &id) || absl::StrCat(id) == baseline) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(where, ": baseline \"", baseline,
                                                 "\": write a token id as its decimal digits (0, 42), without a sign, "
                                                 "spaces or leading zeros"));
}

absl::StatusOr<json> RowSettings(const json& job, const BatchRow& row, const std::string& where) {
  absl::StatusOr<json> settings = MergeSettings(job, row.settings, where);
  if (settings.ok() && row.components() && (*settings)["rule"] == "default") (*settings)["rule"] = "gausslegendre";
  return settings;
}

AttributeOptions ToAttributeOptions(const json& settings, const BatchRow& row, const std::string& target) {
  const bool over_choices = settings["over_choices"].get<bool>();
  return {.model = settings["model"].get<std::string>(),
          .prompt = row.prompt,
          .target = target,
          .target_tokenization = settings["target_tokenization"].get<std::string>(),
          .method = settings["method"].get<std::string>(),
          .quantity = settings["quantity"].get<std::string>(),
          .choices = over_choices ? row.choices : std::vector<std::string>(),
          .baseline = settings["baseline"].get<std::string>(),
          .n_steps = settings["n_steps"].get<int>(),
          .completeness_tolerance = settings["completeness_tolerance"].get<double>(),
          .rule = settings["rule"].get<std::string>(),
          .n_samples = settings["n_samples"].get<int>(),
          .stdev = settings["stdev"].get<double>(),
          .seed = settings["seed"].get<uint64_t>(),
          .want_token_matrix = settings["matrix"].get<bool>(),
          .want_faithfulness = settings["faithfulness"].get<bool>(),
          .include_special_tokens = settings["include_special_tokens"].get<bool>()};
}

namespace {

// "heads, mlp_out" -> {"heads", "mlp_out"}; an empty name stays, for the library to refuse naming it.
std::vector<std::string> SiteNames(const std::string& sites) {
  std::vector<std::string> names;
  for (absl::string_view name : absl::StrSplit(sites, ',')) names.emplace_back(absl::StripAsciiWhitespace(name));
  return names;
}

}  // namespace

bool IsDifferenceMetric(const std::string& metric) {
  return absl::EndsWith(absl::AsciiStrToLower(metric), "_difference");
}

ComponentOptions ToComponentOptions(const json& settings, const BatchRow& row) {
  const std::string metric = settings["metric"].get<std::string>();
  return {.model = settings["model"].get<std::string>(),
          .pairs = {{.clean = row.prompt, .corrupted = row.corrupted.value_or("")}},
          .answer = row.answer.value_or(""),
          .wrong_answer = IsDifferenceMetric(metric) ? row.wrong_answer.value_or("") : "",
          .metric = metric,
          .method = settings["component_method"].get<std::string>(),
          .direction = settings["direction"].get<std::string>(),
          .sites = SiteNames(settings["sites"].get<std::string>()),
          .granularity = settings["granularity"].get<std::string>(),
          .n_steps = settings["n_steps"].get<int>(),
          .rule = settings["rule"].get<std::string>()};
}

std::string Digest(const json& value) { return Hex(Fnv1a(JsonText(value))); }

namespace {

// The settings as their digests see them: those added after the first release only when set, and the
// rule the server runs for "default" (the default was "gausslegendre" before the server chose the rule).
json CountedSettings(const json& settings) {
  static const char* const kLaterSettings[] = {"over_choices", "faithfulness", "component_method", "metric",
                                               "direction",    "sites",        "granularity"};
  const json defaults = JobDefaults();
  json counted = settings;
  for (const char* key : kLaterSettings) {
    if (counted.contains(key) && counted[key] == defaults[key]) counted.erase(key);
  }
  if (counted.value("rule", "") == "default") {
    counted["rule"] = counted.value("completeness_tolerance", 0.0) > 0 ? "fejer2" : "gausslegendre";
  }
  return counted;
}

// A component row's own fields, into a digest's object (an attribution row's digests stay as they were).
void AddPairFields(const BatchRow& row, json& identity) {
  if (!row.components()) return;
  identity["corrupted"] = *row.corrupted;
  identity["answer"] = row.answer ? json(*row.answer) : json();
  identity["wrong_answer"] = row.wrong_answer ? json(*row.wrong_answer) : json();
}

}  // namespace

std::string SettingsDigest(const json& settings) { return Digest(CountedSettings(settings)); }

std::string RequestId(const std::string& model_fingerprint, const json& settings, const BatchRow& row) {
  const json counted = CountedSettings(settings);
  json identity = {{"model", model_fingerprint}, {"settings", counted},
                   {"prompt", row.prompt},       {"target", row.target ? json(*row.target) : json()},
                   {"choices", row.choices},     {"label", row.label ? json(*row.label) : json()}};
  AddPairFields(row, identity);
  return Digest(identity);
}

std::string InputDigest(const BatchRow& row) {
  // The row's own settings as MergeSettings reads them ("stdev": 1 as 1.0, "tolerance" as
  // completeness_tolerance), so spellings of one request hash alike.
  json own = row.settings;
  if (absl::StatusOr<json> merged = MergeSettings(JobDefaults(), row.settings, "row"); merged.ok()) {
    own = json::object();
    for (const auto& item : row.settings.items()) {
      const std::string key = SettingName(item.key());
      own[key] = (*merged)[key];
    }
  }
  json input = {{"prompt", row.prompt},
                {"target", row.target ? json(*row.target) : json()},
                {"choices", row.choices},
                {"label", row.label ? json(*row.label) : json()},
                {"settings", own}};
  AddPairFields(row, input);
  return Digest(input);
}

absl::Status WriteResultsParquet(const std::string& results_path, const std::string& parquet_path,
                                 const ParquetRowGroupLimits& limits) {
  static const std::vector<ParquetColumn> kColumns = {
      {"id", ParquetType::kString},
      {"request_id", ParquetType::kString},
      {"input_hash", ParquetType::kString},
      {"model", ParquetType::kString},
      {"model_fingerprint", ParquetType::kString},
      {"model_digest", ParquetType::kString},
      {"method", ParquetType::kString},
      {"settings_hash", ParquetType::kString},
      {"job_settings_hash", ParquetType::kString},
      {"seed", ParquetType::kUint64},  // the request's seed is a uint64
      {"status", ParquetType::kString},
      {"error_code", ParquetType::kString},
      {"error_message", ParquetType::kString},
      {"prompt_tokens", ParquetType::kStringList},
      {"target_tokens", ParquetType::kStringList},
      {"features", ParquetType::kStringList},
      {"attribution", ParquetType::kDoubleList},
      {"token_matrix", ParquetType::kDoubleMatrix},
      {"objective", ParquetType::kDouble},
      {"convergence_delta", ParquetType::kDouble},
      {"integration_steps", ParquetType::kInt64},
      {"tolerance_met", ParquetType::kBool},
      {"unread_settings", ParquetType::kStringList},
      {"n_steps_used", ParquetType::kInt64},  // the settings the method ran with (AttributeResponse.settings_used)
      {"rule_used", ParquetType::kString},
      {"n_samples_used", ParquetType::kInt64},
      {"stdev_used", ParquetType::kDouble},
      {"seed_used", ParquetType::kUint64},
      {"baseline_used", ParquetType::kString},
      {"server_build", ParquetType::kString},
      {"comprehensiveness_aopc", ParquetType::kDouble},
      {"sufficiency_aopc", ParquetType::kDouble},
      {"choices", ParquetType::kStringList},
      {"choice_probs", ParquetType::kDoubleList},
      {"choice_probs_renormalised", ParquetType::kDoubleList},
      {"predicted", ParquetType::kString},
      {"predicted_prob", ParquetType::kDouble},
      {"label", ParquetType::kString},
      {"correct", ParquetType::kBool},
      {"clean_tokens", ParquetType::kStringList},  // component rows
      {"corrupted_tokens", ParquetType::kStringList},
      {"answer", ParquetType::kString},
      {"wrong_answer", ParquetType::kString},
      {"clean_metric", ParquetType::kDouble},
      {"corrupted_metric", ParquetType::kDouble},
      {"grid_sites", ParquetType::kStringList},
      {"grid_axes", ParquetType::kStringList},
      {"grid_shapes", ParquetType::kDoubleMatrix},
      {"grid_values", ParquetType::kDoubleMatrix},
      {"grid_convergence_deltas", ParquetType::kDoubleMatrix},
      {"server_seconds", ParquetType::kDouble},
      {"attempts", ParquetType::kInt64},
  };
  absl::StatusOr<LineReader> in = LineReader::Open(results_path);
  if (!in.ok()) return in.status();
  // PATH.tmp, not a temporary of its own: a job killed while it writes the table leaves one stray file, which
  // the next run takes over, not one more per kill.
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::CreateAlone(parquet_path);
  if (!out.ok()) return out.status();
  ParquetWriter table(
      kColumns, [&out](absl::string_view bytes) { return (*out)->Write(bytes); }, limits);
  // A line at a time: the table holds one row group's values, never the whole file's.
  Line line;
  for (;;) {
    absl::StatusOr<bool> more = in->Next(line);
    if (!more.ok()) return more.status();
    if (!*more) break;
    const std::string where = absl::StrCat(results_path, ":", line.number);
    if (line.holds_nul) return NulByteError(where);
    absl::StatusOr<json> parsed = ParseJson(line.text, where);
    if (!parsed.ok()) return absl::DataLossError(parsed.status().message());
    if (!parsed->is_object()) return absl::DataLossError(absl::StrCat(where, ": not a result line"));
    json& row = *parsed;
    if (const json error = row.value("error", json()); error.is_object()) {
      row["error_code"] = error.value("code", json());
      row["error_message"] = error.value("message", json());
    }
    if (absl::Status added = table.Add(row); !added.ok()) {
      // The table counts its rows from 0; a results file's line is what every other message names.
      absl::string_view message = added.message();
      if (const size_t comma = message.find(", column "); absl::StartsWith(message, "row ") && comma != message.npos) {
        message.remove_prefix(comma + 2);
      }
      return absl::Status(added.code(), absl::StrCat(where, ": ", message));
    }
  }
  if (absl::Status finished = table.Finish(); !finished.ok()) {
    return absl::Status(finished.code(), absl::StrCat(results_path, ": ", finished.message()));
  }
  return (*out)->Commit();
}

}  // namespace attribution::client::batch
