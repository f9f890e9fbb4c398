// SPDX-License-Identifier: Apache-2.0
// Attribution methods through the batching engine against Captum (tools/captum_reference.py, same
// random llama weights), plus the axioms that hold whatever the model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "engine/attribution/attributor.h"
#include "engine/attribution/faithfulness.h"
#include "engine/attribution/methods.h"
#include "engine/attribution/surrogate_models.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TestModelsDir;
using ::testing::HasSubstr;

class AttributionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::move(*CausalLM::Load(TestModelsDir() + "/llama", {}));
    engine_ = std::move(*BatchingEngine::Create(MakeModelExecutor(model_), {.max_queue_delay = absl::ZeroDuration()}));
    attributor_ = new Attributor(model_, engine_.get());
    std::ifstream in(TestModelsDir() + "/captum_reference.json");
    reference_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete attributor_;
    delete reference_;
    engine_.reset();
    model_.reset();
  }
  static const nlohmann::json& Case(const std::string& name) {
    for (const auto& c : (*reference_)["cases"]) {
      if (c["name"] == name) return c;
    }
    ADD_FAILURE() << "no reference case " << name;
    static nlohmann::json empty;
    return empty;
  }
  // Max |ours - captum| over max |captum|.
  static double RelativeError(const std::vector<double>& ours, const std::vector<double>& captum) {
    EXPECT_EQ(ours.size(), captum.size());
    double scale = 1e-12, error = 0;
    for (size_t i = 0; i < captum.size() && i < ours.size(); ++i) {
      scale = std::max(scale, std::abs(captum[i]));
      error = std::max(error, std::abs(ours[i] - captum[i]));
    }
    return error / scale;
  }
  static void ExpectMatches(const AttributionResult& ours, const nlohmann::json& captum, const std::string& name) {
    const double seq_error = RelativeError(ours.sequence, captum["seq_attr"].get<std::vector<double>>());
    EXPECT_LT(seq_error, 1e-4) << name;
    double token_error = 0;
    if (!captum["token_attr"].is_null()) {
      const auto matrix = captum["token_attr"].get<std::vector<std::vector<double>>>();
      EXPECT_EQ(ours.per_token.size(), matrix.size()) << name;
      for (size_t t = 0; t < matrix.size() && t < ours.per_token.size(); ++t) {
        token_error = std::max(token_error, RelativeError(ours.per_token[t], matrix[t]));
      }
      EXPECT_LT(token_error, 1e-4) << name;
    }
    std::cout << "[ captum   ] " << name << ": sequence rel. error " << seq_error << ", per-token " << token_error
              << "\n";
  }
  static AttributionRequest FromCase(const nlohmann::json& c) {
    AttributionRequest r;
    r.prompt_ids = c["prompt"].get<std::vector<int64_t>>();
    if (!c.value("generated", false)) r.target_ids = c["target"].get<std::vector<int64_t>>();
    r.generation.max_new_tokens = static_cast<int64_t>(c["target"].size());
    r.method = *ParseAttributionMethod(c["method"].get<std::string>());
    if (c.contains("rule")) r.rule = *ParseIntegrationRule(c["rule"].get<std::string>());
    r.n_steps = c.value("n_steps", 50);
    r.n_samples = c.value("n_samples", 25);
    r.seed = c.value("seed", uint64_t{0});
    r.baseline_token_id = c.value("baseline_token", 0);
    r.zero_embedding_baseline = c.value("zero_embedding", false);
    r.quantity =
        c.value("quantity", std::string("log_prob")) == "prob" ? TokenQuantity::kProb : TokenQuantity::kLogProb;
    r.want_token_matrix = !c["token_attr"].is_null();
    if (c.contains("foil")) r.foil_ids = c["foil"].get<std::vector<int64_t>>();
    if (c.contains("choices")) r.choice_ids = c["choices"].get<std::vector<int64_t>>();
    return r;
  }

  static inline std::shared_ptr<CausalLM> model_;
  static inline std::unique_ptr<BatchingEngine> engine_;
  static inline Attributor* attributor_ = nullptr;
  static inline nlohmann::json* reference_ = nullptr;
};

TEST_F(AttributionTest, EveryCaseMatchesCaptum) {
  for (const auto& c : (*reference_)["cases"]) {
    const std::string name = c["name"];
    auto result = attributor_->AttributeAndWait(FromCase(c));
    ASSERT_THAT(result, IsOk()) << name;
    if (c.value("generated", false)) {
      EXPECT_EQ(result->target_ids, c["target"].get<std::vector<int64_t>>()) << name;
    }
    ExpectMatches(*result, c, name);
    if (c.contains("delta")) {
      EXPECT_NEAR(*result->convergence_delta, c["delta"].get<double>(), 1e-4) << name;
    }
  }
}

