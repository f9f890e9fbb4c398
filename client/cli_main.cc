// SPDX-License-Identifier: Apache-2.0
// attribution-cli: attribute | components | generate | logprobs | models | health against an attribution
// server.
// Exit status: 0 on success, 1 when the call failed or an --html report could not be written (the
// status code and message go to stderr), 2 on a usage error. Human-readable output shows the control
// characters of a server's text as escapes; --json writes it exact (U+FFFD for bytes that are not UTF-8).
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/attribution_client.h"
#include "client/batch/line_files.h"
#include "client/batch/untrusted_text.h"
#include "client/command_line.h"
#include "client/component_render.h"
#include "client/connection_flags.h"
#include "client/heatmap.h"
#include "client/palette.h"
#include "client/result_json.h"
#include "client/standard_output.h"
#include "client/streamed_text.h"
#include "engine/common/build_info.h"

ABSL_FLAG(std::string, server, "localhost:50051",
          "server address host:port, or any gRPC target (dns:///name:port, ...)");
ABSL_FLAG(std::string, load_balancing, "pick_first", "pick_first | round_robin over the target's addresses");
ABSL_FLAG(double, timeout, 300, "deadline of the call in seconds");
ABSL_FLAG(std::string, model, "", "model name (see `models`); empty: the server's first model");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(
    std::string, target, "",
    "target text (attribute: empty = generated; logprobs: required), tokenized as "
    "the prompt's continuation: after a prompt ending in 'A:', ' No' is the answer token; see --target_tokenization");
ABSL_FLAG(std::string, target_tokenization, "continuation",
          "continuation: target/foil tokens are those that follow the prompt's when both are tokenized together | "
          "separate: the target text tokenized alone (Captum's way; ' No' may become a lone space and 'No')");
ABSL_FLAG(bool, include_special_tokens, false,
          "attribute: make special tokens (bos, ...) features too (Captum parity)");
ABSL_FLAG(std::string, foil, "", "contrastive: attribute target minus this foil");
ABSL_FLAG(std::vector<std::string>, choices, {},
          "answer choices, one token each, comma-separated (e.g. A,B,C): the target's probability "
          "renormalised over them");
ABSL_FLAG(std::string, method, "integrated_gradients",
          "integrated_gradients | gradient_shap | saliency | "
          "input_x_gradient | feature_ablation | shapley_values | shapley_value_sampling | lime | kernel_shap | "
          "attn_lrp | cp_lrp");
ABSL_FLAG(std::string, quantity, "log_prob", "log_prob | prob | logit");
ABSL_FLAG(int32_t, n_steps, 0,
          "integrated-gradient steps (0: the server's default: 50 for attribute, 16 for components' "
          "layer_integrated_gradients; with --tolerance, the most points in all)");
ABSL_FLAG(double, tolerance, 0,
          "integrated gradients: raise the order (fejer2: 7, 15, 31, ...; other rules 8, 16, 32, ...) until the "
          "convergence delta and the change between orders are within this fraction of |f(input) - f(baseline)|");
ABSL_FLAG(std::string, rule, "default",
          "integration rule: default (gausslegendre, or fejer2 with --tolerance), gausslegendre, "
          "fejer2, riemann_left, riemann_right, riemann_middle, riemann_trapezoid");
ABSL_FLAG(int32_t, n_samples, 0, "samples of sampling methods (0: server default 25)");
ABSL_FLAG(double, stdev, 0, "GradientShap noise");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt,
          "random seed (generate: unset, a fresh sample each call; --json shows the seed used to repeat it)");
ABSL_FLAG(std::string, baseline, "default", "default | zero | pad | unk | eos | bos | a token id");
ABSL_FLAG(std::string, range, "", "attribute only prompt tokens BEGIN:END");
ABSL_FLAG(bool, matrix, false, "also compute the per-output-token matrix");
ABSL_FLAG(bool, faithfulness, false, "also measure deletion / insertion curves of the explanation (AOPC)");
ABSL_FLAG(int32_t, max_new_tokens, 0, "tokens to generate (0: server default 25)");
ABSL_FLAG(double, temperature, 0, "sampling temperature (0: greedy)");
ABSL_FLAG(int32_t, top_k, 0, "logprobs: alternatives per position (at most 20)");
ABSL_FLAG(int32_t, sample_top_k, 0,
          "generate, sampling (--temperature > 0): only from the k most likely tokens (0: off; transformers' "
          "do_sample default is 50)");
