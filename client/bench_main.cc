// SPDX-License-Identifier: Apache-2.0
// attribution-bench: load against an attribution server. Closed loop (--concurrency N clients, each
// sending its next call when the last one returns) or open loop (--rate R calls/s on a fixed schedule,
// latency measured from the scheduled send time, so a slow server cannot hide its queueing). The mix of
// Attribute / Logprobs / Generate is weighted (--mix). Prints throughput, latency percentiles and
// errors by code per RPC, or JSON (--json).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/attribution_client.h"
#include "client/command_line.h"
#include "client/connection_flags.h"
#include "client/standard_output.h"
#include "engine/common/build_info.h"
#include "engine/common/monotonic_clock.h"

ABSL_FLAG(std::string, server, "localhost:50051", "server address, or any gRPC target (dns:///name:port, ...)");
ABSL_FLAG(std::string, load_balancing, "pick_first", "pick_first | round_robin over the target's addresses");
ABSL_FLAG(std::string, model, "", "model (empty: the server's first)");
ABSL_FLAG(int32_t, concurrency, 8, "closed loop: clients calling back to back");
ABSL_FLAG(double, rate, 0, "open loop: calls per second (0: closed loop)");
ABSL_FLAG(double, duration, 20, "seconds of load");
ABSL_FLAG(double, timeout, 30,
          "deadline of each call in seconds: a hung server ends the run this long after --duration, not after "
          "the client library's 120 s");
ABSL_FLAG(std::string, mix, "attribute=1,logprobs=4,generate=1", "weights of the RPCs");
ABSL_FLAG(std::string, method, "integrated_gradients", "attribution method of Attribute calls");
ABSL_FLAG(int32_t, n_steps, 16, "integrated-gradient steps of Attribute calls");
ABSL_FLAG(int32_t, max_new_tokens, 16, "tokens per Generate call");
ABSL_FLAG(bool, json, false, "print JSON");
ABSL_FLAG(std::string, background, "",
          "a second load beside the first, e.g. \"attribute n_steps=512 concurrency=2\": "
          "runs the first alone, the second alone, then both, and reports the first's latency and the second's "
          "throughput loaded vs alone (latency isolation)");

namespace attribution::client {
namespace {

const char* const kPrompts[] = {
    "Is it true that vaccines cause autism?", "The capital of France is",
    "Once upon a time there was a",           "Statement: the earth is flat. True or false? Answer:",
    "Translate to French: good morning",      "def fibonacci(n):",
    "The best way to learn a language is",    "Q: What is 12 times 7? A:"};

struct Sample {
  double seconds;
  absl::StatusCode code;
};

class Recorder {
 public:
  void Add(const std::string& rpc, Sample sample) {
    std::lock_guard<std::mutex> lock(mu_);
    samples_[rpc].push_back(sample);
  }
  nlohmann::json Report(double elapsed) const {
    std::lock_guard<std::mutex> lock(mu_);
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [rpc, samples] : samples_) {
      std::vector<double> ok;
      std::map<std::string, int> errors;
      for (const Sample& s : samples) {
        if (s.code == absl::StatusCode::kOk)
          ok.push_back(s.seconds);
        else
          errors[absl::StatusCodeToString(s.code)] += 1;
      }
      std::sort(ok.begin(), ok.end());
      // The nearest-rank percentile: the smallest latency at least a fraction q of the calls kept to;
      // null without a call that succeeded.
      auto ms_at = [&](double q) -> nlohmann::json {
        if (ok.empty()) return nullptr;
        const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(ok.size())));
        return 1e3 * ok[std::clamp<size_t>(rank, 1, ok.size()) - 1];
      };
      out[rpc] = {{"calls", samples.size()}, {"ok", ok.size()},      {"per_second", ok.size() / elapsed},
                  {"p50_ms", ms_at(0.5)},    {"p90_ms", ms_at(0.9)}, {"p99_ms", ms_at(0.99)},
                  {"max_ms", ms_at(1.0)},    {"errors", errors}};
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::vector<Sample>> samples_;
};

struct Mix {
  std::vector<std::string> rpcs;
  std::discrete_distribution<int> pick;
};

absl::StatusOr<Mix> ParseMix(const std::string& text) {
  Mix mix;
  std::vector<double> weights;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::vector<std::string> kv = absl::StrSplit(part, '=');
    double weight = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &weight) || !std::isfinite(weight) || weight < 0 ||
        (kv[0] != "attribute" && kv[0] != "logprobs" && kv[0] != "generate")) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", part,
                       "\" is not RPC=WEIGHT (attribute, logprobs, generate; a finite weight >= 0): expected e.g. "
                       "attribute=1,logprobs=4,generate=1"));
    }
    mix.rpcs.push_back(kv[0]);
    weights.push_back(weight);
  }
  const double largest = *std::max_element(weights.begin(), weights.end());
  if (largest <= 0) return absl::InvalidArgumentError("the weights sum to 0, so no call would be sent");
  // As shares of the largest: weights of 1e308 summed to inf, every share was then 0 and every call the last RPC.
  for (double& weight : weights) weight /= largest;
  mix.pick = std::discrete_distribution<int>(weights.begin(), weights.end());
  return mix;
}

