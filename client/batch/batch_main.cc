// SPDX-License-Identifier: Apache-2.0
// attribution-batch: attributions for a whole data set, resumable.
//
//   attribution-batch --input=facts.jsonl --output=results.jsonl --server=a:50051,b:50051
//       --method=integrated_gradients --n_steps=512 --quantity=prob
//   attribution-batch merge --input=facts.jsonl --output=all.jsonl shard-0.jsonl shard-1.jsonl
//
// Run it again with the same arguments after any interruption (even kill -9): rows already in the
// output are skipped, the rest are added in input order. Exit status: 0 when every row has a result
// (rows that failed carry their error), 1 when the job could not run or finish, 2 on a usage error,
// 3 when rows ended for lack of capacity or time (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
// CANCELLED): running the same command again tries them again.
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/batch_runner.h"
#include "client/batch/html_pages.h"
#include "client/batch/input_rows.h"
#include "client/batch/line_files.h"
#include "client/batch/result_log.h"
#include "client/batch/untrusted_text.h"
#include "client/command_line.h"
#include "client/connection_flags.h"
#include "client/standard_output.h"
#include "engine/common/build_info.h"
#include "engine/common/exact_number.h"

ABSL_FLAG(std::string, input, "",
          "rows: .jsonl ({id, prompt, target | choices [, label] [, settings]}, or component rows {id, clean, "
          "corrupted, answer [, wrong_answer] [, settings]}) or .csv");
ABSL_FLAG(std::string, output, "", "results, one JSON line per row (appended; rerun to resume)");
ABSL_FLAG(std::string, html, "",
          "also write DIR/index.html (every result, sortable) and DIR/rows/ID-HASH.html (each answered row's page; "
          "HASH: of the id); "
          "merge: the index of the merged results, linking the pages the shards wrote to DIR");
ABSL_FLAG(std::string, parquet, "",
          "also write the results as a Parquet table here once the job (or merge) ends (pyarrow, pandas, Spark)");
ABSL_FLAG(std::string, job, "",
          "a JSON file of the method settings: keys as the flags from --model on (the connection, files and "
          "progress are flags only); flags given override it");
ABSL_FLAG(std::vector<std::string>, server, {"localhost:50051"},
          "servers, comma-separated (rows take turns), or one gRPC target such as dns:///svc:50051 with "
          "--load_balancing=round_robin");