ABSL_FLAG(double, top_p, 0,
          "generate, sampling (--temperature > 0): only from the most likely tokens whose probability adds up to "
          "this (nucleus sampling, after --sample_top_k; 0: off)");
ABSL_FLAG(std::string, stop, "",
          "generate: stop strings, comma-separated (at most 8), with C escapes (\\n a newline, \\, a comma, "
          "\\\\ a backslash): generation ends once the text holds one, and the text shown ends before it");
ABSL_FLAG(std::vector<std::string>, stop_token_ids, {},
          "generate: token ids that end the generation, comma-separated (at most 256), instead of the model's eos "
          "tokens");
ABSL_FLAG(bool, ignore_stop_tokens, false, "generate: run to --max_new_tokens, past eos and --stop_token_ids");
ABSL_FLAG(bool, stream, false,
          "attribute, components: show progress; generate: print tokens as they come (on stderr with --json)");
ABSL_FLAG(std::string, request_id, "",
          "sent as x-request-id: the server's log line for the call carries it (printable ASCII, at most 128 bytes)");
ABSL_FLAG(bool, json, false, "print the result as JSON on stdout (every command but health)");
ABSL_FLAG(std::string, html, "",
          "attribute, components: also write a self-contained HTML report to this file (the result is printed "
          "either way; one that cannot be written fails the command)");
ABSL_FLAG(std::string, clean, "", "components: the clean prompt");
ABSL_FLAG(std::string, corrupted, "", "components: the corrupted prompt (as many tokens as --clean)");
ABSL_FLAG(std::string, pairs, "",
          "components: a JSONL file of prompt pairs, {\"clean\": text, \"corrupted\": text} or \"clean_ids\" / "
          "\"corrupted_ids\": [token ids] (instead of --clean / --corrupted); the grids average them");
ABSL_FLAG(std::string, answer, "",
          "components: the answer token (text, read as the first clean prompt's continuation, or #ID)");
ABSL_FLAG(std::string, wrong_answer, "", "components: the other token of the difference metrics (text or #ID)");
ABSL_FLAG(std::string, component_method, "activation_patching",
          "components: activation_patching | layer_integrated_gradients | attribution_patching | "
          "attribution_patching_star");
ABSL_FLAG(std::string, metric, "logit_difference",
          "components: logit_difference | normalized_logit_difference | log_prob | prob | prob_difference");
ABSL_FLAG(std::string, direction, "denoising",
          "components: denoising (run corrupted, patch clean in) | noising (run clean, patch corrupted in)");
ABSL_FLAG(std::vector<std::string>, sites, {"heads"}, "components: heads,attn_out,mlp_out,resid_pre");
ABSL_FLAG(std::string, granularity, "default",
          "components: layer_head | layer_position | layer_position_head (heads only but layer_position)");
ABSL_FLAG(bool, color, true, "colour the terminal heatmap (off when stdout is not a terminal)");

namespace attribution::client {
namespace {

int Failed(const absl::Status& status) {
  // The message may come from a server: its control characters are made visible.
  std::fprintf(stderr, "attribution-cli: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               TerminalText(status.message()).c_str());
  return 1;
}

// Writes an --html report; the error names the path, so that a report asked for is never lost silently.
// A file through a temporary and a rename (a full disk left a torn report where the previous one was); what is
// no file (/dev/stdout, a FIFO, /dev/null) as it is.
absl::Status WriteHtml(const std::string& path, const std::string& html) {
  absl::Status written = batch::WriteAtomically(path, html);
  if (written.ok()) return written;
  return absl::Status(written.code(), absl::StrCat("--html: cannot write ", path, " (", written.message(), ")"));
}

absl::StatusOr<std::unique_ptr<AttributionClient>> ConnectFromFlags() {
  ClientOptions options{.target = absl::GetFlag(FLAGS_server),
                        .load_balancing = absl::GetFlag(FLAGS_load_balancing),
                        .timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout))};
  if (absl::Status flags = ApplyConnectionFlags(options); !flags.ok()) return flags;
  return AttributionClient::Connect(options);
}

absl::StatusOr<std::string> ModelName(AttributionClient& client) {
  if (!absl::GetFlag(FLAGS_model).empty()) return absl::GetFlag(FLAGS_model);
  absl::StatusOr<std::vector<ModelInfo>> models = client.ListModels();
  if (!models.ok()) return models.status();
  if (models->empty()) return absl::NotFoundError("the server holds no models");
  return models->front().name;
}

// --stop_token_ids as ids; a usage error naming the flag and the entry that is no integer.
absl::StatusOr<std::vector<int64_t>> StopTokenIdsFromFlag() {
  std::vector<int64_t> ids;
  for (const std::string& entry : absl::GetFlag(FLAGS_stop_token_ids)) {
    int64_t id = 0;
    if (!absl::SimpleAtoi(entry, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--stop_token_ids: \"", Printable(entry), "\" is not a token id (comma-separated integers)"));
    }
    ids.push_back(id);
  }
  return ids;
}