// What one load runs: the RPC mix and its settings, closed loop (concurrency) or open loop (rate).
struct LoadSpec {
  std::string mix;
  double rate = 0;
  int concurrency = 8;
  std::string method = "integrated_gradients";
  int n_steps = 16;
  int max_new_tokens = 16;
};

LoadSpec ForegroundFromFlags() {
  return {.mix = absl::GetFlag(FLAGS_mix),
          .rate = absl::GetFlag(FLAGS_rate),
          .concurrency = absl::GetFlag(FLAGS_concurrency),
          .method = absl::GetFlag(FLAGS_method),
          .n_steps = absl::GetFlag(FLAGS_n_steps),
          .max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens)};
}

// "attribute n_steps=512 concurrency=2": a mix (an RPC name weighs 1) and settings that differ from
// the foreground's defaults.
absl::StatusOr<LoadSpec> ParseBackground(const std::string& text) {
  LoadSpec spec{.concurrency = 2};
  std::vector<std::string> words = absl::StrSplit(text, ' ', absl::SkipEmpty());
  if (words.empty())
    return absl::InvalidArgumentError("--background: expected e.g. \"attribute n_steps=512 concurrency=2\"");
  spec.mix = words[0].find('=') == std::string::npos ? words[0] + "=1" : words[0];
  for (size_t i = 1; i < words.size(); ++i) {
    std::vector<std::string> kv = absl::StrSplit(words[i], absl::MaxSplits('=', 1));
    const std::string key = kv[0];
    bool known = kv.size() == 2, parsed = known;
    if (known && key == "method")
      spec.method = kv[1];
    else if (known && key == "n_steps")
      parsed = absl::SimpleAtoi(kv[1], &spec.n_steps);
    else if (known && key == "concurrency")
      parsed = absl::SimpleAtoi(kv[1], &spec.concurrency);
    else if (known && key == "rate")
      parsed = absl::SimpleAtod(kv[1], &spec.rate);
    else if (known && key == "max_new_tokens")
      parsed = absl::SimpleAtoi(kv[1], &spec.max_new_tokens);
    else
      known = false;
    if (!known)
      return absl::InvalidArgumentError("--background: unknown setting \"" + words[i] +
                                        "\" (method, n_steps, concurrency, rate, max_new_tokens)");
    if (!parsed) return absl::InvalidArgumentError("--background: " + key + ": \"" + kv[1] + "\" is not a number");
  }
  return spec;
}

