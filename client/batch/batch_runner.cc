// SPDX-License-Identifier: Apache-2.0
#include "client/batch/batch_runner.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/batch/html_pages.h"
#include "client/batch/untrusted_text.h"
#include "client/result_json.h"
#include "engine/common/monotonic_clock.h"

namespace attribution::client::batch {
namespace {

using nlohmann::json;

constexpr const char* kServiceName = "attribution.v1.AttributionService";

// The servers' lack of capacity; a request over a gRPC message limit is RESOURCE_EXHAUSTED too, but fails
// the same way every time.
bool Retryable(const absl::Status& status) {
  if (OverMessageLimit(absl::StatusCodeToString(status.code()), status.message())) return false;
  return status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kResourceExhausted;
}

std::string ServerName(const RunnerOptions& options, size_t i) {
  return i < options.server_names.size() ? absl::StrCat("server ", i + 1, " (", options.server_names[i], ")")
                                         : absl::StrCat("server ", i + 1);
}

// An answer computed by weights other than those the job runs on (a server started since with another
// checkpoint under the model's name, a replica the job's ListModels did not reach): never the row's result.
// FAILED_PRECONDITION with kOtherWeights in its message, which a rerun tries again (RetriedOnResume).
absl::Status OtherWeights(const std::string& server, const std::string& model, const std::string& answered,
                          const std::string& expected) {
  return absl::FailedPreconditionError(absl::StrCat(
      kOtherWeights, ": ", server, " answered with model \"", model, "\" of model_digest ",
      answered.empty() ? "(none: a server before 2026-12-04)" : answered, ", but this job runs on model_digest ",
      expected.empty() ? "(none)" : expected,
      " (the model the servers reported at the job's start): the answer is not recorded; stop or update that "
      "server and run the same command again to try the row again"));
}

// `backoff` times a factor drawn from [0.5, 1.5): rows refused together (a full server's RESOURCE_EXHAUSTED)
// came back together, in waves within 30 ms, and were refused together again while new rows took the slots.
absl::Duration Jittered(absl::Duration backoff) {
  thread_local std::mt19937 random(std::random_device{}());
  return backoff * std::uniform_real_distribution<double>(0.5, 1.5)(random);
}

// Calls `call` on the row's server, moving on to the next server after each refusal, with exponential
// backoff; `attempts` counts the calls made. An answer whose model_digest is not `digest` (the job's model's)
// is refused as OtherWeights and tried on the next server as a refusal is.
template <typename T, typename Call>
absl::StatusOr<T> WithRetries(const std::vector<AttributionClient*>& clients, size_t first,
                              const RunnerOptions& options, const std::string& model, const std::string& digest,
                              int& attempts, Call call) {
  absl::Duration backoff = options.initial_backoff;
  for (int attempt = 0;; ++attempt) {
    ++attempts;
    const size_t server = (first + attempt) % clients.size();
    absl::StatusOr<T> result = call(*clients[server]);
    if (!result.ok() && RefusedBeforeSending(result.status())) {
      --attempts;  // no server saw it: an operator grepping its request id found nothing and suspected log loss
      return result;
    }
    bool retry = !result.ok() && Retryable(result.status());
    if (result.ok() && result->model_digest != digest) {
      result = OtherWeights(ServerName(options, server), model, result->model_digest, digest);
      retry = true;
    }
    if (result.ok() || !retry || attempt + 1 >= options.max_attempts) return result;
    absl::SleepFor(Jittered(backoff));
    backoff = std::min(backoff * 2, options.max_backoff);
  }
}

json Texts(const std::vector<Token>& tokens) {
  json texts = json::array();
  for (const Token& token : tokens) texts.push_back(token.text);
  return texts;
}

// What one row produced: its result line, and what the summary counts.
struct RowOutcome {
  std::string line;
  std::string error_code;  // empty: ok
  bool retry = false;      // a rerun tries the row again (RetriedOnResume)
  std::optional<double> delta;
  absl::Status fatal;  // the job cannot go on (its page could not be written, its row could not be read)
  std::string id;      // the row's, for the summary's worst rows
  // An answered row's settings hash and the settings its method ran with (SettingsUsedOf), which its
  // server reports or not.
  std::string settings_hash, settings_used;
  bool reports_settings = false;
};

// What the method ran with, the server's defaults filled in (a rerun sends these to get the same numbers), and the
// server's build, which says whether it reports them (UncheckedSettings).
void AddProvenance(const SettingsUsed& settings_used, const RunStats& stats, json& result) {
  const json used = SettingsUsedJson(settings_used);
  for (const auto& [name, value] : used.items()) result[name + "_used"] = value;
  if (!stats.server_build.empty()) result["server_build"] = stats.server_build;
}

// The identity of `model`; INTERNAL when FingerprintModels did not ask for it.
absl::StatusOr<ModelIdentity> FingerprintOf(const ModelFingerprints& fingerprints, const std::string& model) {
  auto it = fingerprints.find(model);
  if (it == fingerprints.end()) return absl::InternalError(absl::StrCat("model \"", model, "\" has no fingerprint"));
  return it->second;
}

class RowProcessor {
 public:
  RowProcessor(const json& settings, const ModelFingerprints& fingerprints,
               const std::vector<AttributionClient*>& clients, const RunnerOptions& options)
      : settings_(settings),
        job_settings_hash_(SettingsDigest(settings)),
        fingerprints_(fingerprints),
        clients_(clients),
        options_(options) {}