// --stop as strings: split at commas not escaped, each entry's C escapes read (so `--stop='\n\n,Q:'` is a
// blank line and "Q:", and `\,` a comma, which no entry could hold before); a usage error names a bad one.
absl::StatusOr<std::vector<std::string>> StopStringsFromFlag() {
  const std::string flag = absl::GetFlag(FLAGS_stop);
  std::vector<std::string> escaped(1);
  for (size_t i = 0; i < flag.size(); ++i) {
    if (flag[i] == ',') {
      escaped.emplace_back();
    } else if (flag[i] == '\\' && i + 1 < flag.size() && flag[i + 1] == ',') {
      escaped.back() += ',';
      ++i;
    } else if (flag[i] == '\\' && i + 1 < flag.size()) {
      escaped.back() += flag.substr(i, 2);  // for CUnescape below: `\\,` is a backslash, then the next entry
      ++i;
    } else {
      escaped.back() += flag[i];
    }
  }
  std::vector<std::string> stops;
  if (flag.empty()) return stops;
  for (const std::string& entry : escaped) {
    std::string text, error;
    if (!absl::CUnescape(entry, &text, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--stop: \"", Printable(entry), "\": ", error, " (C escapes: \\n, \\t, \\\\, \\, for a comma)"));
    }
    // The server refuses an empty stop string, as a call's error (status 1): a stray comma is the command line's.
    if (text.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--stop: entry ", stops.size() + 1,
                                                     " is empty (a comma with nothing after it, or two in a row)"));
    }
    stops.push_back(std::move(text));
  }
  return stops;
}

absl::StatusOr<GenerationSettings> GenerationFromFlags() {
  absl::StatusOr<std::vector<int64_t>> stop_token_ids = StopTokenIdsFromFlag();
  if (!stop_token_ids.ok()) return stop_token_ids.status();
  // No --seed: the server samples afresh.
  return GenerationSettings{.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens),
                            .temperature = absl::GetFlag(FLAGS_temperature),
                            .top_p = absl::GetFlag(FLAGS_top_p),
                            .top_k = absl::GetFlag(FLAGS_sample_top_k),
                            .seed = absl::GetFlag(FLAGS_seed),
                            .stop_token_ids = *std::move(stop_token_ids),
                            .ignore_stop_tokens = absl::GetFlag(FLAGS_ignore_stop_tokens)};
}

// --range BEGIN:END; nullopt when not given. An error is a usage error, found before any call; only an END
// past the prompt's last token needs the server (which tokenizes the prompt) to tell.
absl::StatusOr<std::optional<std::pair<int64_t, int64_t>>> RangeFromFlag() {
  const std::string range = absl::GetFlag(FLAGS_range);
  if (range.empty()) return std::nullopt;
  std::vector<std::string> parts = absl::StrSplit(range, ':');
  int64_t begin = 0, end = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &begin) || !absl::SimpleAtoi(parts[1], &end)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--range: expected BEGIN:END token indices, not \"", Printable(range), "\""));
  }
  if (begin < 0 || begin >= end) {
    return absl::InvalidArgumentError(
        absl::StrCat("--range: expected 0 <= BEGIN < END (prompt tokens BEGIN to END - 1), "
                     "not \"",
                     Printable(range), "\""));
  }
  return std::pair{begin, end};
}