// Refuses a load that could not run as asked (`where` names the flag), before any call is sent: a closed
// loop needs clients, an open loop a finite rate, and the Attribute settings must make a request.
absl::Status CheckLoad(const std::string& where, const LoadSpec& spec) {
  auto refuse = [&](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(where, ": ", what)); };
  if (absl::Status mix = ParseMix(spec.mix).status(); !mix.ok()) return refuse(absl::StrCat("mix: ", mix.message()));
  if (!std::isfinite(spec.rate) || spec.rate < 0) return refuse("rate must be a finite number >= 0");
  if (spec.rate == 0 && (spec.concurrency < 1 || spec.concurrency > 10000))
    return refuse("concurrency must lie in [1, 10000]");
  if (spec.n_steps < 1) return refuse("n_steps must be >= 1");
  if (spec.max_new_tokens < 1) return refuse("max_new_tokens must be >= 1");
  if (absl::Status method = CheckAttributeOptions({.method = spec.method}); !method.ok())
    return refuse(std::string(method.message()));
  return absl::OkStatus();
}

// Starts one call of kind `rpc`; `done` receives its status code.
void Call(AttributionClient& client, const std::string& model, const LoadSpec& spec, const std::string& rpc, int index,
          std::function<void(absl::StatusCode)> done) {
  const std::string prompt = kPrompts[index % std::size(kPrompts)];
  if (rpc == "attribute") {
    client.AttributeAsync({.model = model,
                           .prompt = prompt,
                           .target = " yes",
                           .method = spec.method,
                           .n_steps = spec.n_steps,
                           .n_samples = 4},
                          [done](absl::StatusOr<Attribution> r) { done(r.status().code()); });
  } else if (rpc == "logprobs") {
    client.GetLogprobsAsync({.model = model, .prompt = prompt, .target = " and then it was over", .top_k = 5},
                            [done](absl::StatusOr<Logprobs> r) { done(r.status().code()); });
  } else {
    client.GenerateAsync({.model = model,
                          .prompt = prompt,
                          .generation = {.max_new_tokens = spec.max_new_tokens, .ignore_stop_tokens = true}},
                         [done](absl::StatusOr<Generation> r) { done(r.status().code()); });
  }
}

