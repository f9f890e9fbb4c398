// SPDX-License-Identifier: Apache-2.0
// AttributeComponents through the real server binary on GPT-2, Llama and Qwen2 directories written by
// transformers (tools/make_architecture_models.py), against tools/component_reference.py on the same
// weights: TransformerLens 4.3's transformer_lens.patching grids (activation patching), seed 003's
// layer integrated gradients over transformers with PyTorch hooks, and attribution patching by
// autograd over transformers. The reference metric is the raw logit difference of the patched run;
// ours is the patching effect, so the unpatched run's metric is subtracted from the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using test_support::ServerProcess;
using ::testing::AllOf;
using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

// Falcon runs attention and MLP in parallel; Mixtral's mlp_out is its sparse mixture of experts; qwen2-window
// mixes full and windowed attention layers (AtP* weighed every layer's heads by the last layer's mask).
const char* const kModels[] = {"gpt2", "llama", "qwen2", "falcon", "mixtral", "qwen2-window"};

const nlohmann::json& Reference() {
  static const nlohmann::json* reference = [] {
    std::ifstream in(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/component_reference.json"));
    return new nlohmann::json(nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false));
  }();
  return *reference;
}

// A nested JSON grid flattened row-major, minus `offset` in every entry.
std::vector<double> Flatten(const nlohmann::json& grid, double offset = 0) {
  std::vector<double> out;
  if (!grid.is_array()) return {grid.get<double>() - offset};
  for (const nlohmann::json& entry : grid) {
    std::vector<double> inner = Flatten(entry, offset);
    out.insert(out.end(), inner.begin(), inner.end());
  }
  return out;
}

// Max |ours - reference| over max |reference|.
double RelativeError(const std::vector<double>& ours, const std::vector<double>& reference) {
  EXPECT_EQ(ours.size(), reference.size());
  double scale = 1e-12, error = 0;
  for (size_t i = 0; i < reference.size() && i < ours.size(); ++i) {
    scale = std::max(scale, std::abs(reference[i]));
    error = std::max(error, std::abs(ours[i] - reference[i]));
  }
  return error / scale;
}

class ComponentsMatchReference : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    const std::vector<std::string> models(std::begin(kModels), std::end(kModels));
    auto started = ServerProcess::Start(
        {test_support::ModelsFlag(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, models), "--dtype=float32"});
    start_status_ = started.status();
    if (!started.ok()) return;
    server_ = started->release();
    auto client = client::AttributionClient::Connect({.target = server_->address()});
    start_status_ = client.status();
    if (client.ok()) client_ = client->release();
  }
  static void TearDownTestSuite() {
    delete client_;
    delete server_;
  }
  void SetUp() override {
    ASSERT_THAT(start_status_, IsOk());
    ASSERT_FALSE(Reference().is_discarded()) << "no component_reference.json (ctest fixture make_component_reference)";
    reference_ = &Reference()["models"][GetParam()];
  }
  client::ComponentOptions Options(const std::string& method, const std::string& direction) const {
    return {.model = GetParam(),
            .pairs = {{.clean_ids = (*reference_)["clean_ids"].get<std::vector<int64_t>>(),
                       .corrupted_ids = (*reference_)["corrupted_ids"].get<std::vector<int64_t>>()}},
            .answer_id = (*reference_)["answer"].get<int64_t>(),
            .wrong_answer_id = (*reference_)["wrong_answer"].get<int64_t>(),
            .method = method,
            .direction = direction,
            .sites = {"heads", "resid_pre", "attn_out", "mlp_out"}};
  }
  // The reference's unpatched metric of the run patched into.
  double Base(const std::string& direction) const {
    return (*reference_)[direction == "denoising" ? "corrupted_metric" : "clean_metric"].get<double>();
  }

  static absl::Status start_status_;
  static ServerProcess* server_;
  static client::AttributionClient* client_;
  const nlohmann::json* reference_ = nullptr;
};

absl::Status ComponentsMatchReference::start_status_;
ServerProcess* ComponentsMatchReference::server_ = nullptr;
client::AttributionClient* ComponentsMatchReference::client_ = nullptr;