ABSL_FLAG(std::string, load_balancing, "pick_first", "pick_first | round_robin over each target's addresses");
ABSL_FLAG(double, timeout, 600, "deadline of each call in seconds");
ABSL_FLAG(int32_t, window, 0, "rows in flight, at most 1024 (0: 32 per server)");
ABSL_FLAG(int32_t, max_attempts, 8, "tries per call while the servers answer UNAVAILABLE / RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, progress, "auto", "auto (a bar on a terminal, else log lines) | bar | log");
ABSL_FLAG(double, progress_seconds, 10, "seconds between progress log lines");
ABSL_FLAG(int32_t, shard_index, 0, "run only rows i with i % shard_count == shard_index (0-based input order)");
ABSL_FLAG(int32_t, shard_count, 1, "shards the input is split into (e.g. a Kubernetes Indexed Job's completions)");
// The method settings (JobDefaults), overridable per row.
ABSL_FLAG(std::string, model, "", "model name (empty: the servers' first model)");
ABSL_FLAG(std::string, method, "integrated_gradients", "attribution method (see attribution-cli --help)");
ABSL_FLAG(std::string, quantity, "log_prob", "log_prob | prob | logit");
ABSL_FLAG(bool, faithfulness, false,
          "also measure each explanation's deletion / insertion curves (12 more forward rows per row): AOPCs in "
          "the results, the curves on the --html pages");
ABSL_FLAG(bool, over_choices, false,
          "multiple choice: the label's probability renormalised over the row's choices (one token each) "
          "is attributed, not its probability over the whole vocabulary (seed 001's way)");
ABSL_FLAG(int32_t, n_steps, 0, "integration steps (0: server default)");
ABSL_FLAG(std::string, rule, "default",
          "integration rule: default (gausslegendre, or fejer2 with --tolerance), gausslegendre, "
          "fejer2, riemann_left, riemann_right, riemann_middle, riemann_trapezoid");
ABSL_FLAG(std::string, baseline, "default", "default | zero | pad | unk | eos | bos | a token id");
ABSL_FLAG(int32_t, n_samples, 0, "samples of sampling methods (0: server default)");
ABSL_FLAG(double, stdev, 0, "GradientShap noise");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(std::string, target_tokenization, "continuation", "continuation | separate");
ABSL_FLAG(bool, include_special_tokens, false, "special tokens as features too (Captum parity)");
ABSL_FLAG(bool, matrix, false, "also the per-output-token matrix");
ABSL_FLAG(double, tolerance, 0, "integrated gradients: completeness tolerance (adaptive steps)");
ABSL_FLAG(std::string, component_method, "activation_patching",
          "component rows: activation_patching | layer_integrated_gradients | attribution_patching | "
          "attribution_patching_star");
ABSL_FLAG(std::string, metric, "logit_difference",
          "component rows: logit_difference | normalized_logit_difference | log_prob | prob | prob_difference");
ABSL_FLAG(std::string, direction, "denoising", "component rows: denoising | noising");
ABSL_FLAG(std::string, sites, "heads", "component rows: comma-separated heads, attn_out, mlp_out, resid_pre");
ABSL_FLAG(std::string, granularity, "default",
          "component rows: default | layer_head | layer_position | layer_position_head");

namespace attribution::client::batch {
namespace {

using nlohmann::json;

// Messages name ids and values from the rows: their control characters are escaped, not sent to the terminal.
int Failed(const absl::Status& status) {
  std::fprintf(stderr, "attribution-batch: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               TerminalSafe(status.message()).c_str());
  return 1;
}

// A usage error (exit 2).
int UsageError(const std::string& message) {
  std::fprintf(stderr, "attribution-batch: %s\n", TerminalSafe(message).c_str());
  return 2;
}

// Whether the flag `name` was set: named on the command line (even to its default value, which must
// still override the job file), or away from its default by a --flagfile, which argv does not show.
bool FlagGiven(const CommandLine& line, const char* name) {
  if (line.given.contains(name)) return true;
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

// Defaults, then the job file, then the flags given.
absl::StatusOr<json> SettingsFromFlags(const CommandLine& line) {
  json settings = JobDefaults();
  if (!absl::GetFlag(FLAGS_job).empty()) {
    absl::StatusOr<std::string> text = ReadTextFile(absl::GetFlag(FLAGS_job));
    if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat("--job: ", text.status().message()));
    absl::StatusOr<json> file = ParseJson(*text, "--job " + absl::GetFlag(FLAGS_job));
    if (!file.ok()) return file.status();
    if (!file->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("--job ", absl::GetFlag(FLAGS_job), ": not a JSON object"));
    }
    absl::StatusOr<json> merged = MergeSettings(settings, *file, "--job " + absl::GetFlag(FLAGS_job));
    if (!merged.ok()) return merged.status();
    settings = *merged;
  }
  struct FlagSetting {
    const char* flag;
    const char* setting;
    json value;
  };
  const FlagSetting flags[] = {
      {"model", "model", absl::GetFlag(FLAGS_model)},
      {"method", "method", absl::GetFlag(FLAGS_method)},
      {"quantity", "quantity", absl::GetFlag(FLAGS_quantity)},
      {"n_steps", "n_steps", absl::GetFlag(FLAGS_n_steps)},
      {"rule", "rule", absl::GetFlag(FLAGS_rule)},
      {"baseline", "baseline", absl::GetFlag(FLAGS_baseline)},
      {"n_samples", "n_samples", absl::GetFlag(FLAGS_n_samples)},
      {"stdev", "stdev", absl::GetFlag(FLAGS_stdev)},
      {"seed", "seed", absl::GetFlag(FLAGS_seed)},
      {"target_tokenization", "target_tokenization", absl::GetFlag(FLAGS_target_tokenization)},
      {"include_special_tokens", "include_special_tokens", absl::GetFlag(FLAGS_include_special_tokens)},
      {"matrix", "matrix", absl::GetFlag(FLAGS_matrix)},
      {"tolerance", "completeness_tolerance", absl::GetFlag(FLAGS_tolerance)},
      {"over_choices", "over_choices", absl::GetFlag(FLAGS_over_choices)},
      {"faithfulness", "faithfulness", absl::GetFlag(FLAGS_faithfulness)},
      {"component_method", "component_method", absl::GetFlag(FLAGS_component_method)},
      {"metric", "metric", absl::GetFlag(FLAGS_metric)},
      {"direction", "direction", absl::GetFlag(FLAGS_direction)},
      {"sites", "sites", absl::GetFlag(FLAGS_sites)},
      {"granularity", "granularity", absl::GetFlag(FLAGS_granularity)},
  };
  for (const FlagSetting& flag : flags) {
    if (FlagGiven(line, flag.flag)) settings[flag.setting] = flag.value;
  }
  return settings;
}

// A usage error (exit 2) naming the first setting of the job (from its flag, or else the --job file) whose
// value is a name the client library does not map to the request, with the accepted values; "" when every
// name is known. Sent anyway, every row would fail alike and fill --output with rows that a rerun with the
// name corrected refuses as another job's. Rows' own settings stay their rows' errors.
std::string UnknownNameError(const CommandLine& line, const json& settings) {
  if (absl::Status policy = CheckLoadBalancing(absl::GetFlag(FLAGS_load_balancing)); !policy.ok()) {
    return absl::StrCat("--", policy.message());
  }
  struct NamedSetting {
    const char* key;
    bool component;  // checked as a component row's request, which calls component_method "method"
  };
  for (const auto& [key, component] :
       {NamedSetting{"method", false}, NamedSetting{"quantity", false}, NamedSetting{"rule", false},
        NamedSetting{"baseline", false}, NamedSetting{"target_tokenization", false},
        NamedSetting{"component_method", true}, NamedSetting{"metric", true}, NamedSetting{"direction", true},
        NamedSetting{"sites", true}, NamedSetting{"granularity", true}}) {
    json alone = JobDefaults();
    alone[key] = settings[key];
    const absl::Status status = component ? CheckComponentOptions(ToComponentOptions(alone, BatchRow()))
                                          : CheckAttributeOptions(ToAttributeOptions(alone, BatchRow(), ""));
    if (status.ok()) continue;
    // The library's message names the option ("method: unknown value ..."), as the flag and the job file do.
    std::string message(status.message());
    if (component && absl::StartsWith(message, "method:")) message = absl::StrCat("component_", message);
    return FlagGiven(line, key) ? absl::StrCat("--", message)
                                : absl::StrCat("--job ", absl::GetFlag(FLAGS_job), ": ", message);
  }
  return "";
}

// Where a job setting came from, for messages: its flag, or else the --job file's key.
std::string SettingSource(const CommandLine& line, const char* flag, const char* key) {
  return FlagGiven(line, flag) ? absl::StrCat("--", flag) : absl::StrCat("--job ", absl::GetFlag(FLAGS_job), ": ", key);
}

// A usage error (exit 2) naming the first number setting of the job outside the range every server refuses
// (n_steps or n_samples below 0, stdev outside [0, 10], tolerance outside [0, 1] or with a method other than
// integrated gradients, a negative baseline token id) or, given `limits` (the job's model as the servers reported it),
// over the servers' own limits (max_steps, max_samples, the vocabulary for a baseline token id); "" when none is. Sent
// anyway, every row would fail alike and fill --output with rows that a rerun with the value corrected refuses as
// another job's. Rows' own settings stay their rows' errors.
std::string SettingRangeError(const CommandLine& line, const json& settings, const ModelIdentity* limits) {
  const int64_t n_steps = settings["n_steps"].get<int64_t>(), n_samples = settings["n_samples"].get<int64_t>();
  const double stdev = settings["stdev"].get<double>(), tolerance = settings["completeness_tolerance"].get<double>();
  if (n_steps < 0) return absl::StrCat(SettingSource(line, "n_steps", "n_steps"), ": ", n_steps, " is below 0");
  if (n_samples < 0) {
    return absl::StrCat(SettingSource(line, "n_samples", "n_samples"), ": ", n_samples, " is below 0");
  }
  if (!(stdev >= 0 && stdev <= 10)) {
    return absl::StrCat(SettingSource(line, "stdev", "stdev"), ": ", ExactNumber(stdev), " is outside [0, 10]");
  }
  if (!(tolerance >= 0 && tolerance <= 1)) {
    return absl::StrCat(SettingSource(line, "tolerance", "completeness_tolerance"), ": ", ExactNumber(tolerance),
                        " is outside [0, 1]");
  }
  const std::string baseline = settings["baseline"].get<std::string>();
  if (absl::Status id = CheckBaselineTokenId(baseline, SettingSource(line, "baseline", "baseline")); !id.ok()) {
    return std::string(id.message());
  }
  int64_t token = 0;
  const bool token_id = absl::SimpleAtoi(baseline, &token);
  if (token_id && token < 0) {
    return absl::StrCat(SettingSource(line, "baseline", "baseline"), ": token id ", token, " is below 0");
  }
  if (limits == nullptr) return "";
  if (limits->max_steps > 0 && n_steps > limits->max_steps) {
    return absl::StrCat(SettingSource(line, "n_steps", "n_steps"), ": ", n_steps, " is over the servers' limit of ",
                        limits->max_steps, " (ListModels' max_steps)");
  }
  if (limits->max_samples > 0 && n_samples > limits->max_samples) {
    return absl::StrCat(SettingSource(line, "n_samples", "n_samples"), ": ", n_samples,
                        " is over the servers' limit of ", limits->max_samples, " (ListModels' max_samples)");
  }
  if (token_id && limits->vocab_size > 0 && token >= limits->vocab_size) {
    return absl::StrCat(SettingSource(line, "baseline", "baseline"), ": token id ", token,
                        " is past the model's vocabulary of ", limits->vocab_size, " tokens");
  }
  return "";
}

absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> Connect() {
  ClientOptions options{.load_balancing = absl::GetFlag(FLAGS_load_balancing),
                        .timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout))};
  if (absl::Status flags = ApplyConnectionFlags(options); !flags.ok()) return flags;
  return ConnectToServers(absl::GetFlag(FLAGS_server), options);
}

// A usage error to report (exit 2) in flag values abseil parsed, or "".
std::string FlagValueError() {
  const std::string progress = absl::GetFlag(FLAGS_progress);
  if (progress != "auto" && progress != "bar" && progress != "log") {
    return absl::StrCat("--progress: \"", progress, "\" is not auto, bar or log");
  }
  // absl::Seconds(NaN) is an infinite duration: no deadline, where a number was meant; a deadline of 0 or
  // less fails every call at once, as DEADLINE_EXCEEDED, which a rerun tries again (and fails again).
  if (const double timeout = absl::GetFlag(FLAGS_timeout); std::isnan(timeout)) {
    return "--timeout: give a number of seconds, not nan";
  } else if (timeout <= 0) {
    return absl::StrCat("--timeout: give a number of seconds above 0, not ", timeout);
  }
  // 0 is the default (32 rows per server); below, the default was taken silently.
  if (const int window = absl::GetFlag(FLAGS_window); window < 0) {
    return absl::StrCat("--window: give a number of rows (0: 32 per server), not ", window);
  } else if (window > kMaxWindow) {
    return absl::StrCat("--window: give at most ", kMaxWindow, " rows in flight (a thread each), not ", window);
  }
  if (const int attempts = absl::GetFlag(FLAGS_max_attempts); attempts < 1) {
    return absl::StrCat("--max_attempts: give a number of tries of at least 1, not ", attempts);
  }
  if (const double seconds = absl::GetFlag(FLAGS_progress_seconds); !(seconds >= 0)) {
    return absl::StrCat("--progress_seconds: give a number of seconds of at least 0, not ", seconds);
  }
  if (const int count = absl::GetFlag(FLAGS_shard_count), index = absl::GetFlag(FLAGS_shard_index);
      count < 1 || index < 0 || index >= count) {
    return absl::StrCat("--shard_index ", index, " must lie in [0, --shard_count ", count, ")");
  }
  const std::vector<std::string>& servers = absl::GetFlag(FLAGS_server);
  if (servers.empty()) return "--server: give at least one server (host:port, comma-separated)";
  for (size_t i = 0; i < servers.size(); ++i) {
    if (absl::StripAsciiWhitespace(servers[i]).empty()) {
      return absl::StrCat("--server: entry ", i + 1, " of ", servers.size(), " is empty");
    }
  }
  return "";
}

// `path` absolute, its folder's symbolic links, "." and ".." resolved (the folder must exist; else `path`).
std::string ResolvedPath(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  char resolved[PATH_MAX];
  if (::realpath(folder.c_str(), resolved) == nullptr) return path;
  return absl::StrCat(resolved, "/", path.substr(slash == std::string::npos ? 0 : slash + 1));
}

// Whether two paths name one file: one inode where both exist (links, hard links), else one resolved path.
bool SameFile(const std::string& a, const std::string& b) {
  struct stat a_stat, b_stat;
  const bool a_exists = ::stat(a.c_str(), &a_stat) == 0, b_exists = ::stat(b.c_str(), &b_stat) == 0;
  if (a_exists && b_exists) return a_stat.st_dev == b_stat.st_dev && a_stat.st_ino == b_stat.st_ino;
  return a_exists == b_exists && ResolvedPath(a) == ResolvedPath(b);
}

// A file the command reads or writes, and the flag that names it.
struct JobFile {
  std::string what;  // for messages: "--output", "--output's lock file", ...
  std::string path;
  bool written;
};

// A usage error to report (exit 2) when a file the command writes is also another of its files (--parquet
// naming --output or --input replaced it), or "".
std::string SameFileError(const std::vector<JobFile>& files) {
  for (size_t i = 0; i < files.size(); ++i) {
    for (size_t j = i + 1; j < files.size(); ++j) {
      const JobFile &a = files[i], &b = files[j];
      if (a.path.empty() || b.path.empty() || (!a.written && !b.written)) continue;
      if (absl::StartsWith(a.what, "--output") && absl::StartsWith(b.what, "--output")) continue;  // one job's own
      if (SameFile(a.path, b.path)) {
        return absl::StrCat(a.what, " and ", b.what, " name one file (", b.path,
                            "), which writing one would replace: give each a file of its own");
      }
    }
  }
  return "";
}

// The files a command names: `inputs` read (--input, --job, shards), --output (with the temporary and lock
// file beside it that a job writes), --parquet and --html's index written.
std::vector<JobFile> JobFiles(std::vector<JobFile> inputs, bool job) {
  const std::string output = absl::GetFlag(FLAGS_output);
  inputs.push_back({"--output", output, true});
  if (job) {
    inputs.push_back({"--output's temporary file", output + ".tmp", true});
    inputs.push_back({"--output's lock file", output + ".lock", true});
  }
  inputs.push_back({"--parquet", absl::GetFlag(FLAGS_parquet), true});
  if (!absl::GetFlag(FLAGS_parquet).empty()) {
    inputs.push_back({"--parquet's temporary file", absl::GetFlag(FLAGS_parquet) + ".tmp", true});
  }
  if (!absl::GetFlag(FLAGS_html).empty())
    inputs.push_back({"--html index", absl::GetFlag(FLAGS_html) + "/index.html", true});
  return inputs;
}

// --html's folder and a temporary beside --parquet's table are made before any row runs: an unwritable one found
// at the end lost the table or the pages of a whole job's work.
absl::Status CheckReportsWritable() {
  // Destroyed uncommitted, a probe removes its temporary. The table first: a refusal then leaves no folder.
  const auto probe = [](const std::string& path) { return AtomicFileWriter::Create(path).status(); };
  if (!absl::GetFlag(FLAGS_parquet).empty()) {
    // As the table is written (WriteResultsParquet): through PARQUET.tmp.
    if (absl::Status table = AtomicFileWriter::CreateAlone(absl::GetFlag(FLAGS_parquet)).status(); !table.ok()) {
      return table;
    }
  }
  if (absl::GetFlag(FLAGS_html).empty()) return absl::OkStatus();
  if (absl::Status made = MakeReportDirectory(absl::GetFlag(FLAGS_html)); !made.ok()) return made;
  return probe(absl::GetFlag(FLAGS_html) + "/index.html");
}

// --html's index of --output; says how many answered rows have no page to link to.
absl::Status WriteHtmlIndex() {
  absl::StatusOr<int64_t> without_page = WriteIndex(absl::GetFlag(FLAGS_html), absl::GetFlag(FLAGS_output));
  if (!without_page.ok()) return without_page.status();
  if (*without_page > 0) {
    std::fprintf(stderr,
                 "attribution-batch: %lld answered rows have no page in %s (done by a run without --html, or "
                 "their pages were written elsewhere): the index lists them without a link\n",
                 static_cast<long long>(*without_page), TerminalSafe(absl::GetFlag(FLAGS_html)).c_str());
  }
  return absl::OkStatus();
}

// A usage error (exit 2) when --output is in --html's rows/ folder, where a row's page (ID-HASH.html) may
// replace it; "" otherwise.
std::string RowPagesError() {
  if (absl::GetFlag(FLAGS_html).empty()) return "";
  const std::string rows = absl::GetFlag(FLAGS_html) + "/rows";
  const std::string output = ResolvedPath(absl::GetFlag(FLAGS_output));
  if (!SameFile(output.substr(0, output.find_last_of('/')), rows)) return "";
  return absl::StrCat("--output ", absl::GetFlag(FLAGS_output), " is in --html's folder of row pages (", rows,
                      "), which the job writes a page per row into: write the results elsewhere");
}

int Run(const CommandLine& line) {
  if (absl::GetFlag(FLAGS_input).empty() || absl::GetFlag(FLAGS_output).empty()) {
    std::fprintf(stderr, "attribution-batch: give --input and --output (see --help)\n");
    return 2;
  }
  if (const std::string error = FlagValueError(); !error.empty()) return UsageError(error);
  if (const std::string error = ConnectionFlagsError(); !error.empty()) return UsageError(error);
  if (const std::string error = SameFileError(
          JobFiles({{"--input", absl::GetFlag(FLAGS_input), false}, {"--job", absl::GetFlag(FLAGS_job), false}},
                   /*job=*/true));
      !error.empty()) {
    return UsageError(error);
  }
  // Before any call, as ResultLog::Open checks it again under the lock: a directory or a device (/dev/zero,
  // read without end) found after the servers were asked.
  if (absl::Status results = CheckResultsFile(absl::GetFlag(FLAGS_output), "--output"); !results.ok()) {
    return Failed(results);
  }
  if (const std::string error = RowPagesError(); !error.empty()) return UsageError(error);
  // This shard's rows (FlagValueError checked the shard flags), read again one by one as they run.
  absl::StatusOr<std::unique_ptr<InputRows>> rows =
      InputRows::Open(absl::GetFlag(FLAGS_input), absl::GetFlag(FLAGS_shard_index), absl::GetFlag(FLAGS_shard_count));
  if (!rows.ok()) return Failed(rows.status());
  absl::StatusOr<json> settings = SettingsFromFlags(line);
  // The --job file's keys are the flags': a bad value, type or name there is a usage error as a flag's is (it
  // exited 1, which an Indexed Job retries); a file that cannot be read is not.
  if (!settings.ok() && settings.status().code() == absl::StatusCode::kInvalidArgument) {
    return UsageError(std::string(settings.status().message()));
  }
  if (!settings.ok()) return Failed(settings.status());
  if (const std::string error = UnknownNameError(line, *settings); !error.empty()) return UsageError(error);
  if (const std::string error = SettingRangeError(line, *settings, nullptr); !error.empty()) return UsageError(error);
  absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> owned = Connect();
  if (!owned.ok()) return Failed(owned.status());
  std::vector<AttributionClient*> clients;
  for (auto& client : *owned) clients.push_back(client.get());
  std::string unanswered;
  absl::StatusOr<ModelFingerprints> fingerprints = FingerprintModels(**rows, *settings, clients, &unanswered);
  if (!fingerprints.ok()) {
    // No server answered (all down or overloaded): the same command may succeed later, as when rows end so.
    const absl::Status& status = fingerprints.status();
    const int failed = Failed(status);
    return RetriedOnResume(absl::StatusCodeToString(status.code()), status.message()) ? 3 : failed;
  }
  // A wrong address in --server cost a failed call for every row dealt to it, with no word of why.
  if (!unanswered.empty()) {
    std::cerr << "attribution-batch: warning: not every server answered which models it holds ("
              << TerminalSafe(unanswered) << "): rows dealt to it go on to the next server while it does not answer\n";
  }
  // The servers' limits for the job's model, now known: a value over them would fail every row alike.
  if (auto job = fingerprints->find((*settings)["model"].get<std::string>());
      job != fingerprints->end() && job->second.ok()) {
    if (const std::string error = SettingRangeError(line, *settings, &*job->second); !error.empty()) {
      return UsageError(error);
    }
    // Settings the job sets are not lowered: then the difference changes nothing the job asks.
    const bool all_set = (*settings)["n_steps"].get<int64_t>() > 0 && (*settings)["n_samples"].get<int64_t>() > 0;
    if (!job->second->differing_limits.empty() && !all_set) {
      std::cerr << "attribution-batch: warning: the servers' limits differ ("
                << TerminalSafe(job->second->differing_limits)
                << "): a limit below a default lowers it, so settings the job leaves unset may run differently on "
                   "each; rows that report the settings they ran with are checked (the job stops at a difference), "
                   "set n_steps and n_samples in the job to be sure\n";
    }
  }
  if (absl::Status writable = CheckReportsWritable(); !writable.ok()) return Failed(writable);
  absl::StatusOr<std::unique_ptr<ResultLog>> log = ResultLog::Open(absl::GetFlag(FLAGS_output));
  if (!log.ok()) return Failed(log.status());

  const std::string progress = absl::GetFlag(FLAGS_progress);
  RunnerOptions options{.window = absl::GetFlag(FLAGS_window) > 0
                                      ? absl::GetFlag(FLAGS_window)
                                      : std::min(kMaxWindow, 32 * static_cast<int>(clients.size())),
                        .max_attempts = absl::GetFlag(FLAGS_max_attempts),
                        .progress_every = absl::Seconds(absl::GetFlag(FLAGS_progress_seconds)),
                        .progress_bar = progress == "bar" || (progress == "auto" && ::isatty(STDERR_FILENO)),
                        .html_dir = absl::GetFlag(FLAGS_html),
                        .server_names = absl::GetFlag(FLAGS_server)};
  absl::StatusOr<JobSummary> summary = RunJob(**rows, *settings, *fingerprints, clients, **log, options, std::cerr);
  if (!summary.ok()) return Failed(summary.status());
  PrintSummary(*summary, std::cerr);
  if (!options.html_dir.empty()) {
    if (absl::Status index = WriteHtmlIndex(); !index.ok()) return Failed(index);
  }
  if (!absl::GetFlag(FLAGS_parquet).empty()) {
    absl::Status table = WriteResultsParquet(absl::GetFlag(FLAGS_output), absl::GetFlag(FLAGS_parquet));
    if (!table.ok()) return Failed(table);
  }
  // A script (or a Kubernetes Job's restart policy) must be able to tell an incomplete job from a done one.
  if (const int64_t retry = summary->to_retry; retry > 0) {
    std::fprintf(stderr,
                 "attribution-batch: %lld rows ended for lack of capacity or time; run the same command again to "
                 "retry them\n",
                 static_cast<long long>(retry));
    return 3;
  }
  return 0;
}

// The results of a job's shards by row: each line checked as a resumed job checks its file (ParseResultLine,
// RetriedOnResume, CheckResultIsOfRow) and against the other shards' (one fingerprint per model, one
// settings hash for rows without settings of their own, one result per row). Shards are read a line at a
// time and only what the checks need is kept, with where each line is: the merged file is copied from the
// shards by offset, so a merge holds no shard's text, whatever their sizes; and the input's rows are read
// from it as results name them (InputRows), so it holds no input text either.
class ShardResults {
 public:
  explicit ShardResults(const JobRows& rows) : rows_(rows) {
    by_id_.reserve(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) by_id_.emplace_back(rows.IdDigestOf(i), i);
    std::sort(by_id_.begin(), by_id_.end());
  }

  // `what` names the file in messages ("shard file 2").
  absl::Status Add(const std::string& file, const std::string& what) {
    // A device or a pipe is no shard: /dev/zero is one line without end, a FIFO blocks its opening, and lines
    // are copied later by offset. (A directory is "cannot read ...: Is a directory", as its first read says.)
    if (struct stat info; ::stat(file.c_str(), &info) == 0 && !S_ISREG(info.st_mode) && !S_ISDIR(info.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, " ", file,
          ": not a regular file (a device or a pipe): merge reads shards twice, by offset; write the shard to a "
          "file first"));
    }
    absl::StatusOr<LineReader> in = LineReader::Open(file);
    if (!in.ok()) return in.status();
    absl::StatusOr<FileIdentity> before = in->identity();
    if (!before.ok()) return before.status();
    const size_t shard = files_.size();
    files_.push_back(file);
    for (Line line;;) {
      absl::StatusOr<bool> more = in->Next(line);
      if (!more.ok()) return more.status();
      if (!*more) break;
      if (line.length == 0) continue;
      // The last line without its newline: cut short as its job was killed, never a result.
      if (!line.complete) {
        return absl::FailedPreconditionError(
            absl::StrCat(file, ":", line.number,
                         ": the shard ends in a partial line (its job was interrupted): run that shard's command "
                         "again to complete it, then merge"));
      }
      if (line.holds_nul) return NulByteError(absl::StrCat(file, ":", line.number));
      if (absl::Status added = AddLine(line, shard); !added.ok()) return added;
    }
    absl::StatusOr<FileIdentity> after = in->identity();
    if (!after.ok()) return after.status();
    if (*after != *before) return ChangedWhileMerging(file);
    identities_.push_back(*after);
    return absl::OkStatus();
  }

  // Writes the merged file to `path` in input order (AtomicFileWriter: the file is replaced only once whole);
  // NOT_FOUND naming a row without a result, before anything is written.
  absl::Status WriteInInputOrder(const std::string& path) const {
    for (size_t r = 0; r < rows_.size(); ++r) {
      if (results_.contains(r)) continue;
      absl::StatusOr<BatchRow> row = rows_.Row(r);
      if (!row.ok()) return row.status();
      return absl::NotFoundError(absl::StrCat("row \"", row->id, "\" has no result"));
    }
    std::vector<int> fds;
    auto close_all = [&fds] {
      for (int fd : fds) ::close(fd);
    };
    for (size_t shard = 0; shard < files_.size(); ++shard) {
      const std::string& file = files_[shard];
      fds.push_back(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
      if (fds.back() < 0) {
        const int error = errno;
        fds.pop_back();
        close_all();
        return absl::NotFoundError(absl::StrCat("cannot read ", file, ": ", std::strerror(error)));
      }
      // Lines are copied by the offsets read before: from the same file, unchanged, or not at all.
      absl::StatusOr<FileIdentity> now = IdentityOfOpenFile(fds.back(), file);
      if (!now.ok() || *now != identities_[shard]) {
        close_all();
        return now.ok() ? ChangedWhileMerging(file) : now.status();
      }
    }
    absl::Status written;
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(path);
    if (!out.ok()) written = out.status();
    for (size_t r = 0; r < rows_.size() && written.ok(); ++r) {
      const Located& located = results_.at(r);
      written =
          (*out)->Copy(fds[located.shard], files_[located.shard], located.result.offset, located.result.length + 1);
    }
    if (written.ok()) written = (*out)->Commit();
    close_all();
    return written;
  }

  // The answered rows whose settings used could not be checked against the others'.
  const UncheckedSettings& unchecked() const { return unchecked_; }

 private:
  struct Located {
    DoneRow result;  // its line is its line number in the shard
    size_t shard;
  };
  std::string Where(const Located& located) const {
    return absl::StrCat(files_[located.shard], ":", located.result.line);
  }

  absl::Status AddLine(const Line& line, size_t shard) {
    const std::string where = absl::StrCat(files_[shard], ":", line.number);
    absl::StatusOr<DoneRow> result = ParseResultLine(line.text, where);
    if (!result.ok()) return result.status();
    result->line = line.number;
    result->offset = line.offset;
    absl::StatusOr<std::optional<std::pair<size_t, BatchRow>>> row = RowOfId(result->id);
    if (!row.ok()) return row.status();
    if (!row->has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": row \"", result->id, "\" is not in ",
                                                        absl::GetFlag(FLAGS_input), ": the shard is of another job"));
    }
    // A row its shard's job would try again on a rerun has no final result yet.
    if (RetriedOnResume(result->error_code, result->error_message)) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": row \"", result->id, "\" ended ", result->error_code,
                       ", which a rerun tries again: run that shard's command again before merging"));
    }
    const auto& [position, input_row] = **row;
    if (absl::Status same = CheckResultIsOfRow(*result, input_row, where); !same.ok()) return same;
    // Rows may name their own model: each model is one and the same in every shard.
    const Located& first_of_model = first_of_model_.try_emplace(result->model, Located{*result, shard}).first->second;
    if (absl::Status same = SameJob(first_of_model, *result, where, "model_fingerprint", &DoneRow::model_fingerprint);
        !same.ok()) {
      return same;
    }
    if (input_row.settings.empty()) {
      if (!first_job_row_) first_job_row_.emplace(Located{*result, shard});
      if (absl::Status same = SameJob(*first_job_row_, *result, where, "settings_hash", &DoneRow::settings_hash);
          !same.ok()) {
        return same;
      }
    }
    // Rows with settings of their own have hashes of their own: the job's settings before them tell the jobs
    // apart (lines written before results carried job_settings_hash are compared as above only).
    if (!result->job_settings_hash.empty()) {
      if (!first_job_settings_) first_job_settings_.emplace(Located{*result, shard});
      if (absl::Status same =
              SameJob(*first_job_settings_, *result, where, "job_settings_hash", &DoneRow::job_settings_hash);
          !same.ok()) {
        return same;
      }
    }
    // Rows of one settings hash ran with one set of settings (servers whose limits lower defaults differently do not).
    unchecked_.Add(*result);
    if (!result->settings_used.empty()) {
      const Located& first_of_settings =
          first_of_settings_.try_emplace(result->settings_hash, Located{*result, shard}).first->second;
      if (absl::Status same = SameJob(first_of_settings, *result, where, "settings used", &DoneRow::settings_used,
                                      "the shards ran against servers that fill unset settings differently (a limit "
                                      "below a default lowers it)");
          !same.ok()) {
        return same;
      }
    }
    const std::string id = result->id;
    if (auto [first, added] = results_.try_emplace(position, Located{std::move(*result), shard}); !added) {
      return absl::DataLossError(
          absl::StrCat(where, ": row \"", id, "\" already has a result at ", Where(first->second)));
    }
    return absl::OkStatus();
  }

  // Whether `result` can join the results of the job `first` came from (the same `key`, where both have one).
  absl::Status SameJob(const Located& first, const DoneRow& result, const std::string& where, const char* key,
                       const std::string DoneRow::*field,
                       absl::string_view why = "the shards come from different jobs") const {
    const std::string &mine = first.result.*field, &theirs = result.*field;
    if (mine.empty() || theirs.empty() || mine == theirs) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(where, ": row \"", result.id, "\" has ", key, " \"", theirs,
                                                      "\", but row \"", first.result.id, "\" of ", Where(first),
                                                      " has \"", mine, "\": ", why));
  }

  // The input row of id `id` and its position, read from the input; none when no row has it.
  absl::StatusOr<std::optional<std::pair<size_t, BatchRow>>> RowOfId(const std::string& id) const {
    const uint64_t digest = IdDigest(id);
    for (auto it = std::lower_bound(by_id_.begin(), by_id_.end(), std::make_pair(digest, size_t{0}));
         it != by_id_.end() && it->first == digest; ++it) {
      absl::StatusOr<BatchRow> row = rows_.Row(it->second);
      if (!row.ok()) return row.status();
      if (row->id == id) return std::make_optional(std::make_pair(it->second, std::move(*row)));
    }
    return std::nullopt;
  }

  const JobRows& rows_;
  static absl::Status ChangedWhileMerging(const std::string& file) {
    return absl::FailedPreconditionError(absl::StrCat(
        file, ": the shard changed while it was being merged (is its job still running?): run merge again"));
  }

  std::vector<std::string> files_;                    // the shards, in the order added
  std::vector<FileIdentity> identities_;              // of each shard as read
  std::vector<std::pair<uint64_t, size_t>> by_id_;    // (IdDigest, position) of each input row, sorted
  std::map<size_t, Located> results_;                 // input position -> its row's result
  std::map<std::string, Located> first_of_model_;     // model name -> the first result on it
  std::map<std::string, Located> first_of_settings_;  // settings hash -> its first result that names settings used
  std::optional<Located> first_job_row_;              // the first result of a row without settings of its own
  std::optional<Located> first_job_settings_;         // the first result with a job_settings_hash
  UncheckedSettings unchecked_;
};

