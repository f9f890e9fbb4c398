// SPDX-License-Identifier: Apache-2.0
// Soak: the real server on the demo model under 64 concurrent clients sending a mix of every RPC
// (Attribute with eight methods, AttributeStream, Generate greedy and sampled, GenerateStream,
// Logprobs), a quarter of them cancelled by the client after a random delay and a fifth with a short
// random deadline, first for a warm-up, then for the measured run. Then it checks that
//   (a) sampled OK answers equal the same request answered alone on the quiet server (token ids and
//       texts exactly, floats within kRelativeTolerance),
//   (b) every other call ended CANCELLED, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (the server admits
//       fewer calls than there are clients), as the clients and the server's own metrics saw it,
//   (c) the engine's queue and the calls in flight return to 0,
//   (d) the server still serves, exits 0 on SIGTERM and logged no internal error,
//   (e) its resident memory once idle is within 5% of its value after the warm-up (not under ASan),
// and prints a table (calls per RPC, outcomes, latency, memory).
//
// ATTRIBUTION_SOAK_SECONDS sets the measured run (default 60: the CI version; the benchmark in
// bench/RESULTS.md runs 600), ATTRIBUTION_SOAK_WARMUP_SECONDS the warm-up (default 10),
// ATTRIBUTION_SOAK_CLIENTS the clients (default 64), ATTRIBUTION_SOAK_REPLAYS_PER_KIND the answers
// replayed per request kind (default 3; 13 kinds).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "attribution/v1/attribution.grpc.pb.h"
#include "engine/common/sanitizers.h"
#include "tests/testing/rpc_exchange.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using test_support::Call;
using test_support::CompareAnswers;
using test_support::Deviation;
using test_support::Exchange;
using test_support::MetricValue;
using test_support::Outcome;
using test_support::ProcessStatusMegabytes;
using test_support::Rpc;
using test_support::RpcName;
using test_support::ServerProcess;
using Stub = v1::AttributionService::Stub;

// Replayed floats agree within this, relative to the magnitude of the vector they belong to (its
// largest absolute value, at least 1). Batch mates change the shapes of the fp32 matmuls and with
// them the summation order, so bit equality is not expected; the largest deviation measured over a
// 10-minute run is in bench/RESULTS.md and is far below this.
constexpr double kRelativeTolerance = 1e-4;
// The server admits fewer calls than there are clients, so refusals (RESOURCE_EXHAUSTED) happen too.
constexpr int kMaxConcurrentRequests = 56;
// Resident memory after the run, once idle, may exceed its post-warm-up value by this fraction.
constexpr double kMemoryGrowthAllowed = 0.05;

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  int parsed = 0;
  return value != nullptr && absl::SimpleAtoi(value, &parsed) && parsed > 0 ? parsed : fallback;
}

const char* const kPrompts[] = {"Is it true that vaccines cause autism?",
                                "The capital of France is",
                                "Once upon a time there was a",
                                "Statement: the earth is flat. True or false? Answer:",
                                "Translate to French: good morning",
                                "The best way to learn a language is",
                                "Q: What is 12 times 7? A:",
                                "a b c d e f g h i j k l m n o p q r s t u v w x y z and so on until the end"};
const char* const kTargets[] = {" yes", " No", " Paris", " the", " 84"};

// Builds random requests of the mix; not thread-safe (one per client).
class RequestMix {
 public:
  explicit RequestMix(uint32_t seed) : rng_(seed) {}

