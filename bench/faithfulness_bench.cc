// SPDX-License-Identifier: Apache-2.0
// How faithful each attribution method is on the default model's held-out questions, whose decisive
// words are known by construction (tools/default_model_tasks.py): top-1 and top-k hits of the decisive
// tokens, ERASER comprehensiveness / sufficiency AOPC and the deletion / insertion curves (through the
// engine's faithfulness rows), against a random-attribution baseline; integrated gradients'
// convergence delta; time per explanation. Every request is what a user of the API sends with its
// defaults (an AttributeRequest converted by the server's own conversion): the prompt's special tokens
// fixed, baseline token id 0, the answer as the prompt's continuation (" Yes" / " No"); only the
// method and its step / sample counts are set. Questions: bench/heldout_questions.h.
//
//   faithfulness_bench [--model=models/tiny-qa-llama] [--questions=MODEL/heldout.jsonl] [--limit=0]
//                      [--methods=all] [--json=out.json] [--include_special_tokens=false]
// Prints a table per task and overall; --json writes every number, and bench/plot_faithfulness.py
// draws the deletion curves from it.
#include <ATen/ATen.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/heldout_questions.h"
#include "engine/attribution/attributor.h"
#include "engine/attribution/faithfulness.h"
#include "server/conversion.h"

namespace attribution {
namespace {

using namespace bench;
using namespace engine;

struct Outcome {
  std::vector<double> attribution;
  Faithfulness faithfulness;
  std::optional<double> convergence_delta;
};

// Runs `start(i, done)` for every question with at most `window` in flight; returns the wall seconds.
double RunAll(size_t count, size_t window, const std::function<void(size_t, std::function<void()>)>& start) {
  std::mutex mu;
  std::condition_variable cv;
  size_t in_flight = 0, finished = 0;
  const absl::Time begin = absl::Now();
  for (size_t i = 0; i < count; ++i) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight < window; });
      ++in_flight;
    }
    start(i, [&] {
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
      ++finished;
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return finished == count; });
  return absl::ToDoubleSeconds(absl::Now() - begin);
}

struct Summary {
  double top1 = 0, topk = 0, comprehensiveness = 0, sufficiency = 0;
  std::vector<double> deletion, insertion;  // mean curves
  int64_t count = 0;
};

Summary Summarize(const std::vector<HeldOutQuestion>& questions, const std::vector<Outcome>& outcomes,
                  const std::string& task) {
  Summary s;
  for (size_t i = 0; i < questions.size(); ++i) {
    if (!task.empty() && questions[i].task != task) continue;
    const DecisiveHits hits = RankDecisive(outcomes[i].attribution, questions[i].decisive);
    s.top1 += hits.top1;
    s.topk += hits.topk;
    const Faithfulness& f = outcomes[i].faithfulness;
    s.comprehensiveness += f.comprehensiveness_aopc;
    s.sufficiency += f.sufficiency_aopc;
    s.deletion.resize(f.deletion.size() + 1);
    s.insertion.resize(f.insertion.size() + 1);
    s.deletion[0] += f.full;  // the curves start at 0% removed / kept
    s.insertion[0] += f.empty;
    for (size_t p = 0; p < f.deletion.size(); ++p) {
      s.deletion[p + 1] += f.deletion[p];
      s.insertion[p + 1] += f.insertion[p];
    }
    ++s.count;
  }
  const double n = static_cast<double>(std::max<int64_t>(s.count, 1));
  for (double* v : {&s.top1, &s.topk, &s.comprehensiveness, &s.sufficiency}) *v /= n;
  for (double& v : s.deletion) v /= n;
  for (double& v : s.insertion) v /= n;
  return s;
}