// The first of `command`'s flags whose value is a name the client library does not map to the request
// (its own tables decide, so the CLI accepts exactly what a call would send), as a usage error naming the
// flag and the accepted values; "" when every name is known. Each flag is checked alone so that the
// message names it as the command line spells it (components' --component_method is the request's method).
std::string UnknownNameError(const std::string& command) {
  std::vector<std::pair<std::string, absl::Status>> checks = {
      {"load_balancing", CheckLoadBalancing(absl::GetFlag(FLAGS_load_balancing))}};
  if (command == "attribute") {
    checks.insert(checks.end(),
                  {{"method", CheckAttributeOptions({.method = absl::GetFlag(FLAGS_method)})},
                   {"quantity", CheckAttributeOptions({.quantity = absl::GetFlag(FLAGS_quantity)})},
                   {"rule", CheckAttributeOptions({.rule = absl::GetFlag(FLAGS_rule)})},
                   {"baseline", CheckAttributeOptions({.baseline = absl::GetFlag(FLAGS_baseline)})},
                   {"target_tokenization",
                    CheckAttributeOptions({.target_tokenization = absl::GetFlag(FLAGS_target_tokenization)})}});
  } else if (command == "components") {
    checks.insert(checks.end(),
                  {{"metric", CheckComponentOptions({.metric = absl::GetFlag(FLAGS_metric)})},
                   {"component_method", CheckComponentOptions({.method = absl::GetFlag(FLAGS_component_method)})},
                   {"direction", CheckComponentOptions({.direction = absl::GetFlag(FLAGS_direction)})},
                   {"sites", CheckComponentOptions({.sites = absl::GetFlag(FLAGS_sites)})},
                   {"granularity", CheckComponentOptions({.granularity = absl::GetFlag(FLAGS_granularity)})},
                   {"rule", CheckComponentOptions({.rule = absl::GetFlag(FLAGS_rule)})}});
  } else if (command == "logprobs") {
    checks.push_back({"target_tokenization",
                      CheckLogprobsOptions({.target_tokenization = absl::GetFlag(FLAGS_target_tokenization)})});
  }
  for (const auto& [flag, status] : checks) {
    if (status.ok()) continue;
    // The library's message starts with its option's name ("method: unknown value ..."): the flag replaces it.
    absl::string_view message = status.message();
    if (const size_t colon = message.find(": "); colon != absl::string_view::npos) message.remove_prefix(colon + 2);
    return absl::StrCat("--", flag, ": ", Printable(message));
  }
  return "";
}

// Writes the --html report, if one was asked for, then prints `shown`: written first, the report is not
// lost when stdout is a pipe its reader closed (`| head -1` ends the process with SIGPIPE as it prints),
// and a report that cannot be written fails the command (status 1) after the result is printed, so the
// result computed is not lost either.
int PrintWithHtml(const std::string& shown, const std::function<std::string()>& html) {
  const std::string path = absl::GetFlag(FLAGS_html);
  const absl::Status written = path.empty() ? absl::OkStatus() : WriteHtml(path, html());
  std::cout << shown;
  StandardOutputWritten();  // at once: a failure's errno is still the write's
  return written.ok() ? 0 : Failed(written);
}