// Runs `spec` for `duration` and waits for its calls to finish; the report per RPC.
nlohmann::json RunLoad(AttributionClient& client, const std::string& model, const LoadSpec& spec,
                       absl::Duration duration) {
  Mix mix = *ParseMix(spec.mix);
  Recorder recorder;
  const absl::Time start = MonotonicNow(), end = start + duration;
  std::mt19937 rng(1);
  std::mutex rng_mu;  // open-loop callbacks and closed-loop clients draw from one generator
  auto pick = [&] {
    std::lock_guard<std::mutex> lock(rng_mu);
    return mix.rpcs[mix.pick(rng)];
  };
  std::atomic<int64_t> sent = 0;
  if (spec.rate > 0) {  // open loop: send on schedule regardless of answers
    // A rate the client cannot send (or a server that answers slower than asked) must not run past the
    // duration or hold calls without bound: sending stops at the end, and waits while this many are out.
    constexpr int64_t kMostInFlight = 10000;
    int64_t in_flight = 0;
    std::mutex mu;
    std::condition_variable answered;
    for (int64_t i = 0;; ++i) {
      const absl::Time scheduled = start + absl::Seconds(static_cast<double>(i) / spec.rate);
      if (scheduled >= end) break;
      absl::SleepFor(scheduled - MonotonicNow());
      {
        std::unique_lock<std::mutex> lock(mu);
        if (!answered.wait_for(lock, absl::ToChronoNanoseconds(end - MonotonicNow()),
                               [&] { return in_flight < kMostInFlight; })) {
          break;
        }
        if (MonotonicNow() >= end) break;
        in_flight += 1;
      }
      const std::string rpc = pick();
      sent += 1;
      // Latency counts from the call's scheduled time, so a schedule the client fell behind shows in it.
      Call(client, model, spec, rpc, static_cast<int>(i % std::size(kPrompts)),
           [&, rpc, scheduled](absl::StatusCode code) {
             recorder.Add(rpc, {absl::ToDoubleSeconds(MonotonicNow() - scheduled), code});
             std::lock_guard<std::mutex> lock(mu);
             in_flight -= 1;
             answered.notify_all();
           });
    }
    std::unique_lock<std::mutex> lock(mu);
    answered.wait(lock, [&] { return in_flight == 0; });
  } else {  // closed loop: each client thread sends its next call when the last returns
    // One thread per client rather than issuing the next call from the last one's callback: a call
    // that fails before it is sent calls back at once, and chaining those recursed until the stack ran out.
    // A refusal (RESOURCE_EXHAUSTED, UNAVAILABLE) answers at once: resent at once, 4 clients made 63,716 of
    // them in 8 s, measuring the refusals and crowding the calls that ran. A client that was refused waits
    // (50 ms, doubling to 1 s, jittered 0.5-1.5x) before its next call, as a client library's retries would.
    constexpr absl::Duration kFirstBackoff = absl::Milliseconds(50), kMostBackoff = absl::Seconds(1);
    std::vector<std::thread> clients;
    for (int c = 0; c < spec.concurrency; ++c) {
      clients.emplace_back([&, c] {
        std::mt19937 jitter(static_cast<uint32_t>(c) + 1);
        absl::Duration backoff = absl::ZeroDuration();
        for (int index = c; MonotonicNow() < end; index += spec.concurrency) {
          if (backoff > absl::ZeroDuration()) {
            const double scale = std::uniform_real_distribution<double>(0.5, 1.5)(jitter);
            absl::SleepFor(std::min(backoff * scale, end - MonotonicNow()));
            if (MonotonicNow() >= end) break;
          }
          const std::string rpc = pick();
          sent += 1;
          const absl::Time sent_at = MonotonicNow();
          // Shared with the callback: set_value may still be returning on a gRPC thread after get() did.
          auto answered = std::make_shared<std::promise<absl::StatusCode>>();
          std::future<absl::StatusCode> answer = answered->get_future();
          Call(client, model, spec, rpc, index, [answered](absl::StatusCode code) { answered->set_value(code); });
          const absl::StatusCode code = answer.get();
          recorder.Add(rpc, {absl::ToDoubleSeconds(MonotonicNow() - sent_at), code});
          const bool refused = code == absl::StatusCode::kResourceExhausted || code == absl::StatusCode::kUnavailable;
          backoff = !refused                          ? absl::ZeroDuration()
                    : backoff == absl::ZeroDuration() ? kFirstBackoff
                                                      : std::min(backoff * 2, kMostBackoff);
        }
      });
    }
    for (std::thread& t : clients) t.join();
  }
  const double elapsed = absl::ToDoubleSeconds(MonotonicNow() - start);
  return {{"mode", spec.rate > 0 ? "open" : "closed"},
          {"rate", spec.rate},
          {"sent_per_second", static_cast<double>(sent.load()) / absl::ToDoubleSeconds(duration)},
          {"concurrency", spec.concurrency},
          {"seconds", elapsed},
          {"rpcs", recorder.Report(elapsed)}};
}

// The calls of a load that succeeded, over every RPC.
int64_t SucceededCalls(const nlohmann::json& load) {
  int64_t ok = 0;
  for (const auto& [rpc, r] : load["rpcs"].items()) ok += r["ok"].get<int64_t>();
  return ok;
}

// A load none of whose calls succeeded measured nothing: exit 1 (it exited 0 after 95,557 failed calls to a port
// where nothing listened), saying so beside the table's error counts.
int ExitCode(std::initializer_list<const nlohmann::json*> loads) {
  for (const nlohmann::json* load : loads) {
    if (SucceededCalls(*load) == 0) {
      std::fprintf(stderr, "attribution-bench: no call succeeded (their codes are in the errors column)\n");
      return 1;
    }
  }
  return 0;
}