TEST_F(AttributionTest, IntegratedGradientsCompletenessImprovesWithSteps) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token7"));
  double previous = 1e9;
  for (int64_t steps : {4, 16, 64}) {
    r.n_steps = steps;
    auto result = attributor_->AttributeAndWait(r);
    ASSERT_THAT(result, IsOk());
    const double delta = std::abs(*result->convergence_delta);
    std::cout << "[ complete ] n_steps " << steps << ": |delta| = " << delta << "\n";
    EXPECT_LT(delta, previous);
    previous = delta;
  }
  EXPECT_LT(previous, 1e-2);
}

TEST_F(AttributionTest, GradientShapWithoutNoiseEstimatesIntegratedGradients) {
  AttributionRequest ig = FromCase(Case("ig_gausslegendre_token7"));
  ig.n_steps = 64;
  ig.want_token_matrix = false;
  AttributionRequest shap = ig;
  shap.method = AttributionMethod::kGradientShap;
  shap.n_samples = 400;
  shap.seed = 3;
  auto exact = attributor_->AttributeAndWait(ig);
  auto sampled = attributor_->AttributeAndWait(shap);
  ASSERT_THAT(exact, IsOk());
  ASSERT_THAT(sampled, IsOk());
  // GradientShap averages (x - x') * grad at uniform points on the same path: a Monte-Carlo estimate of
  // the integral that IG computes by quadrature.
  double error = 0, norm = 0;
  for (size_t f = 0; f < exact->sequence.size(); ++f) {
    error += std::pow(sampled->sequence[f] - exact->sequence[f], 2);
    norm += std::pow(exact->sequence[f], 2);
  }
  std::cout << "[ gradshap ] relative L2 distance to IG with 400 samples: " << std::sqrt(error / norm) << "\n";
  EXPECT_LT(std::sqrt(error / norm), 0.1);
  auto again = attributor_->AttributeAndWait(shap);
  EXPECT_EQ(again->sequence, sampled->sequence);  // seeded
  shap.stdev = 0.05;
  auto noisy = attributor_->AttributeAndWait(shap);
  ASSERT_THAT(noisy, IsOk());
  EXPECT_NE(noisy->sequence, sampled->sequence);
}