  RowOutcome Process(const BatchRow& row, size_t position) const {
    // job_settings_hash: merge tells shards of different jobs apart by it where every row has settings of its
    // own, and so its own settings_hash.
    json result = {{"id", row.id}, {"input_hash", InputDigest(row)}, {"job_settings_hash", job_settings_hash_}};
    absl::StatusOr<json> effective = RowSettings(settings_, row, "row \"" + row.id + "\" settings");
    if (!effective.ok()) {
      if (auto job = FingerprintOf(fingerprints_, settings_["model"].get<std::string>()); job.ok()) {
        result["model_fingerprint"] = job->fingerprint;
      }
      return Failure(result, effective.status(), 0);
    }
    result["model"] = (*effective)["model"];
    // The model the row runs on: the job's, or the one its settings name.
    const absl::StatusOr<ModelIdentity> identity =
        FingerprintOf(fingerprints_, (*effective)["model"].get<std::string>());
    if (!identity.ok()) return Failure(result, identity.status(), 0);
    result["model_fingerprint"] = identity->fingerprint;
    if (!identity->digest.empty()) result["model_digest"] = identity->digest;
    result["request_id"] = RequestId(identity->fingerprint, *effective, row);
    result["method"] = (*effective)[row.components() ? "component_method" : "method"];
    result["settings_hash"] = SettingsDigest(*effective);
    result["seed"] = (*effective)["seed"];
    if (row.components()) return ProcessComponents(row, *effective, identity->digest, position, result);
    int attempts = 0;
    std::string target = row.target.value_or("");
    if (!row.choices.empty()) {
      absl::Status chosen = ScoreChoices(row, *effective, identity->digest, position, attempts, result);
      if (!chosen.ok()) return Failure(result, chosen, attempts);
      if (result["label"].is_string()) {
        target = result["label"].get<std::string>();
      } else if (result["predicted"].is_string()) {
        target = result["predicted"].get<std::string>();
      } else {
        return Failure(result,
                       absl::FailedPreconditionError(
                           "no choice has a finite, positive probability, so there is no prediction to attribute "
                           "(give the row a label to attribute it)"),
                       attempts);
      }
    }
    AttributeOptions request = ToAttributeOptions(*effective, row, target);
    request.request_id = result["request_id"].get<std::string>();
    absl::StatusOr<Attribution> attribution =
        WithRetries<Attribution>(clients_, position, options_, request.model, identity->digest, attempts,
                                 [&](AttributionClient& client) { return client.Attribute(request); });
    if (!attribution.ok()) return Failure(result, attribution.status(), attempts);
    result["status"] = "ok";
    result["prompt_tokens"] = Texts(attribution->prompt_tokens);
    result["target_tokens"] = Texts(attribution->target_tokens);
    json features = json::array();
    for (const Feature& feature : attribution->features) features.push_back(feature.text);
    result["features"] = features;
    result["attribution"] = attribution->sequence;
    if (!attribution->token_matrix.empty()) result["token_matrix"] = attribution->token_matrix;
    result["objective"] = attribution->objective;
    if (const std::optional<Faithfulness>& f = attribution->faithfulness) {
      result["comprehensiveness_aopc"] = f->comprehensiveness_aopc;
      result["sufficiency_aopc"] = f->sufficiency_aopc;
    }
    result["convergence_delta"] = attribution->convergence_delta ? json(*attribution->convergence_delta) : json();
    if (attribution->integration_steps > 0) result["integration_steps"] = attribution->integration_steps;
    if (attribution->tolerance_met) result["tolerance_met"] = *attribution->tolerance_met;
    if (!attribution->unread_settings.empty()) result["unread_settings"] = attribution->unread_settings;
    AddProvenance(attribution->settings_used, attribution->stats, result);
    result["server_seconds"] = attribution->stats.wall_seconds;
    result["attempts"] = attempts;
    absl::Status page = options_.html_dir.empty() ? absl::OkStatus()
                                                  : WriteRowPage(options_.html_dir, row.id,
                                                                 result["request_id"].get<std::string>(), *attribution);
    return {.line = JsonText(result),
            .delta = attribution->convergence_delta,
            .fatal = page,
            .settings_hash = result["settings_hash"].get<std::string>(),
            .settings_used = SettingsUsedOf(result),
            .reports_settings = ReportsSettings(result)};
  }