// Joins shard outputs into one file in the input's row order; every row must have exactly one result,
// from one job (ShardResults). The output is replaced only once the merge succeeded.
int Merge(const std::vector<std::string>& shard_files) {
  std::vector<JobFile> inputs = {{"--input", absl::GetFlag(FLAGS_input), false}};
  for (size_t i = 0; i < shard_files.size(); ++i) {
    inputs.push_back({absl::StrCat("shard file ", i + 1), shard_files[i], false});
  }
  if (const std::string error = SameFileError(JobFiles(inputs, /*job=*/false)); !error.empty()) {
    return UsageError(error);
  }
  // The merged file replaces --output by rename(2), which would leave its other names (hard links) with the
  // old results, and a job resuming through one of them would not share the lock of a job on another.
  if (absl::Status one_name = CheckResultsFile(absl::GetFlag(FLAGS_output), "--output"); !one_name.ok()) {
    return Failed(one_name);
  }
  absl::StatusOr<std::unique_ptr<InputRows>> rows = InputRows::Open(absl::GetFlag(FLAGS_input));
  if (!rows.ok()) return Failed(rows.status());
  ShardResults results(**rows);
  for (size_t i = 0; i < shard_files.size(); ++i) {
    if (absl::Status added = results.Add(shard_files[i], inputs[i + 1].what); !added.ok()) return Failed(added);
  }
  if (absl::Status writable = CheckReportsWritable(); !writable.ok()) return Failed(writable);
  // A job still appending to --output would go on writing into the file the merge renamed away (its rows in no
  // file): the merge takes the job's lock, or stops.
  // Held to the end: --parquet and --html read --output after it is written.
  absl::StatusOr<int> lock = LockResults(RealFilePath(absl::GetFlag(FLAGS_output)));
  if (!lock.ok()) return Failed(lock.status());
  absl::Cleanup unlock = [fd = *lock] { ::close(fd); };
  if (absl::Status written = results.WriteInInputOrder(absl::GetFlag(FLAGS_output)); !written.ok()) {
    return Failed(written);
  }
  // The shards' jobs may have written their pages into one folder (each its own index): one index of all.
  if (!absl::GetFlag(FLAGS_html).empty()) {
    if (absl::Status index = WriteHtmlIndex(); !index.ok()) return Failed(index);
  }
  if (!absl::GetFlag(FLAGS_parquet).empty()) {
    absl::Status table = WriteResultsParquet(absl::GetFlag(FLAGS_output), absl::GetFlag(FLAGS_parquet));
    if (!table.ok()) return Failed(table);
  }
  std::fprintf(stderr, "attribution-batch: merged %zu rows into %s\n", (*rows)->size(),
               absl::GetFlag(FLAGS_output).c_str());
  if (const std::string unchecked = results.unchecked().Describe(); !unchecked.empty()) {
    std::cerr << "attribution-batch: warning: " << unchecked << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace attribution::client::batch

int main(int argc, char** argv) {
  attribution::client::PrepareStandardOutput();
  // abseil's --help lists the flags of files named after the program; ours are defined in this file.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "client/batch/batch_main.cc") || attribution::client::DefinesConnectionFlags(file);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return attribution::VersionString("attribution-batch"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "attributions for a whole data set, resumable: attribution-batch --input=ROWS --output=RESULTS [flags]; "
      "attribution-batch merge --input=ROWS --output=RESULTS SHARD_RESULTS...");
  const attribution::client::CommandLine line =
      attribution::client::ScanCommandLine(argc, argv, usage.contains_help_flags);
  if (!line.error.empty()) return attribution::client::batch::UsageError(line.error);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() >= 2 && std::string(positional[1]) == "merge") {
    return attribution::client::batch::Merge({positional.begin() + 2, positional.end()});
  }
  if (positional.size() > 1) {
    return attribution::client::batch::UsageError(
        absl::StrCat("unexpected argument \"", positional[1], "\" (see --help)"));
  }
  return attribution::client::batch::Run(line);
}
