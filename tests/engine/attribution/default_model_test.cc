// SPDX-License-Identifier: Apache-2.0
// The committed default model (models/tiny-qa-llama) through our engine: it knows its tasks, its
// probabilities and faithfulness curves match transformers (tools/default_model_reference.py), and
// attribution methods find the words that decide each answer far more often than chance.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "bench/heldout_questions.h"
#include "engine/attribution/attributor.h"
#include "engine/attribution/faithfulness.h"
#include "tests/testing/notification.h"
#include "tests/testing/row_collector.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using bench::HeldOutQuestion;

class DefaultModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::move(*CausalLM::Load(ATTRIBUTION_DEFAULT_MODEL_DIR, {}));
    tokenizer_ = std::move(*Tokenizer::Load(ATTRIBUTION_DEFAULT_MODEL_DIR)).release();
    engine_ = std::move(*BatchingEngine::Create(MakeModelExecutor(model_), {}));
    attributor_ = new Attributor(model_, engine_.get());
    questions_ = new std::vector<HeldOutQuestion>(
        *bench::ReadHeldOutQuestions(std::string(ATTRIBUTION_DEFAULT_MODEL_DIR) + "/heldout.jsonl", *tokenizer_, 0));
    std::ifstream in(ATTRIBUTION_DEFAULT_MODEL_REFERENCE);
    reference_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete attributor_;
    delete questions_;
    delete reference_;
    delete tokenizer_;
    engine_.reset();
    model_.reset();
  }

  static Faithfulness Measure(const AttributionRequest& request, const std::vector<double>& attribution) {
    test_support::Notification done;
    absl::StatusOr<Faithfulness> out;
    MeasureFaithfulness(*engine_, engine_->NewRequest(), request, attribution, [&](absl::StatusOr<Faithfulness> f) {
      out = std::move(f);
      done.Notify();
    });
    done.WaitForNotification();
    EXPECT_THAT(out, IsOk());
    return out.ok() ? *out : Faithfulness{};
  }

  static inline std::shared_ptr<const CausalLM> model_;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::unique_ptr<BatchingEngine> engine_;
  static inline Attributor* attributor_ = nullptr;
  static inline std::vector<HeldOutQuestion>* questions_ = nullptr;
  static inline nlohmann::json* reference_ = nullptr;
};

TEST_F(DefaultModelTest, AnswersHeldOutQuestionsThroughTheEngine) {
  const int64_t yes = *tokenizer_->Encode("Yes", false)->ids.begin(),
                no = *tokenizer_->Encode("No", false)->ids.begin();
  std::vector<Row> rows;
  for (const HeldOutQuestion& q : *questions_) {
    const int64_t last = static_cast<int64_t>(q.request.prompt_ids.size()) - 1;
    for (int64_t answer : {yes, no}) {
      rows.push_back(Row{.kind = RowKind::kScore,
                         .input_ids = q.request.prompt_ids,
                         .objective = {.positions = {last}, .tokens = {answer}, .weights = {1.0}}});
    }
  }
  test_support::RowCollector results(rows.size());
  ASSERT_THAT(engine_->Submit(engine_->NewRequest(), std::move(rows), results.Callback()), IsOk());
  results.Wait();
  std::map<std::string, std::pair<int, int>> correct;  // task -> (right, asked)
  for (size_t i = 0; i < questions_->size(); ++i) {
    const HeldOutQuestion& q = (*questions_)[i];
    const bool said_yes = results.result(2 * i).value > results.result(2 * i + 1).value;
    correct[q.task].first += said_yes == (q.request.target_ids[0] == yes);
    ++correct[q.task].second;
  }
  ASSERT_EQ(correct.size(), 3u);
  for (const auto& [task, counts] : correct) {
    EXPECT_GE(counts.second, 150) << task;
    const double accuracy = static_cast<double>(counts.first) / counts.second;
    EXPECT_GE(accuracy, 0.95) << task;
    // The same model in transformers answers the same (tools/default_model_reference.py).
    EXPECT_NEAR(accuracy, (*reference_)["accuracy"][task].get<double>(), 0.005) << task;
  }
}

TEST_F(DefaultModelTest, FaithfulnessCurvesMatchTransformers) {
  for (const auto& q : (*reference_)["questions"]) {
    AttributionRequest request;
    request.prompt_ids = q["prompt_ids"].get<std::vector<int64_t>>();
    request.target_ids = q["target_ids"].get<std::vector<int64_t>>();
    std::vector<double> attribution;
    for (size_t t = 1; t < request.prompt_ids.size(); ++t) {
      const auto position = static_cast<int64_t>(t);
      request.features.push_back({.begin = position, .end = position + 1});
      attribution.push_back(std::sin(1.7 * static_cast<double>(t - 1) + 0.3));  // the reference's rule
    }
    const Faithfulness f = Measure(request, attribution);
    const std::string label = q["prompt"];
    EXPECT_NEAR(f.full, q["full"].get<double>(), 1e-4) << label;
    EXPECT_NEAR(f.empty, q["empty"].get<double>(), 1e-4) << label;
    EXPECT_EQ(f.features_at, q["features_at"].get<std::vector<int64_t>>()) << label;
    ASSERT_EQ(f.deletion.size(), 5u);
    for (size_t p = 0; p < 5; ++p) {
      EXPECT_NEAR(f.deletion[p], q["deletion"][p].get<double>(), 1e-4) << label << " point " << p;
      EXPECT_NEAR(f.insertion[p], q["insertion"][p].get<double>(), 1e-4) << label << " point " << p;
    }
    EXPECT_NEAR(f.comprehensiveness_aopc, q["comprehensiveness_aopc"].get<double>(), 1e-4) << label;
    EXPECT_NEAR(f.sufficiency_aopc, q["sufficiency_aopc"].get<double>(), 1e-4) << label;
  }
}