  Exchange Next() {
    Exchange e;
    const int pick = Uniform(0, 99);
    if (pick < 35) {
      e.rpc = pick < 25 ? Rpc::kAttribute : Rpc::kAttributeStream;
      e.attribute_request = Attribution();
      e.kind = e.rpc == Rpc::kAttribute ? absl::StrCat("Attribute/", v1::Method_Name(e.attribute_request.method()))
                                        : "AttributeStream";
    } else if (pick < 65) {
      e.rpc = pick < 55 ? Rpc::kGenerate : Rpc::kGenerateStream;
      e.generate_request = Generation();
      const bool sampled = e.generate_request.generation().temperature() > 0;
      e.kind = e.rpc == Rpc::kGenerate ? (sampled ? "Generate/sampled" : "Generate/greedy") : "GenerateStream";
    } else {
      e.rpc = Rpc::kLogprobs;
      e.logprobs_request = Logprobs();
      e.kind = "Logprobs";
    }
    return e;
  }

  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  // Log-uniform in [lo, hi]: as many short delays as long ones.
  absl::Duration LogUniform(absl::Duration lo, absl::Duration hi) {
    const double x = std::uniform_real_distribution<double>(std::log(absl::ToDoubleMilliseconds(lo)),
                                                            std::log(absl::ToDoubleMilliseconds(hi)))(rng_);
    return absl::Milliseconds(std::exp(x));
  }

 private:
  const char* Prompt() { return kPrompts[Uniform(0, std::size(kPrompts) - 1)]; }
  const char* Target() { return kTargets[Uniform(0, std::size(kTargets) - 1)]; }

  v1::AttributeRequest Attribution() {
    v1::AttributeRequest r;
    r.set_model("demo");
    r.mutable_prompt()->set_text(Prompt());
    // One in five generates its target (greedy, a few tokens), as a user asking "why this answer?".
    if (Uniform(0, 4) == 0) {
      r.mutable_generation()->set_max_new_tokens(Uniform(1, 4));
    } else {
      r.mutable_target()->set_text(Target());
      r.set_target_tokenization(v1::SEPARATE);  // the targets need not continue every prompt's last word
    }
    r.set_want_token_matrix(Uniform(0, 3) == 0);
    r.set_seed(Uniform(1, 1000));
    const int which = Uniform(0, 9);
    if (which < 3) {  // integrated gradients, the main method, three times as often as the others
      r.set_method(v1::INTEGRATED_GRADIENTS);
      // Now and then a long one that fills batches for a while.
      r.set_n_steps(Uniform(0, 9) == 0 ? 256 : Uniform(4, 48));
      r.set_rule(static_cast<v1::IntegrationRule>(Uniform(1, 6)));  // every rule, FEJER2 (6) included
      r.set_baseline(Uniform(0, 1) == 0 ? v1::BASELINE_UNSPECIFIED : v1::UNK_TOKEN);
    } else if (which == 3) {
      r.set_method(v1::GRADIENT_SHAP);
      r.set_n_samples(Uniform(4, 16));
      r.set_stdev(0.1);
    } else if (which == 4) {
      r.set_method(v1::SALIENCY);
    } else if (which == 5) {
      r.set_method(v1::INPUT_X_GRADIENT);
    } else if (which == 6) {
      r.set_method(v1::FEATURE_ABLATION);
    } else if (which == 7) {
      r.set_method(v1::SHAPLEY_VALUE_SAMPLING);
      r.set_n_samples(Uniform(2, 6));
    } else {
      r.set_method(which == 8 ? v1::LIME : v1::KERNEL_SHAP);
      r.set_n_samples(Uniform(16, 48));
    }
    return r;
  }

  v1::GenerateRequest Generation() {
    v1::GenerateRequest r;
    r.set_model("demo");
    r.mutable_prompt()->set_text(Prompt());
    r.mutable_generation()->set_max_new_tokens(Uniform(1, 32));
    r.mutable_generation()->set_ignore_stop_tokens(Uniform(0, 1) == 0);
    if (Uniform(0, 3) == 0) {
      r.mutable_generation()->set_temperature(0.8);
      r.mutable_generation()->set_top_p(Uniform(0, 1) == 0 ? 0.9 : 0);
      r.mutable_generation()->set_seed(Uniform(1, 1000));
    }
    return r;
  }

  v1::LogprobsRequest Logprobs() {
    v1::LogprobsRequest r;
    r.set_model("demo");
    r.mutable_prompt()->set_text(Prompt());
    r.mutable_target()->set_text(Target());
    r.set_target_tokenization(v1::SEPARATE);
    r.set_top_k(Uniform(0, 5));
    return r;
  }

  std::mt19937 rng_;
};