int Attribute(AttributionClient& client, const std::string& model, GenerationSettings generation,
              std::optional<std::pair<int64_t, int64_t>> feature_range) {
  // --seed seeds the method (GradientShap's noise, sampling methods) and a generated target alike; beside a
  // given target it is the method's only, and the server named the unread generation seed.
  if (!absl::GetFlag(FLAGS_target).empty()) generation.seed.reset();
  AttributeOptions o{.model = model,
                     .prompt = absl::GetFlag(FLAGS_prompt),
                     .target = absl::GetFlag(FLAGS_target),
                     .target_tokenization = absl::GetFlag(FLAGS_target_tokenization),
                     .generation = generation,
                     .method = absl::GetFlag(FLAGS_method),
                     .quantity = absl::GetFlag(FLAGS_quantity),
                     .foil = absl::GetFlag(FLAGS_foil),
                     .choices = absl::GetFlag(FLAGS_choices),
                     .baseline = absl::GetFlag(FLAGS_baseline),
                     .n_steps = absl::GetFlag(FLAGS_n_steps),
                     .completeness_tolerance = absl::GetFlag(FLAGS_tolerance),
                     .rule = absl::GetFlag(FLAGS_rule),
                     .n_samples = absl::GetFlag(FLAGS_n_samples),
                     .stdev = absl::GetFlag(FLAGS_stdev),
                     .seed = absl::GetFlag(FLAGS_seed).value_or(0),
                     .want_token_matrix = absl::GetFlag(FLAGS_matrix),
                     .want_faithfulness = absl::GetFlag(FLAGS_faithfulness),
                     .include_special_tokens = absl::GetFlag(FLAGS_include_special_tokens)};
  o.request_id = absl::GetFlag(FLAGS_request_id);
  o.feature_range = feature_range;
  absl::StatusOr<Attribution> result;
  if (absl::GetFlag(FLAGS_stream)) {
    result = client.AttributeStream(o, [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\rrows %lld / %lld", static_cast<long long>(done), static_cast<long long>(total));
    });
    std::fprintf(stderr, "\n");
  } else {
    result = client.Attribute(o);
  }
  if (!result.ok()) return Failed(result.status());
  const bool color = absl::GetFlag(FLAGS_color) && isatty(STDOUT_FILENO);
  return PrintWithHtml(absl::GetFlag(FLAGS_json) ? AttributionJson(*result) + "\n" : TerminalHeatmap(*result, color),
                       [&] { return HtmlReport(*result); });
}

// "#12" is token id 12; anything else is text.
void SetAnswer(const std::string& flag, std::string& text, std::optional<int64_t>& id) {
  int64_t parsed = 0;
  if (absl::StartsWith(flag, "#") && absl::SimpleAtoi(flag.substr(1), &parsed)) {
    id = parsed;
  } else {
    text = flag;
  }
}

absl::StatusOr<std::vector<PromptPair>> PairsFromFlags() {
  if (absl::GetFlag(FLAGS_pairs).empty()) {
    if (absl::GetFlag(FLAGS_clean).empty() || absl::GetFlag(FLAGS_corrupted).empty()) {
      return absl::InvalidArgumentError("components: give --clean and --corrupted, or --pairs FILE");
    }
    return std::vector<PromptPair>{{.clean = absl::GetFlag(FLAGS_clean), .corrupted = absl::GetFlag(FLAGS_corrupted)}};
  }
  const std::string path = absl::GetFlag(FLAGS_pairs);
  absl::StatusOr<std::string> text = ReadTextFile(path);  // names a directory, which an ifstream read as empty
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("--pairs: ", text.status().message()));
  std::vector<PromptPair> pairs;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    // As the batch tool reads its rows: a repeated key was kept silently as its last value, and a key of a
    // batch component row ("answer") or a misspelt one was passed over while the flags' values were used.
    absl::StatusOr<nlohmann::json> parsed = batch::ParseJson(line, absl::StrCat("--pairs: line ", number));
    if (!parsed.ok()) return parsed.status();
    const nlohmann::json& row = *parsed;
    PromptPair pair;
    bool ok = row.is_object();
    for (const auto& [key, value] : row.items()) {
      if (!ok) break;
      if (key != "clean" && key != "corrupted" && key != "clean_ids" && key != "corrupted_ids") {
        return absl::InvalidArgumentError(absl::StrCat("--pairs: line ", number, ": unknown key \"", Printable(key),
                                                       "\" (a pair is clean or clean_ids, corrupted or corrupted_ids; "
                                                       "--answer and --wrong_answer are flags)"));
      }
      if (row.contains(key + "_ids")) {
        return absl::InvalidArgumentError(
            absl::StrCat("--pairs: line ", number, ": give \"", key, "\" or \"", key, "_ids\", not both"));
      }
    }
    for (const auto& [name, text, ids] : {std::tuple("clean", &pair.clean, &pair.clean_ids),
                                          std::tuple("corrupted", &pair.corrupted, &pair.corrupted_ids)}) {
      if (!ok) break;
      const std::string ids_name = absl::StrCat(name, "_ids");
      if (row.contains(name) && row[name].is_string()) {
        *text = row[name].get<std::string>();
      } else if (row.contains(ids_name) && row[ids_name].is_array() &&
                 std::all_of(row[ids_name].begin(), row[ids_name].end(),
                             [](const auto& v) {  // an id past int64 read as -1 and the like
                               return v.is_number_integer() &&
                                      !(v.is_number_unsigned() &&
                                        v.template get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()});
                             })) {
        *ids = row[ids_name].get<std::vector<int64_t>>();
      } else {
        ok = false;
      }
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pairs: line ", number,
                       " is not {\"clean\": text or \"clean_ids\": [ids], \"corrupted\" or \"corrupted_ids\"}"));
    }
    pairs.push_back(std::move(pair));
  }
  if (pairs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pairs: ", path, " holds no pairs (one {\"clean\": ..., \"corrupted\": ...} a line)"));
  }
  return pairs;
}