TEST_F(AttributionTest, Seed001ManyStatementsConcurrentlyEqualAlone) {
  // Multiple-choice label probability for a list of statements, all submitted at once.
  constexpr int kStatements = 12;
  std::vector<AttributionRequest> requests;
  for (int i = 0; i < kStatements; ++i) {
    AttributionRequest r;
    for (int k = 0; k < 6 + i % 5; ++k) r.prompt_ids.push_back(3 + (i * 37 + k * 11) % 300);
    r.target_ids = {static_cast<int64_t>(100 + i % 3)};  // the label
    r.quantity = TokenQuantity::kProb;
    r.n_steps = 8;
    requests.push_back(r);
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<absl::StatusOr<AttributionResult>>> results(kStatements);
  for (int i = 0; i < kStatements; ++i) {
    attributor_->Attribute(engine_->NewRequest(), requests[i], [&, i](absl::StatusOr<AttributionResult> r) {
      std::lock_guard<std::mutex> lock(mu);
      results[i] = std::move(r);
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock,
            [&] { return std::all_of(results.begin(), results.end(), [](const auto& r) { return r.has_value(); }); });
  }
  for (int i = 0; i < kStatements; ++i) {
    ASSERT_THAT(*results[i], IsOk());
    auto alone = attributor_->AttributeAndWait(requests[i]);
    ASSERT_THAT(alone, IsOk());
    EXPECT_LT(RelativeError((*results[i])->sequence, alone->sequence), 1e-4) << "statement " << i;
    EXPECT_EQ((*results[i])->rows, 8 + 2);
  }
}

TEST_F(AttributionTest, ToleranceDrivenIntegratedGradientsReachesCaptums512Steps) {
  const nlohmann::json& captum = Case("seed000_no_vs_yes_512_steps");
  AttributionRequest r = FromCase(captum);
  r.completeness_tolerance = 1e-3;
  auto adaptive = attributor_->AttributeAndWait(r);
  ASSERT_THAT(adaptive, IsOk());
  const double error = RelativeError(adaptive->sequence, captum["seq_attr"].get<std::vector<double>>());
  std::cout << "[ adaptive ] stopped at order " << adaptive->integration_steps << " after " << adaptive->rows
            << " rows; relative error to Captum's 512 steps " << error << "\n";
  EXPECT_LT(error, 1e-3);
  EXPECT_EQ(adaptive->tolerance_met, std::optional<bool>(true));
  EXPECT_LT(adaptive->integration_steps, 512);
  // Orders 8, 16 and 32 (the third confirms the second's convergence): 8.9x fewer rows than 512 steps.
  EXPECT_LE(adaptive->rows * 8, 2 + 512);
  // f(x) - f(baseline) = sum(attributions) - delta; the tolerance is relative to it.
  const double delta = *adaptive->convergence_delta;
  const double total = std::accumulate(adaptive->sequence.begin(), adaptive->sequence.end(), 0.0);
  EXPECT_LE(std::abs(delta), 1e-3 * std::abs(total - delta));
}

// tolerance_met is a promise: the answer is within the tolerance of the converged one (Captum's 512 Gauss-Legendre
// points). The left, right and trapezoid sums converge only as 1/n; their error was estimated as if geometric,
// half what it was, and tolerance_met said true at an error of up to 1.6x the tolerance.
TEST_F(AttributionTest, ToleranceMetHoldsForEveryRule) {
  const nlohmann::json& captum = Case("seed000_no_vs_yes_512_steps");
  const std::vector<double> converged = captum["seq_attr"].get<std::vector<double>>();
  int met = 0;
  for (IntegrationRule rule :
       {IntegrationRule::kRiemannLeft, IntegrationRule::kRiemannRight, IntegrationRule::kRiemannMiddle,
        IntegrationRule::kRiemannTrapezoid, IntegrationRule::kGaussLegendre, IntegrationRule::kFejer2}) {
    for (double tolerance : {0.1, 0.05, 0.02, 0.01}) {
      AttributionRequest r = FromCase(captum);
      r.rule = rule;
      r.n_steps = 1024;
      r.completeness_tolerance = tolerance;
      auto result = attributor_->AttributeAndWait(r);
      ASSERT_THAT(result, IsOk());
      if (result->tolerance_met != std::optional<bool>(true)) continue;
      ++met;
      const double total = std::accumulate(converged.begin(), converged.end(), 0.0);  // f(x) - f(baseline)
      double error = 0;
      for (size_t f = 0; f < converged.size(); ++f) {
        error = std::max(error, std::abs(result->sequence[f] - converged[f]));
      }
      EXPECT_LE(error, tolerance * std::abs(total))
          << IntegrationRuleName(rule) << " at tolerance " << tolerance << ", order " << result->integration_steps;
    }
  }
  EXPECT_GT(met, 12);  // the rules do meet most of these
}

TEST_F(AttributionTest, ToleranceOutOfReachStopsAtNSteps) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token7"));
  r.completeness_tolerance = 1e-15;
  r.n_steps = 20;
  auto result = attributor_->AttributeAndWait(r);
  ASSERT_THAT(result, IsOk());
  // n_steps bounds the points over all orders: 8, then the 12 left (doubling would need 16).
  EXPECT_EQ(result->integration_steps, 12);
  EXPECT_EQ(result->tolerance_met, std::optional<bool>(false));
  const int64_t per_point = 1 + static_cast<int64_t>(r.target_ids.size());  // sequence and per-token rows
  EXPECT_EQ(result->rows, 2 + per_point * (8 + 12));
  // The last order's answer is the fixed-step answer at that order.
  r.completeness_tolerance = 0;
  r.n_steps = 12;
  auto fixed = attributor_->AttributeAndWait(r);
  ASSERT_THAT(fixed, IsOk());
  EXPECT_LT(RelativeError(result->sequence, fixed->sequence), 1e-6);
  EXPECT_FALSE(fixed->tolerance_met.has_value());
}

TEST_F(AttributionTest, NestedToleranceComputesEveryPointOnceAndReachesCaptums512Steps) {
  const nlohmann::json& captum = Case("seed000_no_vs_yes_512_steps");
  AttributionRequest r = FromCase(captum);
  r.completeness_tolerance = 1e-3;
  r.rule = IntegrationRule::kFejer2;
  auto nested = attributor_->AttributeAndWait(r);
  ASSERT_THAT(nested, IsOk());
  const double error = RelativeError(nested->sequence, captum["seq_attr"].get<std::vector<double>>());
  std::cout << "[ nested   ] stopped at " << nested->integration_steps << " points after " << nested->rows
            << " rows; relative error to Captum's 512 steps " << error << "\n";
  EXPECT_LT(error, 1e-3);
  EXPECT_EQ(nested->tolerance_met, std::optional<bool>(true));
  // The orders' points nest: the rows are the last order's points and the two ends' score rows.
  EXPECT_EQ(nested->rows, 2 + nested->integration_steps);
  EXPECT_EQ((nested->integration_steps + 1) & nested->integration_steps, 0) << "2^k - 1 points";
  r.rule = IntegrationRule::kGaussLegendre;
  auto fresh = attributor_->AttributeAndWait(r);
  ASSERT_THAT(fresh, IsOk());
  EXPECT_LT(nested->rows, fresh->rows);
}

TEST_F(AttributionTest, NestedToleranceOutOfReachEqualsTheFixedRuleAtItsLastOrder) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token7"));
  r.rule = IntegrationRule::kFejer2;
  r.completeness_tolerance = 1e-15;
  r.n_steps = 20;
  auto result = attributor_->AttributeAndWait(r);
  ASSERT_THAT(result, IsOk());
  // 7 points, then 15 (8 added around them); 31 would exceed n_steps.
  EXPECT_EQ(result->integration_steps, 15);
  EXPECT_EQ(result->tolerance_met, std::optional<bool>(false));
  const int64_t per_point = 1 + static_cast<int64_t>(r.target_ids.size());  // sequence and per-token rows
  EXPECT_EQ(result->rows, 2 + per_point * 15);
  // The reused and the new points, interleaved, give the answer of 15 points computed at once.
  r.completeness_tolerance = 0;
  r.n_steps = 15;
  auto fixed = attributor_->AttributeAndWait(r);
  ASSERT_THAT(fixed, IsOk());
  EXPECT_LT(RelativeError(result->sequence, fixed->sequence), 1e-6);
  for (size_t t = 0; t < fixed->per_token.size(); ++t) {
    EXPECT_LT(RelativeError(result->per_token[t], fixed->per_token[t]), 1e-6) << "target token " << t;
  }
  // Fewer than 7 points allowed: the largest 2^k - 1 within n_steps, once.
  r.completeness_tolerance = 1e-15;
  r.n_steps = 6;
  auto small = attributor_->AttributeAndWait(r);
  ASSERT_THAT(small, IsOk());
  EXPECT_EQ(small->integration_steps, 3);
}