// Cancels calls at their appointed times from one thread, as a client that gives up would.
// Thread-safe.
class Canceller {
 public:
  Canceller() : thread_([this] { Loop(); }) {}
  ~Canceller() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  // Cancels `context` at `when` unless Remove(id) came first; the caller calls Remove before the
  // context is destroyed.
  uint64_t Add(grpc::ClientContext* context, absl::Time when) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    due_.emplace(std::make_pair(when, id), context);
    changed_.notify_all();
    return id;
  }
  void Remove(uint64_t id, absl::Time when) {
    std::lock_guard<std::mutex> lock(mu_);
    due_.erase({when, id});
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      if (due_.empty()) {
        changed_.wait(lock, [&] { return stopping_ || !due_.empty(); });
        continue;
      }
      const auto next = due_.begin()->first;
      if (absl::Now() < next.first) {
        changed_.wait_until(lock, absl::ToChronoTime(next.first),
                            [&] { return stopping_ || due_.empty() || due_.begin()->first != next; });
        continue;
      }
      // Under the lock, so that the owner cannot destroy the context meanwhile; TryCancel only marks
      // the call.
      due_.begin()->second->TryCancel();
      due_.erase(due_.begin());
    }
  }

  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::pair<absl::Time, uint64_t>, grpc::ClientContext*> due_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Outcomes of one phase, per RPC, and a sample of its OK answers per request kind. Thread-safe.
class Ledger {
 public:
  explicit Ledger(int sample_per_kind) : sample_per_kind_(sample_per_kind) {}

  void Record(Exchange exchange, const Outcome& outcome, double seconds, std::mt19937& rng) {
    std::lock_guard<std::mutex> lock(mu_);
    PerRpc& rpc = rpcs_[exchange.rpc];
    const grpc::StatusCode code = outcome.status.error_code();
    rpc.codes[code] += 1;
    (code == grpc::StatusCode::OK ? rpc.ok_seconds : rpc.other_seconds).push_back(seconds);
    if (!outcome.protocol_error.empty()) {
      protocol_errors_.push_back(absl::StrCat(exchange.kind, ": ", outcome.protocol_error));
    }
    if (code != grpc::StatusCode::OK && code != grpc::StatusCode::CANCELLED &&
        code != grpc::StatusCode::DEADLINE_EXCEEDED && code != grpc::StatusCode::RESOURCE_EXHAUSTED) {
      unexpected_.insert(absl::StrCat(exchange.kind, ": code ", code, ": ", outcome.status.error_message()));
    }
    if (code != grpc::StatusCode::OK || !outcome.protocol_error.empty()) return;
    // Reservoir sampling per kind: every OK answer has the same chance to be replayed.
    Reservoir& reservoir = sample_[exchange.kind];
    ++reservoir.seen;
    if (static_cast<int>(reservoir.kept.size()) < sample_per_kind_) {
      reservoir.kept.push_back(std::move(exchange));
    } else if (const int64_t slot = std::uniform_int_distribution<int64_t>(0, reservoir.seen - 1)(rng);
               slot < sample_per_kind_) {
      reservoir.kept[slot] = std::move(exchange);
    }
  }

  std::vector<std::string> Unexpected() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {unexpected_.begin(), unexpected_.end()};
  }
  std::vector<std::string> ProtocolErrors() const {
    std::lock_guard<std::mutex> lock(mu_);
    return protocol_errors_;
  }
  std::vector<Exchange> TakeSample() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Exchange> out;
    for (auto& [kind, reservoir] : sample_) {
      for (Exchange& e : reservoir.kept) out.push_back(std::move(e));
    }
    sample_.clear();
    return out;
  }
  // Calls per RPC, outcome counts, OK latency percentiles.
  std::string Table(double seconds) const;
  int64_t Calls(grpc::StatusCode code) const {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t n = 0;
    for (const auto& [rpc, per] : rpcs_) n += per.codes.count(code) ? per.codes.at(code) : 0;
    return n;
  }

 private:
  struct PerRpc {
    std::map<grpc::StatusCode, int64_t> codes;
    std::vector<double> ok_seconds, other_seconds;
  };
  struct Reservoir {
    int64_t seen = 0;
    std::vector<Exchange> kept;
  };
  const int sample_per_kind_;
  mutable std::mutex mu_;
  std::map<Rpc, PerRpc> rpcs_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> unexpected_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> protocol_errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Reservoir> sample_ ABSL_GUARDED_BY(mu_);
};

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(q * values.size()))];
}