// Every grid of transformer_lens.patching (and of the plain-hook reference) within 1e-4 relative.
TEST_P(ComponentsMatchReference, ActivationPatchingEqualsTransformerLens) {
  for (const std::string direction : {"denoising", "noising"}) {
    SCOPED_TRACE(direction);
    absl::StatusOr<client::ComponentAttribution> result =
        client_->AttributeComponents(Options("activation_patching", direction));
    ASSERT_THAT(result, IsOk());
    EXPECT_NEAR(result->pairs[0].clean_metric, (*reference_)["clean_metric"].get<double>(), 1e-5);
    EXPECT_NEAR(result->pairs[0].corrupted_metric, (*reference_)["corrupted_metric"].get<double>(), 1e-5);
    const nlohmann::json& tl = (*reference_)["tl_" + direction];
    const nlohmann::json& hf = (*reference_)["hf_" + direction];
    ASSERT_EQ(result->grids.size(), 4u);
    const char* names[] = {"heads", "resid_pre", "attn_out", "mlp_out"};
    for (size_t g = 0; g < 4; ++g) {
      SCOPED_TRACE(names[g]);
      EXPECT_EQ(result->grids[g].site, names[g]);
      EXPECT_LT(RelativeError(result->grids[g].values, Flatten(tl[names[g]], Base(direction))), 1e-4);
      EXPECT_LT(RelativeError(result->grids[g].values, Flatten(hf[names[g]], Base(direction))), 1e-4);
    }
    client::ComponentOptions by_position = Options("activation_patching", direction);
    by_position.sites = {"heads"};
    by_position.granularity = "layer_position_head";
    absl::StatusOr<client::ComponentAttribution> heads = client_->AttributeComponents(by_position);
    ASSERT_THAT(heads, IsOk());
    ASSERT_EQ(heads->grids[0].axes, (std::vector<std::string>{"layer", "position", "head"}));
    EXPECT_LT(RelativeError(heads->grids[0].values, Flatten(tl["heads_by_pos"], Base(direction))), 1e-4);
  }
}

// Seed 003's layer integrated gradients at each head (and at each residual position), 16
// Gauss-Legendre points, and their convergence deltas against our own patching effects.
TEST_P(ComponentsMatchReference, LayerIntegratedGradientsEqualSeed003sHooks) {
  for (const std::string direction : {"denoising", "noising"}) {
    SCOPED_TRACE(direction);
    client::ComponentOptions options = Options("layer_integrated_gradients", direction);
    options.sites = {"heads", "resid_pre"};
    options.n_steps = Reference()["n_steps"].get<int>();
    absl::StatusOr<client::ComponentAttribution> result = client_->AttributeComponents(options);
    ASSERT_THAT(result, IsOk());
    EXPECT_LT(RelativeError(result->grids[0].values, Flatten((*reference_)["lig_" + direction + "_heads"])), 1e-4);
    EXPECT_LT(RelativeError(result->grids[1].values, Flatten((*reference_)["lig_" + direction + "_resid_pre"])), 1e-4);
    const std::vector<double> effects = Flatten((*reference_)["hf_" + direction]["heads"], Base(direction));
    ASSERT_EQ(result->grids[0].convergence_deltas.size(), effects.size());
    for (size_t i = 0; i < effects.size(); ++i) {
      EXPECT_NEAR(result->grids[0].convergence_deltas[i], result->grids[0].values[i] - effects[i], 1e-5);
    }
    // Residual positions before the prompts first differ hold one value in both runs: no rows run there.
    const std::vector<int64_t> clean = options.pairs[0].clean_ids, corrupted = options.pairs[0].corrupted_ids;
    const int64_t shared = std::mismatch(clean.begin(), clean.end(), corrupted.begin()).first - clean.begin();
    const int64_t layers = result->grids[1].shape[0];
    EXPECT_EQ(result->stats.rows,
              2 + (options.n_steps + 1) *
                      (static_cast<int64_t>(effects.size() + result->grids[1].values.size()) - layers * shared));
  }
}

// Attribution patching against autograd over transformers, every grid.
TEST_P(ComponentsMatchReference, AttributionPatchingEqualsAutograd) {
  for (const std::string direction : {"denoising", "noising"}) {
    SCOPED_TRACE(direction);
    absl::StatusOr<client::ComponentAttribution> result =
        client_->AttributeComponents(Options("attribution_patching", direction));
    ASSERT_THAT(result, IsOk());
    EXPECT_EQ(result->stats.rows, 3);
    EXPECT_EQ(result->stats.backward_passes, 1);
    const nlohmann::json& atp = (*reference_)["atp_" + direction];
    const char* names[] = {"heads", "resid_pre", "attn_out", "mlp_out"};
    for (size_t g = 0; g < 4; ++g) {
      SCOPED_TRACE(names[g]);
      EXPECT_LT(RelativeError(result->grids[g].values, Flatten(atp[names[g]])), 1e-4);
    }
  }
}