int Components(AttributionClient& client, const std::string& model, std::vector<PromptPair> pairs) {
  ComponentOptions o{.model = model,
                     .pairs = std::move(pairs),
                     .metric = absl::GetFlag(FLAGS_metric),
                     .method = absl::GetFlag(FLAGS_component_method),
                     .direction = absl::GetFlag(FLAGS_direction),
                     .sites = absl::GetFlag(FLAGS_sites),
                     .granularity = absl::GetFlag(FLAGS_granularity),
                     .n_steps = absl::GetFlag(FLAGS_n_steps),
                     .rule = absl::GetFlag(FLAGS_rule)};
  o.request_id = absl::GetFlag(FLAGS_request_id);
  SetAnswer(absl::GetFlag(FLAGS_answer), o.answer, o.answer_id);
  SetAnswer(absl::GetFlag(FLAGS_wrong_answer), o.wrong_answer, o.wrong_answer_id);
  std::function<void(int64_t, int64_t)> progress;
  if (absl::GetFlag(FLAGS_stream)) {
    progress = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\rrows %lld / %lld", static_cast<long long>(done), static_cast<long long>(total));
    };
  }
  absl::StatusOr<ComponentAttribution> result = client.AttributeComponents(o, progress);
  if (progress) std::fprintf(stderr, "\n");
  if (!result.ok()) return Failed(result.status());
  const bool color = absl::GetFlag(FLAGS_color) && isatty(STDOUT_FILENO);
  return PrintWithHtml(absl::GetFlag(FLAGS_json) ? ComponentJson(*result) + "\n" : TerminalComponents(*result, color),
                       [&] { return ComponentHtmlReport(*result); });
}

int Generate(AttributionClient& client, const std::string& model, const GenerationSettings& generation,
             std::vector<std::string> stop) {
  GenerateOptions o{
      .model = model, .prompt = absl::GetFlag(FLAGS_prompt), .generation = generation, .stop = std::move(stop)};
  o.request_id = absl::GetFlag(FLAGS_request_id);
  absl::StatusOr<Generation> result;
  if (absl::GetFlag(FLAGS_stream)) {
    // With --json, stdout holds the JSON alone: the tokens show on stderr as they come.
    std::ostream& shown = absl::GetFlag(FLAGS_json) ? std::cerr : std::cout;
    // The tokens' bytes joined, so a character split across tokens shows whole, and cut before a stop string,
    // as the response's text.
    StreamedText text(o.stop);
    result = client.GenerateStream(o, [&](const Token& t) {
      shown << TerminalText(text.Add(t));
      // Nobody reads the tokens any more (a reader gone while SIGPIPE is ignored, a full disk): generating the
      // rest would cost the server for nothing. Leaving closes the channel, which cancels the call.
      if (&shown != &std::cout)
        shown << std::flush;
      else if (!StandardOutputWritten())
        std::_Exit(FinishStandardOutput("attribution-cli", 0));
    });
    shown << TerminalText(text.Finish()) << "\n";
  } else {
    result = client.Generate(o);
  }
  if (!result.ok()) return Failed(result.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << GenerationJson(*result) << "\n";
  } else if (!absl::GetFlag(FLAGS_stream)) {
    std::cout << TerminalText(result->text) << "\n";
  }
  return 0;
}