std::string Ledger::Table(double seconds) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = absl::StrFormat("| %-15s | %6s | %6s | %9s | %8s | %9s | %5s | %7s | %8s | %8s |\n", "RPC", "calls",
                                    "OK", "CANCELLED", "DEADLINE", "EXHAUSTED", "other", "calls/s", "OK p50", "OK p99");
  absl::StrAppend(&out,
                  "|-----------------|--------|--------|-----------|----------|-----------|-------|---------|"
                  "----------|----------|\n");
  PerRpc all;
  auto row = [&](const std::string& name, const PerRpc& per) {
    auto count = [&](grpc::StatusCode c) { return per.codes.count(c) ? per.codes.at(c) : 0; };
    int64_t calls = 0;
    for (const auto& [code, n] : per.codes) calls += n;
    const int64_t known = count(grpc::StatusCode::OK) + count(grpc::StatusCode::CANCELLED) +
                          count(grpc::StatusCode::DEADLINE_EXCEEDED) + count(grpc::StatusCode::RESOURCE_EXHAUSTED);
    absl::StrAppendFormat(&out, "| %-15s | %6d | %6d | %9d | %8d | %9d | %5d | %7.1f | %6.0fms | %6.0fms |\n", name,
                          calls, count(grpc::StatusCode::OK), count(grpc::StatusCode::CANCELLED),
                          count(grpc::StatusCode::DEADLINE_EXCEEDED), count(grpc::StatusCode::RESOURCE_EXHAUSTED),
                          calls - known, calls / seconds, 1000 * Percentile(per.ok_seconds, 0.5),
                          1000 * Percentile(per.ok_seconds, 0.99));
  };
  for (const auto& [rpc, per] : rpcs_) {
    row(RpcName(rpc), per);
    for (const auto& [code, n] : per.codes) all.codes[code] += n;
    all.ok_seconds.insert(all.ok_seconds.end(), per.ok_seconds.begin(), per.ok_seconds.end());
  }
  row("all", all);
  return out;
}

// Replays `soak` alone (no deadline, nothing else running) and compares the answers.
std::vector<std::string> Replay(Stub& stub, const Exchange& soak, Deviation* deviation) {
  Exchange alone = soak;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  const Outcome outcome = Call(stub, context, alone);
  if (!outcome.status.ok()) {
    return {absl::StrCat(soak.kind, ": the replay failed: ", outcome.status.error_message())};
  }
  return CompareAnswers(soak, alone, kRelativeTolerance, deviation);
}

// How one client ends a call: waits for the answer, gives up after a delay, or sets a short deadline.
struct Fate {
  absl::Duration deadline = absl::Seconds(30);
  std::optional<absl::Duration> cancel_after;
};

Fate RandomFate(RequestMix& mix) {
  Fate fate;
  const int pick = mix.Uniform(0, 99);
  if (pick < 25) {
    fate.cancel_after = mix.LogUniform(absl::Milliseconds(1), absl::Seconds(2));
  } else if (pick < 45) {
    fate.deadline = mix.LogUniform(absl::Milliseconds(5), absl::Seconds(3));
  }
  return fate;
}

