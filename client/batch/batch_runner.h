// SPDX-License-Identifier: Apache-2.0
// Runs a batch job: keeps `window` rows in flight over the servers (a row's calls go to one server,
// rows take turns), retries calls the servers refuse for lack of capacity with exponential backoff,
// records every other failure as that row's error, writes results in input order through a
// ResultLog, and reports progress and a final summary.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/attribution_client.h"
#include "client/batch/batch_job.h"
#include "client/batch/input_rows.h"
#include "client/batch/result_log.h"

namespace attribution::client::batch {

// The most rows in flight: each has a thread of its own (40,000 threads failed to start and aborted a job).
inline constexpr int kMaxWindow = 1024;

struct RunnerOptions {
  int window = 32;  // rows in flight, [1, kMaxWindow]; none runs 4 x window or more ahead of the first unwritten row
  // Per call, while the servers answer UNAVAILABLE or RESOURCE_EXHAUSTED (not a gRPC message size limit:
  // OverMessageLimit).
  int max_attempts = 8;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration progress_every = absl::Seconds(10);  // log lines (no terminal)
  bool progress_bar = false;                          // a live bar on a terminal instead
  int worst_rows = 5;                                 // largest |convergence delta| in the summary
  std::string html_dir;                               // non-empty: a page per answered row (html_pages.h)
  std::vector<std::string> server_names;              // for messages: clients[i]'s target (else "server i+1")
};

struct JobSummary {
  int64_t rows = 0, skipped = 0, done = 0, errors = 0;
  int64_t to_retry = 0;  // rows that ended for lack of capacity or time, which a rerun tries again
  std::map<std::string, int64_t> errors_by_code;
  double wall_seconds = 0;
  std::vector<double> abs_deltas;                            // |convergence delta| of the rows that have one
  std::vector<std::pair<double, std::string>> worst_deltas;  // (|delta|, id), largest first
  std::string unchecked_settings;                            // UncheckedSettings::Describe of the job's rows
};

// A client per target, with `options` except that any response size is accepted (the servers bound their
// responses themselves, max_message_bytes, and a response over the client's limit would fail as
// RESOURCE_EXHAUSTED, which the job retries as the servers' load although it never goes away) and that gRPC
// does not retry: the job's own tries (RunnerOptions::max_attempts) move on to the next server.
absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> ConnectToServers(
    const std::vector<std::string>& targets, ClientOptions options);

// The model's identity as the servers report it (all that answer must agree), for request ids and results:
// its metadata and its model_digest (the SHA-256 of its files as loaded), which `model_digest` receives when
// given. An empty `model` becomes the name of the first answering server's first model. Servers that do not answer for
// lack of capacity or time (RetriedOnResume: down, overloaded) are passed over (every answer's model_digest is
// checked against the job's all the same); UNAVAILABLE when none answers. `unanswered`, when given, receives
// the servers passed over and why ("" when all answered). `info` receives the first answer's model with the
// tightest max_steps and max_samples of all answers, and `differing_limits` each server's where they differ.
absl::StatusOr<std::string> ModelFingerprint(const std::vector<AttributionClient*>& clients, std::string& model,
                                             std::string* model_digest = nullptr, ModelInfo* info = nullptr,
                                             std::string* unanswered = nullptr,
                                             std::string* differing_limits = nullptr);

// What a job knows of a model: the fingerprint results record, and the model_digest every answer computed on
// it must carry ("" when the servers report none: servers before 2026-12-04).
struct ModelIdentity {
  std::string fingerprint;
  std::string digest;
  // The servers' limits for it (ListModels; the tightest of them), which a job's settings are checked against
  // before any row runs.
  int64_t max_steps = 0, max_samples = 0, vocab_size = 0;
  // Each server's max_steps and max_samples where they are not alike ("" where they are): a limit below a
  // default lowers it, so unset settings may run differently on different servers.
  std::string differing_limits;
};

// Each model a job's rows run on -> its identity, or why it has none (NOT_FOUND: the servers do not hold
// it, which fails only the rows that name it).
using ModelFingerprints = std::map<std::string, absl::StatusOr<ModelIdentity>>;

// The fingerprints of the job's model (settings["model"], set to the servers' first model when empty; the
// job fails when the servers do not hold it) and of each model rows name in their own settings
// (rows.models()), asking the servers once per model. A failure other than NOT_FOUND fails the job.
// `unanswered` receives the servers that did not answer for the job's model, as ModelFingerprint's.
absl::StatusOr<ModelFingerprints> FingerprintModels(const JobRows& rows, nlohmann::json& settings,
                                                    const std::vector<AttributionClient*>& clients,
                                                    std::string* unanswered = nullptr);

// Runs the rows `log` does not hold yet and writes their results in input order, each recording the
// fingerprint of the model it ran on (`fingerprints`, from FingerprintModels). FAILED_PRECONDITION, naming
// the file's line, when `log` holds rows of another job: a row not in `rows`, or one done with other
// settings, on another model or for another input (its request_id). A row is read from `rows` when it is
// checked against its result or about to run, so the job holds the rows in flight, not the input; one that
// cannot be read (its file changed since it was checked) stops the job before its line is written.
absl::StatusOr<JobSummary> RunJob(const JobRows& rows, const nlohmann::json& settings,
                                  const ModelFingerprints& fingerprints, const std::vector<AttributionClient*>& clients,
                                  ResultLog& log, const RunnerOptions& options, std::ostream& progress);

void PrintSummary(const JobSummary& summary, std::ostream& out);

}  // namespace attribution::client::batch