TEST_F(AttributionTest, NestedToleranceWithAZeroEmbeddingBaselineIsAsCloseAsGaussLegendre) {
  // At alpha = 0 a zero baseline feeds zeros to every RMSNorm, whose gradient there is 1/sqrt(eps) per
  // layer: a rule that evaluates the path's end (Clenshaw-Curtis) is off by orders of magnitude. Neither
  // rule converges within 512 points here; both are measured against Gauss-Legendre's 1024.
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token7"));
  r.zero_embedding_baseline = true;
  r.n_steps = 1024;
  auto finest = attributor_->AttributeAndWait(r);
  r.n_steps = 512;
  auto legendre = attributor_->AttributeAndWait(r);
  r.rule = IntegrationRule::kFejer2;
  r.completeness_tolerance = 1e-3;
  auto nested = attributor_->AttributeAndWait(r);
  ASSERT_THAT(finest, IsOk());
  ASSERT_THAT(legendre, IsOk());
  ASSERT_THAT(nested, IsOk());
  const double legendre_error = RelativeError(legendre->sequence, finest->sequence);
  const double nested_error = RelativeError(nested->sequence, finest->sequence);
  std::cout << "[ zero     ] to 1024 Gauss-Legendre points: 512 Gauss-Legendre " << legendre_error << ", "
            << nested->integration_steps << " of Fejer's second rule " << nested_error << "\n";
  EXPECT_LT(nested_error, 2 * legendre_error);
}

TEST_F(AttributionTest, PerTokenMatrixSumsToSequenceAttribution) {
  AttributionRequest r = FromCase(Case("ig_riemann_middle_token0"));
  auto result = attributor_->AttributeAndWait(r);
  ASSERT_THAT(result, IsOk());
  for (size_t f = 0; f < result->sequence.size(); ++f) {
    double sum = 0;
    for (const auto& row : result->per_token) sum += row[f];
    EXPECT_NEAR(sum, result->sequence[f], 1e-4 * std::max(1.0, std::abs(sum)));
  }
}