// Runs `clients` clients, each on its own connection, for `duration`.
void RunPhase(const std::vector<std::unique_ptr<Stub>>& stubs, absl::Duration duration, uint32_t seed,
              Canceller& canceller, Ledger& ledger) {
  const absl::Time end = absl::Now() + duration;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stubs.size(); ++i) {
    threads.emplace_back([&, i] {
      RequestMix mix(seed * 1000 + static_cast<uint32_t>(i));
      std::mt19937 sampler(seed + static_cast<uint32_t>(i));
      while (absl::Now() < end) {
        Exchange exchange = mix.Next();
        const Fate fate = RandomFate(mix);
        grpc::ClientContext context;
        const absl::Time start = absl::Now();
        context.set_deadline(absl::ToChronoTime(start + fate.deadline));
        const absl::Time cancel_at = start + fate.cancel_after.value_or(absl::ZeroDuration());
        const uint64_t cancel = fate.cancel_after ? canceller.Add(&context, cancel_at) : 0;
        const Outcome outcome = Call(*stubs[i], context, exchange);
        const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
        if (cancel != 0) canceller.Remove(cancel, cancel_at);
        const bool refused = outcome.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
        ledger.Record(std::move(exchange), outcome, seconds, sampler);
        // A refused client backs off a little before its next call, as a client library would.
        if (refused)
          std::this_thread::sleep_for(absl::ToChronoMilliseconds(
              mix.LogUniform(absl::Milliseconds(100), absl::Seconds(1))));  // client behaviour, not synchronisation
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

// Waits until the server's resident memory has settled (the engine trims its heap a few times once
// idle); returns it in MB.
double SettledResidentMegabytes(pid_t pid) {
  double previous = ProcessStatusMegabytes(pid, "VmRSS");
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // polling another process's memory
    const double now = ProcessStatusMegabytes(pid, "VmRSS");
    if (std::fabs(now - previous) < 0.002 * previous) return now;
    previous = now;
  }
  return previous;
}

// Server-side codes per RPC from /metrics, as "Method CODE" -> count.
std::map<std::string, double> ServerCodes(int metrics_port) {
  std::map<std::string, double> codes;
  absl::StatusOr<std::string> metrics = test_support::HttpGet(metrics_port, "/metrics");
  if (!metrics.ok()) return codes;
  const std::string prefix = "attribution_rpcs_total{code=\"";
  for (size_t at = metrics->find(prefix); at != std::string::npos; at = metrics->find(prefix, at + 1)) {
    const size_t code_end = metrics->find('"', at + prefix.size());
    const size_t method = metrics->find("method=\"", code_end) + 8;
    const size_t method_end = metrics->find('"', method);
    const size_t value = metrics->find("} ", method_end) + 2;
    codes[absl::StrCat(metrics->substr(method, method_end - method), " ",
                       metrics->substr(at + prefix.size(), code_end - at - prefix.size()))] +=
        std::stod(metrics->substr(value, metrics->find('\n', value) - value));
  }
  return codes;
}

TEST(Soak, MixedClientsWithCancellationsAndDeadlinesLeaveTheServerAsTheyFoundIt) {
  const absl::Duration duration = absl::Seconds(EnvInt("ATTRIBUTION_SOAK_SECONDS", 60));
  const absl::Duration warm_up = absl::Seconds(EnvInt("ATTRIBUTION_SOAK_WARMUP_SECONDS", 10));
  const int clients = EnvInt("ATTRIBUTION_SOAK_CLIENTS", 64);
  const int replays_per_kind = EnvInt("ATTRIBUTION_SOAK_REPLAYS_PER_KIND", 3);

  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(),
                                      absl::StrCat("--max_concurrent_requests=", kMaxConcurrentRequests)});
  ASSERT_THAT(server, IsOk());
  const pid_t pid = (*server)->pid();
  const int metrics_port = (*server)->metrics_port();
  std::vector<std::unique_ptr<Stub>> stubs;
  for (int i = 0; i < clients; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("attribution.soak_client", i);  // a channel (and connection) of its own
    auto channel = grpc::CreateCustomChannel((*server)->address(), grpc::InsecureChannelCredentials(), args);
    // Connected before the load starts: 64 handshakes at once on a loaded 2-core machine can outlast a
    // channel's first connect attempt, and its calls would then fail UNAVAILABLE before reaching the server.
    ASSERT_TRUE(channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(60)))) << "client " << i;
    stubs.push_back(v1::AttributionService::NewStub(channel));
  }
  Canceller canceller;

  Ledger warm_ledger(0);
  RunPhase(stubs, warm_up, /*seed=*/1, canceller, warm_ledger);
  ASSERT_TRUE(test_support::WaitForIdle(metrics_port, "demo", absl::Seconds(60)));
  const double rss_warm = SettledResidentMegabytes(pid);

  Ledger ledger(replays_per_kind);
  const absl::Time started = absl::Now();
  RunPhase(stubs, duration, /*seed=*/2, canceller, ledger);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - started);
  const double rss_peak = ProcessStatusMegabytes(pid, "VmHWM");

  // (c) The queue and the calls in flight return to 0.
  const bool idle = test_support::WaitForIdle(metrics_port, "demo", absl::Seconds(60));
  EXPECT_TRUE(idle) << "queued rows " << MetricValue(metrics_port, "attribution_engine_queued_rows{model=\"demo\"}")
                    << ", calls in flight " << MetricValue(metrics_port, "attribution_rpcs_in_flight");
  EXPECT_EQ(MetricValue(metrics_port, "attribution_engine_queued_bytes{model=\"demo\"}"), 0);
  // (e) Memory, before the replays add their own.
  const double rss_after = SettledResidentMegabytes(pid);

  // (b) Every call ended OK, CANCELLED, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED: as the clients saw it
  // (a client's own cancel could hide what the server answered), then as the server counted it.
  for (const Ledger* l : {&warm_ledger, &ledger}) {
    EXPECT_TRUE(l->Unexpected().empty()) << absl::StrJoin(l->Unexpected(), "\n");
    EXPECT_TRUE(l->ProtocolErrors().empty()) << absl::StrJoin(l->ProtocolErrors(), "\n");
  }
  const std::set<std::string> allowed = {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"};
  std::vector<std::string> server_unexpected;
  for (const auto& [method_code, n] : ServerCodes(metrics_port)) {
    if (!allowed.count(method_code.substr(method_code.find(' ') + 1))) {
      server_unexpected.push_back(absl::StrCat(method_code, ": ", n));
    }
  }
  EXPECT_TRUE(server_unexpected.empty()) << absl::StrJoin(server_unexpected, "\n");
  EXPECT_GT(ledger.Calls(grpc::StatusCode::OK), 0);

  // (a) Sampled OK answers equal the same requests answered alone.
  std::vector<Exchange> sample = ledger.TakeSample();
  Deviation deviation;
  std::vector<std::string> diffs;
  for (const Exchange& e : sample) {
    std::vector<std::string> d = Replay(*stubs[0], e, &deviation);
    diffs.insert(diffs.end(), d.begin(), d.end());
  }
  EXPECT_TRUE(diffs.empty()) << absl::StrJoin(diffs, "\n");

  // (d) Still serving, and a clean exit.
  v1::ListModelsResponse models;
  grpc::ClientContext context;
  EXPECT_TRUE(stubs[0]->ListModels(&context, {}, &models).ok());

  std::cout
      << "[ soak     ] " << clients << " clients, warm-up " << absl::FormatDuration(warm_up) << ", run "
      << absl::StrFormat("%.1fs", seconds) << " (max_concurrent_requests " << kMaxConcurrentRequests << ")\n"
      << ledger.Table(seconds)
      << absl::StrFormat(
             "[ soak     ] replayed %d OK answers alone: %d differences; largest float deviation "
             "%.3g (tolerance %.0e) at %s\n",
             sample.size(), diffs.size(), deviation.worst, kRelativeTolerance, deviation.where)
      << absl::StrFormat(
             "[ soak     ] server RSS: after warm-up %.1f MB, peak %.1f MB, idle after the run %.1f MB (%+.1f%%)\n",
             rss_warm, rss_peak, rss_after, 100 * (rss_after / rss_warm - 1));
  if (kAddressSanitizer) {  // scripts/test-asan runs this test against the ASan build of the server
    std::cout << "[ soak     ] memory growth not checked: AddressSanitizer's quarantine holds freed memory\n";
  } else {
    EXPECT_LE(rss_after, (1 + kMemoryGrowthAllowed) * rss_warm);
  }

  (*server)->Signal(SIGTERM);
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0) << (*server)->Log();
  // A call ended twice is dropped by the reactor, with this line, rather than corrupting the heap.
  EXPECT_EQ((*server)->Log().find("internal_error"), std::string::npos) << (*server)->Log();
}

}  // namespace
}  // namespace attribution