[[noreturn]] void Die(const std::string& what, size_t question, const absl::Status& status) {
  std::cerr << what << ", question " << question << ": " << status << "\n";
  std::exit(1);
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

// The request a user sends for `question` with the API's defaults and `method`, as the server converts it;
// `decisive` gets the features that hold the question's decisive words. `include_special_tokens`: the
// one non-default setting the benchmark offers, to measure what making <s> a feature costs.
server::AttributeCall ApiCall(const HeldOutQuestion& question, server::v1::Method method, int64_t n_samples,
                              uint64_t seed, bool include_special_tokens, const server::ServedModel& served,
                              std::vector<int64_t>* decisive) {
  server::v1::AttributeRequest proto;
  proto.set_include_special_tokens(include_special_tokens);
  proto.mutable_prompt()->set_text(question.prompt);
  proto.mutable_target()->set_text(absl::StrCat(" ", question.answer));
  proto.set_method(method);
  proto.set_n_steps(32);
  proto.set_n_samples(n_samples);
  proto.set_seed(seed);
  proto.set_want_faithfulness(true);
  absl::StatusOr<server::AttributeCall> call = server::ToAttributeCall(proto, served, absl::InfiniteFuture());
  if (!call.ok()) {
    std::cerr << "converting \"" << question.prompt << "\": " << call.status() << "\n";
    std::exit(1);
  }
  if (decisive != nullptr) *decisive = DecisiveFeatures(question, call->request.features, call->prompt.encoding.spans);
  return std::move(*call);
}

int Main(int argc, char** argv) {
  if (std::optional<int> exit =
          bench::CheckFlags(argc, argv, {"include_special_tokens", "json", "limit", "methods", "model", "questions"}))
    return *exit;
  const std::string dir = Flag(argc, argv, "model", std::string(ATTRIBUTION_SOURCE_DIR) + "/models/tiny-qa-llama");
  auto loaded = CausalLM::Load(dir, {});
  auto tokenizer = Tokenizer::Load(dir);
  if (!loaded.ok() || !tokenizer.ok()) {
    std::cerr << (loaded.ok() ? tokenizer.status() : loaded.status()) << "\n";
    return 1;
  }
  std::shared_ptr<const CausalLM> model = std::move(*loaded);
  auto questions = ReadHeldOutQuestions(Flag(argc, argv, "questions", dir + "/heldout.jsonl"), **tokenizer,
                                        std::stoul(Flag(argc, argv, "limit", "0")));
  if (!questions.ok()) {
    std::cerr << questions.status() << "\n";
    return 1;
  }
  server::ServedModel served;
  served.spec.name = "default";
  served.model = model;
  served.tokenizer = std::move(*tokenizer);
  served.engine = *BatchingEngine::Create(MakeModelExecutor(model), {});
  BatchingEngine* engine = served.engine.get();
  Attributor attributor(model, engine);
  // The API's features of each question, and which of them hold the decisive words.
  const bool include_special_tokens = Flag(argc, argv, "include_special_tokens", "false") == "true";
  for (HeldOutQuestion& q : *questions) {
    q.request = ApiCall(q, server::v1::FEATURE_ABLATION, 0, 0, include_special_tokens, served, &q.decisive).request;
  }

  struct MethodRun {
    std::string name;
    server::v1::Method method;
    int64_t n_samples = 0;
  };
  std::vector<MethodRun> runs = {{"IntegratedGradients", server::v1::INTEGRATED_GRADIENTS},
                                 {"GradientShap", server::v1::GRADIENT_SHAP, 16},
                                 {"Saliency", server::v1::SALIENCY},
                                 {"InputXGradient", server::v1::INPUT_X_GRADIENT},
                                 {"AttnLRP", server::v1::ATTN_LRP},
                                 {"CP-LRP", server::v1::CP_LRP},
                                 {"FeatureAblation", server::v1::FEATURE_ABLATION},
                                 {"ShapleyValueSampling", server::v1::SHAPLEY_VALUE_SAMPLING, 8},
                                 {"Lime", server::v1::LIME, 64},
                                 {"KernelShap", server::v1::KERNEL_SHAP, 64}};
  const std::string wanted = Flag(argc, argv, "methods", "all");
  if (wanted != "all") {
    const std::vector<std::string> names = absl::StrSplit(wanted, ',');
    std::erase_if(runs,
                  [&](const MethodRun& r) { return std::find(names.begin(), names.end(), r.name) == names.end(); });
  }
  const size_t n = questions->size(), window = 32;
  nlohmann::json report = {{"model", dir}, {"questions", n}, {"methods", nlohmann::json::array()}};
  std::map<std::string, std::vector<Outcome>> outcomes;
  std::map<std::string, double> seconds;

  // The random baseline: a seeded random ranking of the same features, measured the same way.
  std::mt19937_64 rng(2026);
  std::vector<Outcome>& random = outcomes["Random"];
  random.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const AttributionRequest& request = (*questions)[i].request;
    const size_t features = request.features.empty() ? request.prompt_ids.size() : request.features.size();
    for (size_t f = 0; f < features; ++f) random[i].attribution.push_back(std::uniform_real_distribution<>()(rng));
  }
  seconds["Random"] =
      RunAll(n, window,
             [&](size_t i, std::function<void()> finished) {
               MeasureFaithfulness(*engine, engine->NewRequest(), (*questions)[i].request, random[i].attribution,
                                   [&, i, finished](absl::StatusOr<Faithfulness> f) {
                                     if (!f.ok()) Die("random baseline", i, f.status());
                                     random[i].faithfulness = std::move(*f);
                                     finished();
                                   });
             }) /
      static_cast<double>(n);

  for (const MethodRun& run : runs) {
    std::vector<Outcome>& out = outcomes[run.name];
    out.resize(n);
    seconds[run.name] = RunAll(n, window,
                               [&](size_t i, std::function<void()> finished) {
                                 AttributionRequest request = ApiCall((*questions)[i], run.method, run.n_samples, i,
                                                                      include_special_tokens, served, nullptr)
                                                                  .request;
                                 attributor.Attribute(engine->NewRequest(), std::move(request),
                                                      [&, i, finished](absl::StatusOr<AttributionResult> r) {
                                                        if (!r.ok()) Die(run.name, i, r.status());
                                                        out[i] = {.attribution = r->sequence,
                                                                  .faithfulness = *r->faithfulness,
                                                                  .convergence_delta = r->convergence_delta};
                                                        finished();
                                                      });
                               }) /
                        static_cast<double>(n);
  }

  std::printf(
      "settings: the API's defaults (special tokens %s, baseline token id 0, the answer as the prompt's "
      "continuation); IntegratedGradients 32 steps Gauss-Legendre; GradientShap 16 samples, stdev 0; "
      "ShapleyValueSampling 8, Lime 64, KernelShap 64 samples; seed = question index\n",
      include_special_tokens ? "made features (--include_special_tokens=true)" : "fixed");
  std::vector<std::string> order = {"Random"};
  for (const MethodRun& run : runs) order.push_back(run.name);
  std::vector<std::string> tasks = {""};
  for (const HeldOutQuestion& q : *questions) {
    if (std::find(tasks.begin(), tasks.end(), q.task) == tasks.end()) tasks.push_back(q.task);
  }
  for (const std::string& task : tasks) {
    std::printf("\n%s (%s)\n", task.empty() ? "all tasks" : task.c_str(),
                "top-1 / top-k: decisive tokens ranked first");
    std::printf("%-22s %7s %7s %9s %9s   %s\n", "method", "top-1", "top-k", "compr.", "suff.",
                "deletion curve p(target) at 0/1/5/10/20/50% removed");
    for (const std::string& name : order) {
      const Summary s = Summarize(*questions, outcomes[name], task);
      std::printf("%-22s %7.3f %7.3f %9.4f %9.4f  ", name.c_str(), s.top1, s.topk, s.comprehensiveness, s.sufficiency);
      for (double v : s.deletion) std::printf(" %.3f", v);
      std::printf("\n");
      report["methods"].push_back({{"method", name},
                                   {"task", task.empty() ? "all" : task},
                                   {"count", s.count},
                                   {"top1", s.top1},
                                   {"topk", s.topk},
                                   {"comprehensiveness_aopc", s.comprehensiveness},
                                   {"sufficiency_aopc", s.sufficiency},
                                   {"deletion", s.deletion},
                                   {"insertion", s.insertion},
                                   {"seconds_per_explanation", seconds[name]}});
    }
  }
  std::vector<double> deltas;
  for (const Outcome& o : outcomes["IntegratedGradients"]) {
    if (o.convergence_delta) deltas.push_back(std::abs(*o.convergence_delta));
  }
  std::printf(
      "\nIntegratedGradients (32 steps, Gauss-Legendre) |convergence delta|: p50 %.2g  p90 %.2g  p99 %.2g  max %.2g\n",
      Percentile(deltas, 0.5), Percentile(deltas, 0.9), Percentile(deltas, 0.99), Percentile(deltas, 1.0));
  report["ig_abs_convergence_delta"] = {{"p50", Percentile(deltas, 0.5)},
                                        {"p90", Percentile(deltas, 0.9)},
                                        {"p99", Percentile(deltas, 0.99)},
                                        {"max", Percentile(deltas, 1.0)}};
  std::printf("\nms per explanation (amortized, %zu in flight, faithfulness rows included):", window);
  for (const std::string& name : order) std::printf("  %s %.1f", name.c_str(), 1e3 * seconds[name]);
  std::printf("\n");
  if (const std::string path = Flag(argc, argv, "json", ""); !path.empty())
    std::ofstream(path) << report.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace attribution

int main(int argc, char** argv) { return attribution::Main(argc, argv); }