TEST_F(AttributionTest, ShapleyValuesAreEfficient) {
  for (auto method : {AttributionMethod::kShapleyValues, AttributionMethod::kShapleyValueSampling}) {
    AttributionRequest r = FromCase(Case("shapley_values_log_prob"));
    r.method = method;
    r.n_samples = 5;
    auto full = attributor_->AttributeAndWait(r);
    ASSERT_THAT(full, IsOk());
    // f(baseline): every prompt token replaced by the baseline token.
    AttributionRequest at_baseline = r;
    at_baseline.prompt_ids.assign(r.prompt_ids.size(), r.baseline_token_id);
    at_baseline.method = AttributionMethod::kFeatureAblation;
    auto base = attributor_->AttributeAndWait(at_baseline);
    double total = 0;
    for (double a : full->sequence) total += a;
    EXPECT_NEAR(total, full->objective - base->objective, 1e-4) << AttributionMethodName(method);
  }
}

TEST_F(AttributionTest, FeatureTheTargetCannotSeeGetsZero) {
  // Positions after the scored one cannot influence it (causal attention): put the target first.
  AttributionRequest r;
  r.prompt_ids = {1, 5, 17};
  r.target_ids = {9};
  r.method = AttributionMethod::kFeatureAblation;
  auto a = attributor_->AttributeAndWait(r);
  ASSERT_THAT(a, IsOk());
  // A feature spanning nothing the model reads differently: ablating token 0 into itself.
  r.baseline_token_id = 1;
  auto b = attributor_->AttributeAndWait(r);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->sequence[0], 0.0);
  EXPECT_NE(a->sequence[1], 0.0);
}

TEST_F(AttributionTest, FeatureGroupsWithTheirOwnBaselines) {
  AttributionRequest r = FromCase(Case("feature_ablation_log_prob"));
  // Baselines of other lengths too; an empty one deletes its group.
  using Ids = std::vector<int64_t>;
  r.features = {{1, 3, Ids{60}}, {3, 6, Ids{}}, {6, 8, Ids{61, 62, 63}}};
  auto grouped = attributor_->AttributeAndWait(r);
  ASSERT_THAT(grouped, IsOk());
  ASSERT_EQ(grouped->sequence.size(), 3u);
  // Ablating a group equals scoring the prompt with that group replaced by its baseline.
  AttributionRequest replaced = r;
  replaced.features.clear();
  replaced.prompt_ids = {1, 60, 99, 3, 250, 41, 7};
  auto ablated = attributor_->AttributeAndWait(replaced);
  ASSERT_THAT(ablated, IsOk());
  EXPECT_NEAR(grouped->sequence[0], grouped->objective - ablated->objective, 1e-5);
  replaced.prompt_ids = r.prompt_ids;
  replaced.prompt_ids.erase(replaced.prompt_ids.begin() + 3, replaced.prompt_ids.begin() + 6);
  auto deleted = attributor_->AttributeAndWait(replaced);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_NEAR(grouped->sequence[1], grouped->objective - deleted->objective, 1e-5);
  EXPECT_GT(std::abs(grouped->sequence[1]), 1e-4);  // not the default baseline's answer by accident of zero
}

// The per-token fits (a Lasso each for LIME) run on the engine's thread, so only when asked for.
TEST_F(AttributionTest, PerturbationMethodsFitTheTokenMatrixOnlyWhenAskedFor) {
  AttributionRequest r = FromCase(Case("feature_ablation_log_prob"));
  r.target_ids = {11, 12};
  r.want_token_matrix = false;
  auto without = attributor_->AttributeAndWait(r);
  r.want_token_matrix = true;
  auto with = attributor_->AttributeAndWait(r);
  ASSERT_THAT(without, IsOk());
  ASSERT_THAT(with, IsOk());
  EXPECT_TRUE(without->per_token.empty());
  EXPECT_EQ(with->per_token.size(), 2u);
  EXPECT_EQ(without->sequence, with->sequence);
}