// Top-1 hit rates of the decisive words over the first 40 questions of each task.
TEST_F(DefaultModelTest, IntegratedGradientsAndFeatureAblationFindTheDecisiveWords) {
  std::map<std::string, std::map<std::string, double>> top1;  // method -> task -> rate
  std::mt19937_64 rng(7);
  std::map<std::string, int> taken;
  for (const HeldOutQuestion& q : *questions_) {
    if (taken[q.task]++ >= 40) continue;
    for (AttributionMethod method : {AttributionMethod::kIntegratedGradients, AttributionMethod::kFeatureAblation}) {
      AttributionRequest request = q.request;
      request.method = method;
      request.n_steps = 32;
      absl::StatusOr<AttributionResult> result = attributor_->AttributeAndWait(request);
      ASSERT_THAT(result, IsOk());
      top1[AttributionMethodName(method)][q.task] += bench::RankDecisive(result->sequence, q.decisive).top1 / 40.0;
    }
    std::vector<double> random(q.request.features.size());
    for (double& v : random) v = std::uniform_real_distribution<>()(rng);
    top1["random"][q.task] += bench::RankDecisive(random, q.decisive).top1 / 40.0;
  }
  const auto& fa = top1[AttributionMethodName(AttributionMethod::kFeatureAblation)];
  const auto& ig = top1[AttributionMethodName(AttributionMethod::kIntegratedGradients)];
  for (const std::string task : {"warmth", "size_match", "distractor"}) {
    SCOPED_TRACE(task);
    EXPECT_GE(fa.at(task), 0.9);  // one ablated word flips a yes/no answer
    EXPECT_GE(ig.at(task), top1["random"].at(task) + 0.3);
    EXPECT_GE(fa.at(task), top1["random"].at(task) + 0.5);
  }
}

// AttnLRP and CP-LRP (one grad row each) find the decisive words, and the int8 and nf4 versions of the
// model rank the same word first on at least 95% of the held-out questions.
TEST_F(DefaultModelTest, LrpFindsTheDecisiveWordsAndQuantizedModelsRankAlike) {
  std::vector<std::shared_ptr<const CausalLM>> models = {model_};
  for (Quantization q : {Quantization::kInt8, Quantization::kNf4}) {
    absl::StatusOr<std::unique_ptr<CausalLM>> loaded =
        CausalLM::Load(ATTRIBUTION_DEFAULT_MODEL_DIR, {.quantization = q});
    ASSERT_THAT(loaded, IsOk());
    models.push_back(std::move(*loaded));
  }
  // Every question's sequence attribution by `model`, the questions in flight together so rows batch.
  const auto attribute_all = [&](const std::shared_ptr<const CausalLM>& model, AttributionMethod method) {
    std::unique_ptr<BatchingEngine> engine = std::move(*BatchingEngine::Create(MakeModelExecutor(model), {}));
    Attributor attributor(model, engine.get());
    std::vector<std::vector<double>> sequences(questions_->size());
    std::vector<std::thread> callers;
    for (size_t first = 0; first < 16; ++first) {
      callers.emplace_back([&, first] {
        for (size_t i = first; i < questions_->size(); i += 16) {
          AttributionRequest request = (*questions_)[i].request;
          request.method = method;
          absl::StatusOr<AttributionResult> result = attributor.AttributeAndWait(request);
          EXPECT_THAT(result, IsOk());
          if (result.ok()) sequences[i] = result->sequence;
        }
      });
    }
    for (std::thread& caller : callers) caller.join();
    return sequences;
  };
  const auto top = [](const std::vector<double>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
  for (AttributionMethod method : {AttributionMethod::kAttnLrp, AttributionMethod::kCpLrp}) {
    SCOPED_TRACE(AttributionMethodName(method));
    std::vector<std::vector<std::vector<double>>> by_model;
    for (const auto& model : models) by_model.push_back(attribute_all(model, method));
    std::map<std::string, std::pair<double, int>> hits;  // task -> (top-1 hits, questions)
    for (size_t i = 0; i < questions_->size(); ++i) {
      const HeldOutQuestion& q = (*questions_)[i];
      hits[q.task].first += bench::RankDecisive(by_model[0][i], q.decisive).top1;
      ++hits[q.task].second;
    }
    for (const auto& [task, counts] : hits) {
      std::cout << AttributionMethodName(method) << " " << task << ": top-1 " << counts.first / counts.second << "\n";
      EXPECT_GE(counts.first / counts.second, 0.9) << task;
    }
    for (size_t m = 1; m < models.size(); ++m) {
      int same = 0;
      for (size_t i = 0; i < questions_->size(); ++i) same += top(by_model[m][i]) == top(by_model[0][i]);
      const double agreement = static_cast<double>(same) / static_cast<double>(questions_->size());
      std::cout << AttributionMethodName(method) << " " << (m == 1 ? "int8" : "nf4") << ": same top-1 as float32 on "
                << agreement << " of " << questions_->size() << " questions\n";
      EXPECT_GE(agreement, 0.95) << (m == 1 ? "int8" : "nf4");
    }
  }
}

}  // namespace
}  // namespace attribution::engine