int LogprobsCommand(AttributionClient& client, const std::string& model) {
  absl::StatusOr<Logprobs> result = client.GetLogprobs({.model = model,
                                                        .prompt = absl::GetFlag(FLAGS_prompt),
                                                        .target = absl::GetFlag(FLAGS_target),
                                                        .target_tokenization = absl::GetFlag(FLAGS_target_tokenization),
                                                        .top_k = absl::GetFlag(FLAGS_top_k),
                                                        .request_id = absl::GetFlag(FLAGS_request_id)});
  if (!result.ok()) return Failed(result.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << LogprobsJson(*result) << "\n";
    return 0;
  }
  std::vector<Token> scored;
  for (const TokenLogprob& t : result->target) scored.push_back(t.token);
  std::cout << TargetTokensLine(scored) << "\n";
  for (const TokenLogprob& t : result->target) {
    std::cout << absl::StrFormat("%-16s %10.4f", absl::StrCat("\"", Printable(t.token.text), "\""), t.token.log_prob);
    // Quoted as the scored token is: " No" and "No" are different tokens, which only the quotes tell apart.
    for (const Token& top : t.top) std::cout << absl::StrFormat("  \"%s\":%.3f", Printable(top.text), top.log_prob);
    std::cout << "\n";
  }
  std::cout << absl::StrFormat("total log-prob %.4f\n", result->total_log_prob);
  return 0;
}

// "nf4/64+dq (saved, compute float16)": a 4-bit format's block size, double quantization, and a pre-quantized
// checkpoint with the compute dtype it was saved for.
std::string QuantizationLabel(const ModelInfo& m) {
  if (m.quantization_block_size == 0) return m.quantization;
  std::string saved;
  if (m.quantization_from_checkpoint) {
    saved = m.checkpoint_compute_dtype.empty() ? " (saved)"
                                               : absl::StrCat(" (saved, compute ", m.checkpoint_compute_dtype, ")");
  }
  return absl::StrCat(m.quantization, "/", m.quantization_block_size, m.double_quantization ? "+dq" : "", saved);
}

int Models(AttributionClient& client) {
  absl::StatusOr<std::vector<ModelInfo>> models = client.ListModels();
  if (!models.ok()) return Failed(models.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ModelsJson(*models) << "\n";
    return 0;
  }
  for (const ModelInfo& m : *models) {
    std::cout << absl::StrFormat("%-16s %-8s %-9s %-5s %-7s %12d bytes  vocab %d  layers %d  hidden %d\n",
                                 Printable(m.name), Printable(m.architecture), Printable(m.dtype),
                                 Printable(QuantizationLabel(m)), Printable(m.device), m.resident_weight_bytes,
                                 m.vocab_size, m.num_layers, m.hidden_size);
    // The limits a request is refused by, so that one can be sized before it is sent.
    std::cout << absl::StrFormat(
        "  limits: steps %d  samples %d  features %d  exact shapley features %d  tokens %d  new tokens %d  "
        "top_k %d  choices %d  rows %d  queued tokens %d  queued bytes %d  pairs %d  kv cache tokens %d\n",
        m.max_steps, m.max_samples, m.max_features, m.max_exact_shapley_features, m.max_tokens, m.max_new_tokens,
        m.max_top_k, m.max_choices, m.max_rows, m.max_queued_tokens, m.max_queued_bytes, m.max_pairs,
        m.max_kv_cache_tokens);
    if (!m.weights_digest.empty()) {
      std::cout << "  weights_digest: " << Printable(m.weights_digest)
                << "  model_digest: " << Printable(m.model_digest) << "\n";
    }
  }
  return 0;
}

// Attribute and components each read their method from a flag of their own: components given --method ran
// activation patching without a word.
std::string MethodFlagError(const std::string& command, const std::set<std::string>& given) {
  if (command == "components" && given.contains("method")) {
    return "--method: components reads its method from --component_method (--method is attribute's)";
  }
  if (command == "attribute" && given.contains("component_method")) {
    return "--component_method: attribute reads its method from --method (--component_method is components')";
  }
  return "";
}