// A 1-token target's matrix row is its whole target's: a second grad row per point doubled the rows of every such
// request (34 -> 66 for 32 steps) for the same numbers.
TEST_F(AttributionTest, AOneTokenTargetsMatrixCostsNoRowsOfItsOwn) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token0"));
  r.target_ids.resize(1);
  r.want_token_matrix = false;
  auto without = attributor_->AttributeAndWait(r);
  r.want_token_matrix = true;
  auto with = attributor_->AttributeAndWait(r);
  ASSERT_THAT(without, IsOk());
  ASSERT_THAT(with, IsOk());
  EXPECT_EQ(with->rows, without->rows);
  EXPECT_EQ(with->backward_passes, without->backward_passes);
  ASSERT_EQ(with->per_token.size(), 1u);
  EXPECT_EQ(with->per_token[0], with->sequence);
  for (size_t f = 0; f < with->sequence.size(); ++f) EXPECT_NEAR(with->sequence[f], without->sequence[f], 1e-6);
  // Two tokens: a row for each beside the whole target's, whose attribution they sum to (log-probabilities add).
  r.target_ids = {11, 12};
  auto two = attributor_->AttributeAndWait(r);
  ASSERT_THAT(two, IsOk());
  ASSERT_EQ(two->per_token.size(), 2u);
  EXPECT_EQ(two->rows, 3 * r.n_steps + 2);
  for (size_t f = 0; f < two->sequence.size(); ++f) {
    EXPECT_NEAR(two->per_token[0][f] + two->per_token[1][f], two->sequence[f], 1e-5);
  }
}

// LIME's fit stops between sweeps once nobody waits for it (a fit of a thousand features took a second per
// target token, past the call's deadline): asked every 16 sweeps, it stops at the first ask.
TEST(FitLasso, StopsBetweenSweepsOnceAbandoned) {
  const std::vector<Coalition> x = SampleLimeCoalitions(/*num_features=*/200, /*num_samples=*/32, /*seed=*/3);
  std::vector<double> y;
  for (size_t i = 0; i < x.size(); ++i) y.push_back(std::sin(static_cast<double>(i)) * 3);
  int asked = 0;
  const std::vector<double> converged = FitLasso(x, y, LimeWeights(x), kLimeLassoAlpha, [&] {
    ++asked;
    return false;
  });
  ASSERT_GT(asked, 1);  // the fit needs more than one stretch of 16 sweeps
  int asked_abandoned = 0;
  const std::vector<double> stopped = FitLasso(x, y, LimeWeights(x), kLimeLassoAlpha, [&] {
    ++asked_abandoned;
    return true;
  });
  EXPECT_EQ(asked_abandoned, 1);
  EXPECT_NE(stopped, converged);
}

// KernelSHAP's fit of scores that are not finite (a log-prob of -inf, an overflow) is NaN, which the attributor
// refuses FAILED_PRECONDITION as it does other methods' NaN; LAPACK threw "illegal value" (INTERNAL) before.
TEST(FitLeastSquares, ScoresThatAreNotFiniteFitToNaN) {
  const std::vector<Coalition> x = SampleKernelShapCoalitions(/*num_features=*/4, /*num_samples=*/24, /*seed=*/5);
  std::vector<double> y;
  for (const Coalition& c : x) y.push_back(std::accumulate(c.begin(), c.end(), 0.0));  // each feature adds 1
  const std::vector<double> fit = FitLeastSquares(x, y, KernelShapWeights(x));
  ASSERT_EQ(fit.size(), 4u);
  for (double v : fit) EXPECT_NEAR(v, 1.0, 1e-9);
  for (double bad : {-std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    std::vector<double> damaged = y;
    damaged[3] = bad;
    const std::vector<double> nan_fit = FitLeastSquares(x, damaged, KernelShapWeights(x));
    ASSERT_EQ(nan_fit.size(), 4u);
    for (double v : nan_fit) EXPECT_TRUE(std::isnan(v));
  }
}

// A LIME fit cut short because the engine stops (or the caller left) is never an answer: before, the fit stopped
// early and the call answered OK with unfinished numbers (55 of 84 matrix rows off by up to 10%).
TEST(AttributorShutdown, ALimeFitCutShortByShutdownIsUnavailable) {
  std::shared_ptr<const CausalLM> model = std::move(*CausalLM::Load(TestModelsDir() + "/llama", {}));
  std::unique_ptr<BatchingEngine> engine =
      std::move(*BatchingEngine::Create(MakeModelExecutor(model), {.max_queue_delay = absl::ZeroDuration()}));
  Attributor attributor(model, engine.get());
  AttributionRequest r;
  for (int i = 0; i < 96; ++i) r.prompt_ids.push_back(10 + (i * 7) % 300);
  for (int i = 0; i < 30; ++i) r.target_ids.push_back(20 + i);
  r.method = AttributionMethod::kLime;
  r.n_samples = 64;
  r.want_token_matrix = true;  // 31 fits, seconds in all
  std::mutex mu;
  std::condition_variable cv;
  bool rows_done = false;
  std::optional<absl::StatusOr<AttributionResult>> result;
  attributor.Attribute(
      engine->NewRequest(), r,
      [&](absl::StatusOr<AttributionResult> answer) {
        std::lock_guard<std::mutex> lock(mu);
        result = std::move(answer);
        cv.notify_all();
      },
      [&](int64_t done, int64_t total) {
        std::lock_guard<std::mutex> lock(mu);
        rows_done = done == total;
        cv.notify_all();
      });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return rows_done || result.has_value(); });
  }
  engine->Shutdown();  // the fits have just begun, away from the executor; they stop, and the answer says why
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  EXPECT_THAT(*result, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
}