void PrintTable(const std::string& title, const nlohmann::json& load) {
  const double rate = load["rate"].get<double>();
  std::cout << absl::StrFormat(
      "%s: %s loop, %s, %.1f s\n", title, rate > 0 ? "open" : "closed",
      rate > 0 ? absl::StrFormat("%.1f calls/s asked, %.1f sent", rate, load["sent_per_second"].get<double>())
               : absl::StrFormat("%d clients", load["concurrency"].get<int>()),
      load["seconds"].get<double>());
  std::cout << absl::StrFormat("| %-9s | %6s | %6s | %8s | %9s | %9s | %9s | %s\n", "rpc", "calls", "ok", "ok/s",
                               "p50 ms", "p90 ms", "p99 ms", "errors");
  auto ms = [](const nlohmann::json& value) {
    return value.is_number() ? absl::StrFormat("%.1f", value.get<double>()) : std::string("-");
  };
  for (const auto& [rpc, r] : load["rpcs"].items()) {
    std::cout << absl::StrFormat("| %-9s | %6d | %6d | %8.2f | %9s | %9s | %9s | %s\n", rpc, r["calls"].get<int>(),
                                 r["ok"].get<int>(), r["per_second"].get<double>(), ms(r["p50_ms"]), ms(r["p90_ms"]),
                                 ms(r["p99_ms"]),
                                 r["errors"].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
}

// The foreground alone, the background alone, then both at once: the foreground's latency idle vs
// loaded and the background's throughput with vs without the foreground, in one run.
nlohmann::json RunIsolation(AttributionClient& client, const std::string& model, const LoadSpec& foreground,
                            const LoadSpec& background, absl::Duration duration) {
  nlohmann::json out;
  out["foreground_alone"] = RunLoad(client, model, foreground, duration);
  out["background_alone"] = RunLoad(client, model, background, duration);
  // The two loaded runs write their own reports; one json object written by two threads would race.
  nlohmann::json background_loaded;
  std::thread behind([&] { background_loaded = RunLoad(client, model, background, duration); });
  out["foreground_loaded"] = RunLoad(client, model, foreground, duration);
  behind.join();
  out["background_loaded"] = std::move(background_loaded);
  auto ratio = [&](const char* loaded, const char* alone, const char* key) {
    nlohmann::json ratios = nlohmann::json::object();
    for (const auto& [rpc, r] : out[alone]["rpcs"].items()) {
      if (!r[key].is_number() || !out[loaded]["rpcs"].contains(rpc) || !out[loaded]["rpcs"][rpc][key].is_number())
        continue;
      const double base = r[key].get<double>();
      if (base > 0) ratios[rpc] = out[loaded]["rpcs"][rpc][key].get<double>() / base;
    }
    return ratios;
  };
  out["foreground_p99_loaded_over_alone"] = ratio("foreground_loaded", "foreground_alone", "p99_ms");
  out["background_throughput_loaded_over_alone"] = ratio("background_loaded", "background_alone", "per_second");
  return out;
}

int Run() {
  const double timeout = absl::GetFlag(FLAGS_timeout);
  ClientOptions options{.target = absl::GetFlag(FLAGS_server),
                        .load_balancing = absl::GetFlag(FLAGS_load_balancing),
                        .timeout = absl::Seconds(timeout),
                        .max_attempts = 1};
  std::string flags_error = ConnectionFlagsError();
  if (absl::Status flags = ApplyConnectionFlags(options); flags_error.empty() && !flags.ok()) {
    flags_error = std::string(flags.message());
  }
  if (!flags_error.empty()) {
    std::fprintf(stderr, "attribution-bench: %s\n", flags_error.c_str());
    return 2;
  }
  auto client = AttributionClient::Connect(options);
  const LoadSpec foreground = ForegroundFromFlags();
  absl::StatusOr<LoadSpec> background = absl::GetFlag(FLAGS_background).empty()
                                            ? absl::StatusOr<LoadSpec>(LoadSpec{})
                                            : ParseBackground(absl::GetFlag(FLAGS_background));
  const double seconds = absl::GetFlag(FLAGS_duration);
  absl::Status valid = !client.ok()       ? client.status()
                       : !background.ok() ? background.status()
                                          : CheckLoad("flags", foreground);
  if (valid.ok() && !background->mix.empty()) valid = CheckLoad("--background", *background);
  constexpr double kMostSeconds = 7 * 24 * 3600;  // a week; absl::Duration and the schedule hold more
  if (valid.ok() && !(seconds > 0 && seconds <= kMostSeconds))
    valid = absl::InvalidArgumentError(absl::StrCat("--duration must lie in (0, ", kMostSeconds, "] seconds"));
  if (valid.ok() && !(timeout > 0 && timeout <= kMostSeconds))
    valid = absl::InvalidArgumentError(absl::StrCat("--timeout must lie in (0, ", kMostSeconds, "] seconds"));
  if (!valid.ok()) {
    std::fprintf(stderr, "attribution-bench: %s\n", valid.ToString().c_str());
    return 2;
  }
  std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    auto models = (*client)->ListModels();
    if (!models.ok() || models->empty()) {
      std::fprintf(stderr, "attribution-bench: cannot list models: %s\n", models.status().ToString().c_str());
      return 1;
    }
    model = models->front().name;
  }
  const absl::Duration duration = absl::Seconds(seconds);
  if (background->mix.empty()) {
    const nlohmann::json load = RunLoad(**client, model, foreground, duration);
    if (absl::GetFlag(FLAGS_json))
      std::cout << load.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    else
      PrintTable("load", load);
    return ExitCode({&load});
  }
  const nlohmann::json report = RunIsolation(**client, model, foreground, *background, duration);
  const int exit_code = ExitCode({&report["foreground_alone"], &report["background_alone"],
                                  &report["foreground_loaded"], &report["background_loaded"]});
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return exit_code;
  }
  for (const char* phase : {"foreground_alone", "background_alone", "foreground_loaded", "background_loaded"}) {
    PrintTable(phase, report[phase]);
  }
  std::cout << "foreground p99 loaded / alone: "
            << report["foreground_p99_loaded_over_alone"].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
            << "\nbackground throughput loaded / alone: "
            << report["background_throughput_loaded_over_alone"].dump(-1, ' ', false,
                                                                      nlohmann::json::error_handler_t::replace)
            << "\n";
  return exit_code;
}

}  // namespace
}  // namespace attribution::client