// AtP* against its definition over transformers (tools/atp_star_reference.py: every moved key's softmax
// recomputed whole, one backward per dropped layer), every grid and the heads per position.
TEST_P(ComponentsMatchReference, AttributionPatchingStarEqualsItsDefinition) {
  for (const std::string direction : {"denoising", "noising"}) {
    SCOPED_TRACE(direction);
    client::ComponentOptions options = Options("attribution_patching_star", direction);
    absl::StatusOr<client::ComponentAttribution> result = client_->AttributeComponents(options);
    ASSERT_THAT(result, IsOk());
    const int64_t layers = result->grids[0].shape[0];
    EXPECT_EQ(result->stats.rows, 2 + layers);
    EXPECT_EQ(result->stats.backward_passes, layers);
    const nlohmann::json& star = (*reference_)["atp_star_" + direction];
    const char* names[] = {"heads", "resid_pre", "attn_out", "mlp_out"};
    for (size_t g = 0; g < 4; ++g) {
      SCOPED_TRACE(names[g]);
      EXPECT_LT(RelativeError(result->grids[g].values, Flatten(star[names[g]])), 1e-4);
      EXPECT_GE(*std::min_element(result->grids[g].values.begin(), result->grids[g].values.end()), 0);
    }
    options.sites = {"heads"};
    options.granularity = "layer_position_head";
    absl::StatusOr<client::ComponentAttribution> by_position = client_->AttributeComponents(options);
    ASSERT_THAT(by_position, IsOk());
    EXPECT_LT(RelativeError(by_position->grids[0].values, Flatten(star["heads_by_pos"])), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ComponentsMatchReference,
                         ::testing::ValuesIn(std::vector<std::string>(std::begin(kModels), std::end(kModels))),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// What users send wrong gets INVALID_ARGUMENT naming the field, and the server goes on.
TEST(ComponentsOverGrpc, BadRequestsNameTheFieldAndTextPairsWork) {
  auto server = ServerProcess::Start(
      {absl::StrCat("--model=gpt2=", ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/gpt2"), "--dtype=float32"});
  ASSERT_THAT(server.status(), IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client.status(), IsOk());
  client::ComponentOptions options{
      .model = "gpt2",
      .pairs = {{.clean = "the cat sat on the mat", .corrupted = "the dog sat on the mat"}},
      .answer_id = 620,
      .wrong_answer_id = 333};
  absl::StatusOr<client::ComponentAttribution> ok = (*client)->AttributeComponents(options);
  ASSERT_THAT(ok, IsOk());
  ASSERT_FALSE(ok->pairs[0].clean_tokens.empty());
  EXPECT_EQ(ok->pairs[0].clean_tokens.size(), ok->pairs[0].corrupted_tokens.size());
  EXPECT_EQ(ok->grids[0].axes, (std::vector<std::string>{"layer", "head"}));
  int64_t progress_calls = 0, last_total = 0;
  absl::StatusOr<client::ComponentAttribution> streamed =
      (*client)->AttributeComponents(options, [&](int64_t, int64_t total) {
        ++progress_calls;
        last_total = total;
      });
  ASSERT_THAT(streamed, IsOk());
  EXPECT_GT(progress_calls, 0);
  EXPECT_EQ(last_total, streamed->stats.rows);
  // The same rows, in batches whose sizes follow the server's load: equal up to fp32 summation order.
  EXPECT_THAT(streamed->grids[0].values, Pointwise(DoubleNear(1e-5), ok->grids[0].values));

  client::ComponentOptions bad = options;
  bad.pairs[0].corrupted = "the big dog sat on the mat";
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("pairs[0]"), HasSubstr("clean has"))));
  bad = options;
  bad.answer_id.reset();
  bad.answer = "the cat";
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("answer"), HasSubstr("one token"))));
  bad = options;
  bad.wrong_answer_id.reset();
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("wrong_answer")));
  bad = options;
  bad.sites = {"mlp_out"};
  bad.granularity = "layer_head";
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("granularity")));
  bad = options;
  bad.pairs.clear();
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pairs")));
  bad = options;
  bad.pairs[0] = {.clean_ids = {1, 2, 5000}, .corrupted_ids = {1, 2, 3}};
  EXPECT_THAT((*client)->AttributeComponents(bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pairs[0].clean")));
  // The server still answers after all of these.
  EXPECT_THAT((*client)->AttributeComponents(options), IsOk());
}

// Spearman's rank correlation (ties broken by position: the values here are continuous).
double Spearman(const std::vector<double>& x, const std::vector<double>& y) {
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
    std::vector<double> rank(v.size());
    for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = static_cast<double>(r);
    return rank;
  };
  const std::vector<double> rx = ranks(x), ry = ranks(y);
  const double mean = (static_cast<double>(x.size()) - 1) / 2;
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    xy += (rx[i] - mean) * (ry[i] - mean);
    xx += (rx[i] - mean) * (rx[i] - mean);
    yy += (ry[i] - mean) * (ry[i] - mean);
  }
  return xy / std::sqrt(xx * yy);
}