 private:
  // A component row: one AttributeComponents call of its pair. Each grid of the answer becomes an entry of
  // the grid_* lists (site, axes as "layer,head", shape, values row-major, layer integrated gradients'
  // convergence deltas), flat so that every field is a Parquet column; convergence_delta is the delta of
  // largest magnitude, for the summary and the index.
  RowOutcome ProcessComponents(const BatchRow& row, const json& settings, const std::string& digest, size_t position,
                               json& result) const {
    const std::string metric = settings["metric"].get<std::string>();
    if (IsDifferenceMetric(metric) && !row.wrong_answer) {
      return Failure(result,
                     absl::InvalidArgumentError(absl::StrCat("wrong_answer: the metric ", metric,
                                                             " compares the answer with a wrong answer, and the row "
                                                             "gives none (log_prob and prob read the answer alone)")),
                     0);
    }
    ComponentOptions request = ToComponentOptions(settings, row);
    request.request_id = result["request_id"].get<std::string>();
    int attempts = 0;
    absl::StatusOr<ComponentAttribution> answer = WithRetries<ComponentAttribution>(
        clients_, position, options_, request.model, digest, attempts,
        [&](AttributionClient& client) { return client.AttributeComponents(request); });
    if (answer.ok() && answer->pairs.size() != 1) {
      answer = absl::DataLossError(absl::StrCat("the server answered ", answer->pairs.size(), " pairs for one"));
    }
    if (!answer.ok()) return Failure(result, answer.status(), attempts);
    const PairComponents& pair = answer->pairs[0];
    result["status"] = "ok";
    result["clean_tokens"] = Texts(pair.clean_tokens);
    result["corrupted_tokens"] = Texts(pair.corrupted_tokens);
    result["answer"] = answer->answer.text;
    result["wrong_answer"] = request.wrong_answer.empty() ? json() : json(answer->wrong_answer.text);
    result["clean_metric"] = pair.clean_metric;
    result["corrupted_metric"] = pair.corrupted_metric;
    if (!answer->unread_settings.empty()) result["unread_settings"] = answer->unread_settings;
    AddProvenance(answer->settings_used, answer->stats, result);
    json sites = json::array(), axes = json::array(), shapes = json::array(), values = json::array(),
         deltas = json::array();
    std::optional<double> delta;
    for (const ComponentGrid& grid : pair.grids) {
      sites.push_back(grid.site);
      axes.push_back(absl::StrJoin(grid.axes, ","));
      shapes.push_back(grid.shape);
      values.push_back(grid.values);
      deltas.push_back(grid.convergence_deltas);
      for (double d : grid.convergence_deltas) {
        if (std::isfinite(d) && (!delta || std::abs(d) > std::abs(*delta))) delta = d;
      }
    }
    result["grid_sites"] = sites;
    result["grid_axes"] = axes;
    result["grid_shapes"] = shapes;
    result["grid_values"] = values;
    result["grid_convergence_deltas"] = deltas;
    result["convergence_delta"] = delta ? json(*delta) : json();
    result["server_seconds"] = answer->stats.wall_seconds;
    result["attempts"] = attempts;
    const absl::Status page =
        options_.html_dir.empty()
            ? absl::OkStatus()
            : WriteComponentRowPage(options_.html_dir, row.id, result["request_id"].get<std::string>(), *answer);
    return {.line = JsonText(result),
            .delta = delta,
            .fatal = page,
            .settings_hash = result["settings_hash"].get<std::string>(),
            .settings_used = SettingsUsedOf(result),
            .reports_settings = ReportsSettings(result)};
  }

  // Multiple choice: each choice's probability after the prompt (over the whole vocabulary, and
  // renormalised over the choices), the predicted choice, and whether it is the label.
  absl::Status ScoreChoices(const BatchRow& row, const json& settings, const std::string& digest, size_t position,
                            int& attempts, json& result) const {
    // Reading the input refuses such rows; a row built otherwise is refused before any call.
    if (row.label && std::find(row.choices.begin(), row.choices.end(), *row.label) == row.choices.end()) {
      return absl::InvalidArgumentError(absl::StrCat("label \"", *row.label, "\" is not one of the choices"));
    }
    // A choice given twice would split its probability mass in the renormalised probabilities (0.5 / 0.5).
    if (const std::optional<std::pair<size_t, size_t>> repeat = FirstRepeat(row.choices)) {
      return absl::InvalidArgumentError(absl::StrCat("choices: choice ", repeat->first + 1, " (\"",
                                                     row.choices[repeat->first], "\") repeats choice ",
                                                     repeat->second + 1, ": give each choice once"));
    }
    std::vector<double> probs;
    for (const std::string& choice : row.choices) {
      const LogprobsOptions request{.model = settings["model"].get<std::string>(),
                                    .prompt = row.prompt,
                                    .target = choice,
                                    .target_tokenization = settings["target_tokenization"].get<std::string>(),
                                    .request_id = result["request_id"].get<std::string>()};
      absl::StatusOr<Logprobs> scored =
          WithRetries<Logprobs>(clients_, position, options_, request.model, digest, attempts,
                                [&](AttributionClient& client) { return client.GetLogprobs(request); });
      if (!scored.ok()) return scored.status();
      probs.push_back(std::exp(scored->total_log_prob));
    }
    // The prediction is the most probable choice of those with a finite, positive probability: a model that
    // gives every choice 0 or NaN predicts none (max_element picked the first choice, "correct" if the label).
    std::optional<size_t> best;
    double total = 0;
    for (size_t c = 0; c < probs.size(); ++c) {
      if (!std::isfinite(probs[c]) || probs[c] <= 0) continue;
      total += probs[c];
      if (!best || probs[c] > probs[*best]) best = c;
    }
    std::vector<double> renormalised;  // NaN (null) where there is nothing to renormalise
    for (double p : probs) renormalised.push_back(best && std::isfinite(p) ? p / total : std::nan(""));
    result["choices"] = row.choices;
    result["choice_probs"] = probs;
    result["choice_probs_renormalised"] = renormalised;
    result["predicted"] = best ? json(row.choices[*best]) : json();
    result["predicted_prob"] = best ? json(probs[*best]) : json();
    result["label"] = row.label ? json(*row.label) : json();
    if (row.label) result["correct"] = best ? json(row.choices[*best] == *row.label) : json();
    return absl::OkStatus();
  }