int Run(const std::vector<char*>& positional, const std::set<std::string>& given) {
  if (positional.size() != 2) {
    std::fprintf(stderr,
                 "usage: attribution-cli attribute|components|generate|logprobs|models|health [flags]; see --help\n");
    return 2;
  }
  // absl::Seconds(NaN) is an infinite duration: no deadline, where a number was meant; 0 or less expired
  // every call before it was sent (DEADLINE_EXCEEDED, read as the server's slowness).
  if (const double timeout = absl::GetFlag(FLAGS_timeout); !(timeout > 0)) {
    std::fprintf(stderr, "attribution-cli: --timeout: give a number of seconds above 0, not %s\n",
                 absl::StrCat(timeout).c_str());
    return 2;
  }
  if (const std::string error = ConnectionFlagsError(); !error.empty()) {
    std::fprintf(stderr, "attribution-cli: %s\n", error.c_str());
    return 2;
  }
  // gRPC read an empty address as "dns:///" and failed with "Failed to create secure client channel".
  if (absl::StripAsciiWhitespace(absl::GetFlag(FLAGS_server)).empty()) {
    std::fprintf(stderr, "attribution-cli: --server: give the server's address (host:port)\n");
    return 2;
  }
  const std::string command = positional[1];
  if (command != "attribute" && command != "components" && command != "generate" && command != "logprobs" &&
      command != "models" && command != "health") {
    std::fprintf(stderr, "attribution-cli: unknown command \"%s\"\n", Printable(command).c_str());
    return 2;
  }
  // What needs no server is checked before calling one: names (--method, ...), a bad --range, a --pairs file.
  if (std::string error = MethodFlagError(command, given);
      !error.empty() || !(error = UnknownNameError(command)).empty()) {
    std::fprintf(stderr, "attribution-cli: %s\n", error.c_str());
    return 2;
  }
  absl::StatusOr<std::optional<std::pair<int64_t, int64_t>>> range = RangeFromFlag();
  const absl::StatusOr<GenerationSettings> generation = GenerationFromFlags();
  absl::StatusOr<std::vector<std::string>> stops = StopStringsFromFlag();
  for (const absl::Status& usage :
       {command == "attribute" ? range.status() : absl::OkStatus(), generation.status(), stops.status()}) {
    if (!usage.ok()) {
      std::fprintf(stderr, "attribution-cli: %s\n", std::string(usage.message()).c_str());
      return 2;
    }
  }
  absl::StatusOr<std::vector<PromptPair>> pairs;
  if (command == "components") {
    pairs = PairsFromFlags();
    if (!pairs.ok()) return Failed(pairs.status());
  }
  absl::StatusOr<std::unique_ptr<AttributionClient>> client = ConnectFromFlags();
  if (!client.ok()) return Failed(client.status());
  if (command == "models") return Models(**client);
  if (command == "health") {
    absl::StatusOr<std::string> health = (*client)->Health();
    if (!health.ok()) return Failed(health.status());
    std::cout << Printable(*health) << "\n";
    return *health == "SERVING" ? 0 : 1;
  }
  absl::StatusOr<std::string> model = ModelName(**client);
  if (!model.ok()) return Failed(model.status());
  if (command == "attribute") return Attribute(**client, *model, *generation, *range);
  if (command == "components") return Components(**client, *model, std::move(*pairs));
  if (command == "generate") return Generate(**client, *model, *generation, *std::move(stops));
  return LogprobsCommand(**client, *model);
}

}  // namespace
}  // namespace attribution::client

int main(int argc, char** argv) {
  attribution::client::PrepareStandardOutput();
  // abseil's --help lists the flags of files named after the program (attribution-server.cc and
  // the like) and finds none; ours are defined in this file.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "client/cli_main.cc") || attribution::client::DefinesConnectionFlags(file);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return attribution::VersionString("attribution-cli"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Calls an attribution server. A text target is tokenized as the prompt's continuation (what the model\n"
      "reads when it follows the prompt); the scored target tokens are printed first.\n"
      "  attribution-cli attribute --prompt 'Is it true that vaccines cause autism?' --target ' No'\n"
      "  attribution-cli components --clean 'When Mary and John went out, John gave a drink to' \\\n"
      "      --corrupted 'When Mary and John went out, Mary gave a drink to' --answer ' Mary' --wrong_answer ' John'\n"
      "  attribution-cli generate --prompt 'Once upon a time' --stream\n"
      "  attribution-cli logprobs --prompt 'The capital of France is' --target ' Paris' --top_k 5\n"
      "  attribution-cli models | health");
  const attribution::client::CommandLine line =
      attribution::client::ScanCommandLine(argc, argv, usage.contains_help_flags);
  if (!line.error.empty()) {
    std::fprintf(stderr, "attribution-cli: %s\n", line.error.c_str());
    return 2;
  }
  return attribution::client::FinishStandardOutput(
      "attribution-cli", attribution::client::Run(absl::ParseCommandLine(argc, argv), line.given));
}