TEST(RankFeatures, NanRanksLastAndTiesKeepPromptOrder) {
  const double nan = std::nan("");
  EXPECT_EQ(RankFeatures({1, nan, 3, 1, nan, 2}), (std::vector<int64_t>{2, 5, 0, 3, 1, 4}));
}

TEST_F(AttributionTest, ContrastiveIsTargetMinusFoil) {
  AttributionRequest r = FromCase(Case("feature_ablation_log_prob"));
  r.target_ids = {11};
  r.quantity = TokenQuantity::kLogit;
  auto target = attributor_->AttributeAndWait(r);
  r.target_ids = {42};
  auto foil = attributor_->AttributeAndWait(r);
  r.target_ids = {11};
  r.foil_ids = {42};
  auto contrast = attributor_->AttributeAndWait(r);
  ASSERT_THAT(target, IsOk());
  ASSERT_THAT(foil, IsOk());
  ASSERT_THAT(contrast, IsOk());
  for (size_t f = 0; f < contrast->sequence.size(); ++f) {
    EXPECT_NEAR(contrast->sequence[f], target->sequence[f] - foil->sequence[f], 1e-4);
  }
}

// With a tolerance, n_steps is a budget over rounds that each queue a part of it, and the request may stop at
// any round: the limits apply to its first round (with the path's two end rows) and its largest later round
// (Gauss-Legendre within 1,024 points: 8, 16, ..., 512; the 8 left are fewer than the last order's), not to
// n_steps x (1 + T), and up front: the engine refused a later round after the earlier ones had run.
TEST_F(AttributionTest, RowsArePreCountedFromTheLargestOrderWithATolerance) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token0"));
  r.want_token_matrix = true;
  r.n_steps = 1024;
  const int64_t per_point = 1 + static_cast<int64_t>(r.target_ids.size());
  const int64_t sequence = static_cast<int64_t>(r.prompt_ids.size() + r.target_ids.size());
  const AttributionLimits limits{.max_rows = 512 * per_point};  // under 1024 x (1 + T)
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), limits),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_steps x (1 + target tokens")));
  r.completeness_tolerance = 0.01;
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), limits), IsOk());
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_rows = 512 * per_point - 1}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the points of n_steps' largest order with a tolerance x (1 + target tokens "
                                 "with want_token_matrix) = 512 x")));
  // Tokens too: every row is the whole sequence.
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_queued_tokens = 512 * per_point * sequence}),
              IsOk());
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_queued_tokens = 512 * per_point * sequence - 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over this model's limits.max_queued_tokens (")));
  // The first round holds the two end rows: 8 points and 2 rows.
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_rows = 8 * per_point + 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("the points of the first order")));
  r.rule = IntegrationRule::kFejer2;  // 7, 15, ..., 1023 points, the last adding 512 nodes
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_rows = 512 * per_point}), IsOk());
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {.max_rows = 512 * per_point - 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("= 512 x")));
}

TEST_F(AttributionTest, BadRequestsNameTheField) {
  AttributionRequest good = FromCase(Case("ig_gausslegendre_token0"));
  auto expect = [&](AttributionRequest r, const std::string& field) {
    auto result = attributor_->AttributeAndWait(r);
    EXPECT_THAT(result, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field))) << field;
  };
  AttributionRequest r = good;
  r.prompt_ids.clear();
  expect(r, "prompt_ids");
  r = good;
  r.prompt_ids[2] = 100000;
  expect(r, "prompt_ids[2]");
  r = good;
  r.n_steps = 0;
  expect(r, "n_steps");
  r.n_steps = 1;
  r.rule = IntegrationRule::kRiemannTrapezoid;  // both ends share the weight: two points at least
  expect(r, "n_steps");
  r.rule = good.rule;
  r = good;
  r.n_steps = 100000;
  expect(r, "n_steps");
  r = good;
  r.features = {{0, 3, {}}, {2, 5, {}}};
  expect(r, "overlaps");
  r = good;
  r.features = {{4, 2, {}}};
  expect(r, "feature_groups[0]");
  r = good;
  r.foil_ids = {1};
  expect(r, "foil_ids");
  r = good;  // integrated gradients: a deleted span has no point to interpolate from
  r.features = {{0, 2, std::vector<int64_t>{}}};
  expect(r, "feature_groups[0].baseline: gradient methods need one baseline token per position");
  r.method = AttributionMethod::kFeatureAblation;
  r.features = {{0, 2, std::vector<int64_t>{}}, {2, static_cast<int64_t>(r.prompt_ids.size()), std::vector<int64_t>{}}};
  expect(r, "can leave the prompt empty");
  r = good;
  r.method = AttributionMethod::kShapleyValues;
  r.features.clear();
  r.prompt_ids.assign(20, 5);
  expect(r, "exact shapley_values");
  r = good;
  r.baseline_token_id = -3;
  expect(r, "baseline_token_id");
  r = good;
  r.completeness_tolerance = 2;
  expect(r, "completeness_tolerance");
}