  static RowOutcome Failure(json& result, const absl::Status& status, int attempts) {
    const std::string code = absl::StatusCodeToString(status.code());
    std::string message(status.message());
    if (OverMessageLimit(code, message)) {
      absl::StrAppend(&message,
                      " (a gRPC message size limit, which no retry lifts: shorten the row's prompt, or raise the "
                      "servers' max_message_bytes; this tool sends requests of up to 64 MiB)");
    }
    result["status"] = "error";
    result["error"] = {{"code", code}, {"message", message}};
    result["attempts"] = attempts;
    return {.line = JsonText(result), .error_code = code, .retry = RetriedOnResume(code, message)};
  }

  const json& settings_;
  const std::string job_settings_hash_;  // of settings_, the job's settings before any row's own
  const ModelFingerprints& fingerprints_;
  const std::vector<AttributionClient*>& clients_;
  const RunnerOptions& options_;
};

std::string Clock(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
}

// Refuses the done row `result` when another job wrote it (other job settings) or this job would send `row`
// otherwise: with other settings, to another model or for another input (its request_id). Rows whose settings
// do not merge or whose model the servers do not hold are checked for the job's settings only: their results
// are those errors, again.
absl::Status CheckRequestIsAsDone(const DoneRow& result, const BatchRow& row, const json& settings,
                                  const std::string& job_settings_hash, const ModelFingerprints& fingerprints,
                                  const std::string& where) {
  // Where every setting the jobs differ in is a row's own, the rows' settings agree and only this tells the
  // jobs apart; merge would refuse the mixed file later (lines from before the field have none).
  const auto of_another_job = [&] {
    if (result.job_settings_hash.empty() || result.job_settings_hash == job_settings_hash) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(where, " done by a job with other settings (job_settings_hash ",
                                                      result.job_settings_hash, ", this job's ", job_settings_hash,
                                                      "): write to another file to run these settings"));
  };
  absl::StatusOr<json> effective = RowSettings(settings, row, "row \"" + row.id + "\" settings");
  if (!effective.ok()) return of_another_job();
  const absl::StatusOr<ModelIdentity> identity = FingerprintOf(fingerprints, (*effective)["model"].get<std::string>());
  if (!identity.ok()) return of_another_job();
  const std::string* model_fingerprint = &identity->fingerprint;
  if (SettingsDigest(*effective) != result.settings_hash) {
    return absl::FailedPreconditionError(absl::StrCat(where, " done with other settings (settings_hash ",
                                                      result.settings_hash, ", this job's ", SettingsDigest(*effective),
                                                      "): write to another file to run these settings"));
  }
  if (absl::Status other_job = of_another_job(); !other_job.ok()) return other_job;
  if (!result.model_fingerprint.empty() && result.model_fingerprint != *model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(where, " done on another model (model_fingerprint ",
                                                      result.model_fingerprint, ", the servers' ", *model_fingerprint,
                                                      "): write to another file to run this model"));
  }
  if (const std::string request_id = RequestId(*model_fingerprint, *effective, row);
      !result.request_id.empty() && result.request_id != request_id) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, " done for another input (request_id ", result.request_id, ", this job's ", request_id,
                     "): the file holds another job's results; write to another file"));
  }
  return absl::OkStatus();
}

// A row the results file already holds: its position in the job's rows, and its result.
struct DoneInInput {
  size_t row;
  const DoneRow* result;
};