int main(int argc, char** argv) {
  attribution::client::PrepareStandardOutput();
  // abseil's --help lists the flags of files named after the program (attribution-server.cc and
  // the like) and finds none; ours are defined in this file.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "client/bench_main.cc") || attribution::client::DefinesConnectionFlags(file);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return attribution::VersionString("attribution-bench"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Load generator for the attribution server.\n"
      "  attribution-bench --server localhost:50051 --concurrency 16 --duration 30\n"
      "  attribution-bench --rate 20 --mix attribute=1,logprobs=8 --json\n"
      "  attribution-bench --rate 20 --mix logprobs=1 --background 'attribute n_steps=512 concurrency=2'");
  // abseil exits 1 on an unknown flag or a value that does not parse; a usage error is 2, as in the other tools.
  const attribution::client::CommandLine line =
      attribution::client::ScanCommandLine(argc, argv, usage.contains_help_flags);
  if (!line.error.empty()) {
    std::fprintf(stderr, "attribution-bench: %s\n", line.error.c_str());
    return 2;
  }
  if (const std::vector<char*> rest = absl::ParseCommandLine(argc, argv); rest.size() > 1) {
    std::fprintf(stderr, "attribution-bench: unexpected argument \"%s\" (flags are --name=value)\n", rest[1]);
    return 2;
  }
  return attribution::client::FinishStandardOutput("attribution-bench", attribution::client::Run());
}