// Settings a method does not read change nothing and are accepted (the answer names them), so one set of
// settings goes with every method: a tolerance beside feature ablation, and group baselines of another length
// or beside the zero embedding for the methods that read no baseline, were refused.
TEST_F(AttributionTest, SettingsAMethodDoesNotReadAreAccepted) {
  AttributionRequest r = FromCase(Case("ig_gausslegendre_token0"));
  r.features = {{0, 2, std::vector<int64_t>{}}, {2, 3, std::vector<int64_t>{5, 6}}};
  for (AttributionMethod method :
       {AttributionMethod::kSaliency, AttributionMethod::kInputXGradient, AttributionMethod::kAttnLrp}) {
    r.method = method;
    r.zero_embedding_baseline = false;
    EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {}), IsOk()) << AttributionMethodName(method);
    r.zero_embedding_baseline = true;
    EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {}), IsOk()) << AttributionMethodName(method);
  }
  // And they run as the request without them: an empty baseline (a deletion) crashed the server (the path read
  // one id per position from it), a shorter one read past its end.
  for (AttributionMethod method :
       {AttributionMethod::kSaliency, AttributionMethod::kInputXGradient, AttributionMethod::kAttnLrp}) {
    AttributionRequest plain = FromCase(Case("ig_gausslegendre_token0"));
    plain.method = method;
    plain.features = {{0, 2, std::nullopt}, {2, 3, std::nullopt}};
    AttributionRequest unread = plain;
    unread.features = {{0, 2, std::vector<int64_t>{}}, {2, 3, std::vector<int64_t>{5, 6}}};
    absl::StatusOr<AttributionResult> expected = attributor_->AttributeAndWait(plain);
    absl::StatusOr<AttributionResult> got = attributor_->AttributeAndWait(unread);
    ASSERT_THAT(expected, IsOk());
    ASSERT_THAT(got, IsOk()) << AttributionMethodName(method);
    EXPECT_EQ(got->sequence, expected->sequence) << AttributionMethodName(method);
  }
  r.zero_embedding_baseline = false;
  r.want_faithfulness = true;  // its curves put removed features at the groups' baselines
  EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("one baseline token per position")));
  r = FromCase(Case("ig_gausslegendre_token0"));
  r.completeness_tolerance = 0.01;
  for (AttributionMethod method :
       {AttributionMethod::kFeatureAblation, AttributionMethod::kSaliency, AttributionMethod::kGradientShap}) {
    r.method = method;
    EXPECT_THAT(ValidateAttributionRequest(r, model_->config(), {}), IsOk()) << AttributionMethodName(method);
  }
}

TEST(MethodTable, EveryMethodDeclaresItsFamilyAndItsParts) {
  for (AttributionMethod m : kAllMethods) {
    const Method& method = MethodOf(m);
    EXPECT_EQ(method.method, m);
    ASSERT_THAT(ParseAttributionMethod(method.name), IsOk()) << method.name;
    EXPECT_EQ(*ParseAttributionMethod(method.name), m);
    const bool gradient = method.family == MethodFamily::kGradient;
    EXPECT_EQ(IsGradientMethod(m), gradient);
    EXPECT_NE(method.validate, nullptr) << method.name;
    EXPECT_EQ(method.reduction != nullptr && method.samples != nullptr, gradient) << method.name;
    EXPECT_EQ(method.coalitions != nullptr, !gradient) << method.name;
  }
  EXPECT_THAT(ParseAttributionMethod("occlusion").status().message(), HasSubstr("kernel_shap"));
}

}  // namespace
}  // namespace attribution::engine