// The rows `log` holds results of, in input order, once the file is found to be this job's: refuses a
// results file written by another job (a row this job does not have, one it would send otherwise:
// CheckRequestIsAsDone), or a result whose row changed since (CheckResultIsOfRow, as merge checks). Lines
// written before results carried request ids are checked by their settings hash only. Only rows whose id
// digest is among the results' are read.
absl::StatusOr<std::vector<DoneInInput>> DoneRowsOfThisJob(const JobRows& rows, const json& settings,
                                                           const ModelFingerprints& fingerprints,
                                                           const ResultLog& log) {
  std::vector<uint64_t> done_ids;
  done_ids.reserve(log.done().size());
  for (const auto& entry : log.done()) done_ids.push_back(IdDigest(entry.first));
  std::sort(done_ids.begin(), done_ids.end());
  std::vector<DoneInInput> done;
  const std::string job_settings_hash = SettingsDigest(settings);
  absl::Status first_mismatch;  // reported after a row not in the input, which was checked first
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!std::binary_search(done_ids.begin(), done_ids.end(), rows.IdDigestOf(i))) continue;
    absl::StatusOr<BatchRow> row = rows.Row(i);
    if (!row.ok()) return row.status();
    auto result = log.done().find(row->id);
    if (result == log.done().end()) continue;  // another id of the same digest
    done.push_back({i, &result->second});
    if (!first_mismatch.ok()) continue;
    const std::string line = absl::StrCat(log.path(), ":", result->second.line);
    first_mismatch = CheckRequestIsAsDone(result->second, *row, settings, job_settings_hash, fingerprints,
                                          line + ": row \"" + row->id + "\"");
    if (first_mismatch.ok()) first_mismatch = CheckResultIsOfRow(result->second, *row, line);
  }
  if (done.size() < log.done().size()) {
    std::set<const DoneRow*> of_rows;
    for (const DoneInInput& row : done) of_rows.insert(row.result);
    const std::pair<const std::string, DoneRow>* first_foreign = nullptr;
    for (const auto& entry : log.done()) {
      if (!of_rows.contains(&entry.second) &&
          (first_foreign == nullptr || entry.second.line < first_foreign->second.line)) {
        first_foreign = &entry;
      }
    }
    return absl::FailedPreconditionError(absl::StrCat(
        log.path(), ":", first_foreign->second.line, ": row \"", first_foreign->first,
        "\" is not in this job's input: the file holds another job's results (or another shard's: give each "
        "shard its own --output); write to another file"));
  }
  if (!first_mismatch.ok()) return first_mismatch;
  return done;
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<AttributionClient>>> ConnectToServers(
    const std::vector<std::string>& targets, ClientOptions options) {
  options.max_receive_message_bytes = -1;
  // The job retries a row itself, on the next server (WithRetries); gRPC's retries of UNAVAILABLE on the same
  // server made each of its tries four calls there (--max_attempts=2 sent 8) and held rows on a draining server.
  options.max_attempts = 1;
  std::vector<std::unique_ptr<AttributionClient>> clients;
  for (const std::string& target : targets) {
    options.target = target;
    absl::StatusOr<std::unique_ptr<AttributionClient>> client = AttributionClient::Connect(options);
    if (!client.ok()) return client.status();
    clients.push_back(std::move(*client));
  }
  return clients;
}

absl::StatusOr<std::string> ModelFingerprint(const std::vector<AttributionClient*>& clients, std::string& model,
                                             std::string* model_digest, ModelInfo* info, std::string* unanswered_out,
                                             std::string* differing_limits_out) {
  if (clients.empty()) return absl::InvalidArgumentError("no servers to ask for the model");
  // The lower of two limits, 0 being none.
  const auto Tighter = [](int64_t a, int64_t b) { return a <= 0 ? b : b <= 0 ? a : std::min(a, b); };
  ModelInfo tightest;
  int64_t first_steps = 0, first_samples = 0;
  std::string first_limits, differing_limits;
  std::string fingerprint;
  json first_identity;
  std::string unanswered;  // the servers that did not answer, and why
  for (size_t i = 0; i < clients.size(); ++i) {
    absl::StatusOr<std::vector<ModelInfo>> models = clients[i]->ListModels();
    // A server down or overloaded now gets its turn at rows all the same (they move on to the next server
    // while it refuses them), as when it dies mid-job: the servers that answer name the model.
    const std::string server = absl::StrCat("server ", i + 1, " (", clients[i]->target(), ")");
    if (!models.ok() && RetriedOnResume(absl::StatusCodeToString(models.status().code()), models.status().message())) {
      absl::StrAppend(&unanswered, unanswered.empty() ? "" : "; ", server, ": ",
                      absl::StatusCodeToString(models.status().code()), ": ", models.status().message());
      continue;
    }
    if (models.status().code() == absl::StatusCode::kUnimplemented) {
      return absl::UnimplementedError(absl::StrCat(server, " is no attribution server (it lacks ", kServiceName, ")"));
    }
    if (!models.ok())
      return absl::Status(models.status().code(), absl::StrCat(server, ": ", models.status().message()));
    if (models->empty()) return absl::FailedPreconditionError("a server holds no models");
    if (model.empty()) model = models->front().name;
    auto it = std::find_if(models->begin(), models->end(), [&](const ModelInfo& m) { return m.name == model; });
    if (it == models->end())
      return absl::NotFoundError(absl::StrCat(kModelNotServed, ": server ", i + 1, " has no model \"", model, "\""));
    json identity = {{"name", it->name},
                     {"architecture", it->architecture},
                     {"dtype", it->dtype},
                     {"quantization", it->quantization},
                     {"block_size", it->quantization_block_size},
                     {"double_quantization", it->double_quantization},
                     {"vocab_size", it->vocab_size},
                     {"num_layers", it->num_layers},
                     {"hidden_size", it->hidden_size},
                     {"resident_weight_bytes", it->resident_weight_bytes}};
    // The checkpoint itself, as loaded (servers before 2026-12-04 report none: their fingerprints stay as they
    // were).
    if (!it->model_digest.empty()) identity["model_digest"] = it->model_digest;
    const std::string digest = Digest(identity);
    if (!fingerprint.empty() && digest != fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat("the servers hold different models named \"", model,
                                                        "\": ", JsonText(first_identity), " and ", JsonText(identity)));
    }
    // A job's settings must fit every server's limits, and the limits that lower unset settings' defaults must be
    // alike for its rows to run alike: the tightest are the job's, and differences are named.
    if (!fingerprint.empty() && (it->max_steps != first_steps || it->max_samples != first_samples)) {
      absl::StrAppend(&differing_limits, differing_limits.empty() ? first_limits : "", "; ", server, ": max_steps ",
                      it->max_steps, ", max_samples ", it->max_samples);
    }
    if (fingerprint.empty()) {
      tightest = *it;
      first_steps = it->max_steps;
      first_samples = it->max_samples;
      first_limits = absl::StrCat(server, ": max_steps ", it->max_steps, ", max_samples ", it->max_samples);
    } else {
      tightest.max_steps = Tighter(tightest.max_steps, it->max_steps);
      tightest.max_samples = Tighter(tightest.max_samples, it->max_samples);
    }
    fingerprint = digest;
    first_identity = identity;
    if (model_digest != nullptr) *model_digest = it->model_digest;
  }
  if (info != nullptr) *info = tightest;
  if (differing_limits_out != nullptr) *differing_limits_out = differing_limits;
  if (fingerprint.empty()) {
    return absl::UnavailableError(absl::StrCat("no server answered which models it holds (", unanswered, ")"));
  }
  if (unanswered_out != nullptr) *unanswered_out = unanswered;
  return fingerprint;
}