// The README's demo on the default model: which heads carry the colour that decides "Yes" to the
// answer. Patching the colour's position at layer 0 restores the clean answer exactly and nothing
// before it matters; attribution patching (one backward) ranks the heads as patching does.
TEST(ComponentsOnTheDefaultModel, TheColourHeadLeadsAndAttributionPatchingRanksHeadsAlike) {
  auto server = ServerProcess::Start({});
  ASSERT_THAT(server.status(), IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client.status(), IsOk());
  client::ComponentOptions options{
      .model = "tiny-qa-llama",
      .pairs = {{.clean = "Tom lives in Dover. The cup is red. Q: Is the cup warm? A:",
                 .corrupted = "Tom lives in Dover. The cup is blue. Q: Is the cup warm? A:"}},
      .answer = " Yes",
      .wrong_answer = " No",
      .metric = "normalized_logit_difference",
      .sites = {"resid_pre"}};
  absl::StatusOr<client::ComponentAttribution> resid = (*client)->AttributeComponents(options);
  ASSERT_THAT(resid, IsOk());
  EXPECT_GT(resid->pairs[0].clean_metric, 0);  // the model answers Yes for red, No for blue
  EXPECT_LT(resid->pairs[0].corrupted_metric, 0);
  const std::vector<client::Token>& tokens = resid->pairs[0].clean_tokens;
  const int64_t colour = std::find_if(tokens.begin(), tokens.end(),
                                      [](const client::Token& t) { return t.text.find("red") != std::string::npos; }) -
                         tokens.begin();
  ASSERT_LT(colour, static_cast<int64_t>(tokens.size()));
  const std::vector<double>& layer0 = resid->grids[0].values;  // layer 0 is the first row
  EXPECT_NEAR(layer0[colour], 1.0, 1e-4);
  for (int64_t p = 0; p < colour; ++p) EXPECT_EQ(layer0[p], 0.0) << p;

  options.sites = {"heads"};
  absl::StatusOr<client::ComponentAttribution> patched = (*client)->AttributeComponents(options);
  options.method = "attribution_patching";
  absl::StatusOr<client::ComponentAttribution> estimated = (*client)->AttributeComponents(options);
  ASSERT_THAT(patched, IsOk());
  ASSERT_THAT(estimated, IsOk());
  const std::vector<double>& p = patched->grids[0].values;
  const std::vector<double>& a = estimated->grids[0].values;
  auto strongest = [](const std::vector<double>& v) {
    return std::max_element(v.begin(), v.end(), [](double x, double y) { return std::abs(x) < std::abs(y); }) -
           v.begin();
  };
  EXPECT_EQ(strongest(a), strongest(p));
  const double rho = Spearman(p, a);
  std::cout << "default model heads: strongest " << strongest(p) << ", patching " << p[strongest(p)] << ", AtP "
            << a[strongest(p)] << ", Spearman " << rho << "\n";
  EXPECT_GT(rho, 0.8);

  // AtP* estimates magnitudes: ranked against |patching effect|, as |AtP| is.
  options.method = "attribution_patching_star";
  absl::StatusOr<client::ComponentAttribution> starred = (*client)->AttributeComponents(options);
  ASSERT_THAT(starred, IsOk());
  const std::vector<double>& star = starred->grids[0].values;
  auto magnitudes = [](std::vector<double> v) {
    for (double& x : v) x = std::abs(x);
    return v;
  };
  EXPECT_EQ(strongest(star), strongest(p));
  const double rho_star = Spearman(magnitudes(p), star), rho_plain = Spearman(magnitudes(p), magnitudes(a));
  std::cout << "default model heads, against |patching|: Spearman AtP* " << rho_star << ", |AtP| " << rho_plain << "\n";
  EXPECT_GT(rho_star, 0.75);
}

}  // namespace
}  // namespace attribution