absl::StatusOr<ModelFingerprints> FingerprintModels(const JobRows& rows, json& settings,
                                                    const std::vector<AttributionClient*>& clients,
                                                    std::string* unanswered) {
  std::string model = settings["model"].get<std::string>();
  std::string job_digest;
  ModelInfo info;
  std::string differing_limits;
  absl::StatusOr<std::string> job = ModelFingerprint(clients, model, &job_digest, &info, unanswered, &differing_limits);
  if (!job.ok()) return job.status();
  settings["model"] = model;
  ModelFingerprints fingerprints = {{model, ModelIdentity{.fingerprint = *job,
                                                          .digest = job_digest,
                                                          .max_steps = info.max_steps,
                                                          .max_samples = info.max_samples,
                                                          .vocab_size = info.vocab_size,
                                                          .differing_limits = differing_limits}}};
  for (const std::string& name : rows.models()) {
    if (fingerprints.contains(name)) continue;
    std::string resolved = name;
    std::string digest;
    absl::StatusOr<std::string> fingerprint = ModelFingerprint(clients, resolved, &digest);
    if (!fingerprint.ok() && fingerprint.status().code() != absl::StatusCode::kNotFound) return fingerprint.status();
    if (fingerprint.ok()) {
      fingerprints.emplace(name, ModelIdentity{.fingerprint = *fingerprint, .digest = digest});
    } else {
      fingerprints.emplace(name, fingerprint.status());
    }
  }
  return fingerprints;
}

absl::StatusOr<JobSummary> RunJob(const JobRows& rows, const json& settings, const ModelFingerprints& fingerprints,
                                  const std::vector<AttributionClient*>& clients, ResultLog& log,
                                  const RunnerOptions& options, std::ostream& progress) {
  if (clients.empty()) return absl::InvalidArgumentError("no servers to send the rows to");
  if (options.window < 1 || options.window > kMaxWindow) {
    return absl::InvalidArgumentError(absl::StrCat("window ", options.window, " must lie in [1, ", kMaxWindow, "]"));
  }
  JobSummary summary;
  summary.rows = static_cast<int64_t>(rows.size());
  absl::StatusOr<std::vector<DoneInInput>> done = DoneRowsOfThisJob(rows, settings, fingerprints, log);
  if (!done.ok()) return done.status();
  summary.skipped = static_cast<int64_t>(done->size());
  std::vector<size_t> todo;  // positions in `rows`
  for (size_t i = 0, d = 0; i < rows.size(); ++i) {
    if (d < done->size() && (*done)[d].row == i) {
      ++d;
    } else {
      todo.push_back(i);
    }
  }
  // Rows to run that an uninterrupted run would have written before rows the file already holds (they
  // failed for lack of capacity and were dropped on reopening): a prefix of `todo`, since both are in
  // input order. Their lines are held back and go in with one Rewrite of the whole file in input order.
  const size_t last_done = done->empty() ? 0 : done->back().row + 1;  // 1 + the input position of the last row done
  bool done_in_order = true;
  int64_t previous_line = 0;
  for (const DoneInInput& row : *done) {
    done_in_order = done_in_order && row.result->line > previous_line;
    previous_line = row.result->line;
  }
  size_t held_back = 0;
  while (held_back < todo.size() && todo[held_back] < last_done) ++held_back;
  bool reorder = held_back > 0 || !done_in_order;
  std::vector<std::string> held_lines;
  // Once every held-back row has its line: the file rewritten as an uninterrupted run would have it.
  auto rewrite_in_input_order = [&]() -> absl::Status {
    // Kept lines are copied from the file by offset: the rewrite holds the held-back lines, not the file.
    std::vector<ResultLog::RewrittenLine> lines;
    size_t held = 0;
    for (size_t i = 0, d = 0; i < last_done; ++i) {
      if (d < done->size() && (*done)[d].row == i) {
        lines.push_back({.done = (*done)[d++].result});
      } else if (held < held_lines.size()) {
        lines.push_back({.text = std::move(held_lines[held++])});
      }
    }
    held_lines.clear();
    reorder = false;
    return log.Rewrite(lines);
  };

  // Rows of one settings hash must have run with one set of settings: servers whose limits lower the defaults of
  // unset settings differently (max_samples 10 under KernelSHAP's 25, max_steps under a tolerance) answered them
  // 0.03 to 0.8 apart, mixed under one fingerprint. The first row of each hash (a done row's, on a resume) sets it.
  std::map<std::string, std::pair<std::string, std::string>> ran_with;  // settings hash -> (row id, settings used)
  UncheckedSettings unchecked;
  for (const DoneInInput& row : *done) {
    if (!row.result->settings_used.empty()) {
      ran_with.try_emplace(row.result->settings_hash, row.result->id, row.result->settings_used);
    }
    unchecked.Add(*row.result);
  }
  auto check_ran_alike = [&](const RowOutcome& outcome) -> absl::Status {
    if (outcome.settings_hash.empty()) return absl::OkStatus();
    unchecked.Add(outcome.id, outcome.settings_hash, outcome.settings_used, outcome.reports_settings);
    if (outcome.settings_used.empty()) return absl::OkStatus();
    const auto [first, fresh] = ran_with.try_emplace(outcome.settings_hash, outcome.id, outcome.settings_used);
    if (fresh || first->second.second == outcome.settings_used) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "row \"", outcome.id, "\" ran with ", outcome.settings_used, " where row \"", first->second.first,
        "\" of the same settings ran with ", first->second.second,
        ": the servers fill unset settings differently (a limit below a default lowers it: ListModels' "
        "limits.max_steps, max_samples); set them in the job, or run it against servers configured alike"));
  };

  const RowProcessor processor(settings, fingerprints, clients, options);
  // Rows finished ahead of the first unwritten one wait in `finished`, unwritten (lost to a kill, held in
  // memory): a worker takes row i only while i < written + kAhead * window, so a row stuck in retries
  // holds back at most that many lines.
  constexpr size_t kAhead = 4;
  const size_t ahead = kAhead * static_cast<size_t>(std::max(1, options.window));
  std::mutex mutex;
  std::condition_variable finished_one;   // the writer waits on it for the next row in order
  std::condition_variable may_take;       // workers wait on it for `written_shared` to advance
  std::map<size_t, RowOutcome> finished;  // position in todo -> outcome, until written; guarded by mutex
  size_t next = 0;                        // the next row to take; guarded by mutex
  size_t written_shared = 0;              // rows written, as workers see it; guarded by mutex
  bool stop = false;                      // the writer failed: take no more rows; guarded by mutex
  // The next row to run, once within `ahead` of the rows written; nullopt once there are none or the job stops.
  auto take = [&]() -> std::optional<size_t> {
    std::unique_lock<std::mutex> lock(mutex);
    may_take.wait(lock, [&] { return stop || next >= todo.size() || next < written_shared + ahead; });
    if (stop || next >= todo.size()) return std::nullopt;
    return next++;
  };
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min<int>(options.window, static_cast<int>(todo.size())); ++w) {
    // A thread the system will not start (a process or memory limit) leaves the job with fewer rows in
    // flight, not an uncaught std::system_error.
    try {
      workers.emplace_back([&] {
        while (std::optional<size_t> i = take()) {
          // Read now, not held from the start: the rows in flight are what the job holds of its input.
          absl::StatusOr<BatchRow> row = rows.Row(todo[*i]);
          RowOutcome outcome = row.ok() ? processor.Process(*row, *i) : RowOutcome{.fatal = row.status()};
          if (row.ok()) outcome.id = std::move(row->id);
          std::lock_guard<std::mutex> lock(mutex);
          finished.emplace(*i, std::move(outcome));
          finished_one.notify_one();
        }
      });
    } catch (const std::system_error& error) {
      if (workers.empty()) return absl::ResourceExhaustedError(absl::StrCat("cannot start a thread: ", error.what()));
      progress << absl::StrFormat("rows in flight: %d (--window %d; no more threads: %s)\n", workers.size(),
                                  options.window, error.what());
      break;
    }
  }

  const absl::Time start = MonotonicNow();
  absl::Time last_report = start;
  absl::Status write_status;
  size_t written = 0;
  if (reorder && held_back == 0) write_status = rewrite_in_input_order();
  while (written < todo.size() && write_status.ok()) {
    std::vector<RowOutcome> ready;
    {
      std::unique_lock<std::mutex> lock(mutex);
      finished_one.wait_for(lock, std::chrono::milliseconds(200), [&] { return finished.count(written) > 0; });
      for (auto it = finished.find(written); it != finished.end() && it->first == written + ready.size();
           it = finished.erase(it)) {
        ready.push_back(std::move(it->second));
      }
    }
    std::vector<std::string> lines;
    for (RowOutcome& outcome : ready) {
      if (!outcome.fatal.ok() && write_status.ok()) write_status = outcome.fatal;
      if (write_status.ok()) write_status = check_ran_alike(outcome);
      lines.push_back(std::move(outcome.line));
      if (!outcome.error_code.empty()) {
        ++summary.errors;
        ++summary.errors_by_code[outcome.error_code];
      }
      summary.to_retry += outcome.retry;
      if (outcome.delta) {
        summary.abs_deltas.push_back(std::abs(*outcome.delta));
        // The worst rows only, not a pair per row: the summary names options.worst_rows of them.
        summary.worst_deltas.emplace_back(std::abs(*outcome.delta), std::move(outcome.id));
        std::push_heap(summary.worst_deltas.begin(), summary.worst_deltas.end(), std::greater<>());
        if (summary.worst_deltas.size() > static_cast<size_t>(options.worst_rows)) {
          std::pop_heap(summary.worst_deltas.begin(), summary.worst_deltas.end(), std::greater<>());
          summary.worst_deltas.pop_back();
        }
      }
    }
    if (reorder) {
      const size_t take = std::min(lines.size(), held_back - written);
      std::move(lines.begin(), lines.begin() + static_cast<std::ptrdiff_t>(take), std::back_inserter(held_lines));
      lines.erase(lines.begin(), lines.begin() + static_cast<std::ptrdiff_t>(take));
      if (written + take == held_back && write_status.ok()) write_status = rewrite_in_input_order();
    }
    if (write_status.ok()) write_status = log.Append(lines);
    written += ready.size();
    summary.done = static_cast<int64_t>(written);
    if (!ready.empty()) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        written_shared = written;
      }
      may_take.notify_all();
    }

    const absl::Time now = MonotonicNow();
    const double elapsed = absl::ToDoubleSeconds(now - start), rate = elapsed > 0 ? written / elapsed : 0;
    const double eta = rate > 0 ? (todo.size() - written) / rate : 0;
    if (options.progress_bar) {
      const int width = 30, filled = todo.empty() ? width : static_cast<int>(width * written / todo.size());
      progress << absl::StrFormat("\r[%s%s] %d/%d rows  %.1f rows/s  ETA %s  errors %d ", std::string(filled, '#'),
                                  std::string(width - filled, '.'), written, todo.size(), rate, Clock(eta),
                                  summary.errors)
               << std::flush;
    } else if (now - last_report >= options.progress_every || written == todo.size()) {
      progress << absl::StrFormat("progress %d/%d rows, %.1f rows/s, eta %s, errors %d\n", written, todo.size(), rate,
                                  Clock(eta), summary.errors)
               << std::flush;
      last_report = now;
    }
  }
  if (!write_status.ok()) {  // workers stop taking rows (those waiting for room too)
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    may_take.notify_all();
    // The rows in flight would be written nowhere: their calls end now, where the job waited for their answers
    // (up to --max_attempts x --timeout) before it said why it stopped.
    for (AttributionClient* client : clients) client->CancelCalls();
  }
  for (std::thread& worker : workers) worker.join();
  if (options.progress_bar) progress << "\n";
  if (!write_status.ok()) return write_status;
  summary.wall_seconds = absl::ToDoubleSeconds(MonotonicNow() - start);
  summary.unchecked_settings = unchecked.Describe();
  std::sort(summary.worst_deltas.rbegin(), summary.worst_deltas.rend());
  if (summary.worst_deltas.size() > static_cast<size_t>(options.worst_rows))
    summary.worst_deltas.resize(options.worst_rows);
  return summary;
}

void PrintSummary(const JobSummary& summary, std::ostream& out) {
  const int64_t ran = summary.done;
  out << absl::StrFormat("rows %d: %d done now (%d errors), %d done before; %.1f s, %.2f rows/s\n", summary.rows, ran,
                         summary.errors, summary.skipped, summary.wall_seconds,
                         summary.wall_seconds > 0 ? ran / summary.wall_seconds : 0.0);
  for (const auto& [code, count] : summary.errors_by_code) out << absl::StrFormat("  errors %s: %d\n", code, count);
  if (!summary.abs_deltas.empty()) {
    std::vector<double> deltas = summary.abs_deltas;
    std::sort(deltas.begin(), deltas.end());
    auto at = [&](double q) { return deltas[std::min(deltas.size() - 1, static_cast<size_t>(q * deltas.size()))]; };
    out << absl::StrFormat("  |convergence delta|: p50 %.3g  p90 %.3g  p99 %.3g  max %.3g\n", at(0.5), at(0.9),
                           at(0.99), deltas.back());
    for (const auto& [delta, id] : summary.worst_deltas) {
      out << absl::StrFormat("    %.3g  %s\n", delta, TerminalSafe(id));
    }
  }
  if (!summary.unchecked_settings.empty()) out << "  warning: " << summary.unchecked_settings << "\n";
}

}  // namespace attribution::client::batch
