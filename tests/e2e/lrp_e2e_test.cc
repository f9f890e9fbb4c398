// SPDX-License-Identifier: Apache-2.0
// AttnLRP and CP-LRP through the real server binary on a model directory of every architecture (saved
// by transformers, tools/make_architecture_models.py), against LXT 2.1's efficient mode on the same
// weights (tools/lxt_reference.py: transformers 4.52.4, eager attention, float32, batch 1; Mistral with
// the Llama map's rules, LXT having none for it). The objective is the summed target logit, seeded 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using test_support::ServerProcess;

const char* const kArchitectures[] = {"llama", "llama3-scaled", "mistral", "qwen2", "gpt2"};
const char* const kRules[] = {"attn_lrp", "cp_lrp"};

const nlohmann::json& Reference() {
  static const nlohmann::json* reference = [] {
    std::ifstream in(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/lxt_reference.json"));
    return new nlohmann::json(nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false));
  }();
  return *reference;
}

// The first ours.size() entries of `reference` (LXT scores every input position; features are the
// prompt's), and max |ours - reference| over them divided by the largest |reference| there.
double ScaledError(const std::vector<double>& ours, const std::vector<double>& reference) {
  EXPECT_LE(ours.size(), reference.size());
  double scale = 0, error = 0;
  for (size_t i = 0; i < ours.size() && i < reference.size(); ++i) {
    scale = std::max(scale, std::abs(reference[i]));
    error = std::max(error, std::abs(ours[i] - reference[i]));
  }
  return scale > 0 ? error / scale : error;
}

struct Case {
  std::string model, rule;
};

class LrpMatchesLxt : public ::testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() {
    const std::vector<std::string> models(std::begin(kArchitectures), std::end(kArchitectures));
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
    ASSERT_FALSE(Reference().is_discarded()) << "no lxt_reference.json (ctest fixture make_lxt_reference)";
    model_ = &Reference()["models"][GetParam().model];
    prompt_ = (*model_)["prompt"].get<std::vector<int64_t>>();
    target_ = (*model_)["target"].get<std::vector<int64_t>>();
  }
  client::AttributeOptions Options() const {
    return {.model = GetParam().model,
            .prompt_ids = prompt_,
            .target_ids = target_,
            .method = GetParam().rule,
            .quantity = "logit"};
  }

  static absl::Status start_status_;
  static ServerProcess* server_;
  static client::AttributionClient* client_;
  const nlohmann::json* model_ = nullptr;
  std::vector<int64_t> prompt_, target_;
};

absl::Status LrpMatchesLxt::start_status_;
ServerProcess* LrpMatchesLxt::server_ = nullptr;
client::AttributionClient* LrpMatchesLxt::client_ = nullptr;

// Per prompt token within 1e-4 of the largest |relevance|, per target token too (the token matrix),
// and the objective within 1e-5 relative.
TEST_P(LrpMatchesLxt, RelevancePerTokenAndPerTargetToken) {
  client::AttributeOptions options = Options();
  options.want_token_matrix = true;
  absl::StatusOr<client::Attribution> result = client_->Attribute(options);
  ASSERT_THAT(result, IsOk());
  const nlohmann::json& expected = (*model_)[GetParam().rule];
  ASSERT_EQ(result->sequence.size(), prompt_.size());
  const double error = ScaledError(result->sequence, expected["relevance"].get<std::vector<double>>());
  std::cout << GetParam().model << " " << GetParam().rule << ": scaled error " << error << "\n";
  EXPECT_LT(error, 1e-4);
  const double objective = expected["objective"].get<double>();
  EXPECT_NEAR(result->objective, objective, 1e-5 * std::max(1.0, std::abs(objective)));
  ASSERT_EQ(result->token_matrix.size(), target_.size());
  for (size_t j = 0; j < target_.size(); ++j) {
    SCOPED_TRACE(absl::StrCat("target token ", j));
    EXPECT_LT(ScaledError(result->token_matrix[j], expected["token_matrix"][j].get<std::vector<double>>()), 1e-4);
  }
}

// The rules change the answer: plain gradient × input on the same call is far from LXT's relevance
// (so the parity above is not gradient × input agreeing with itself), and equals LXT's unpatched one.
TEST_P(LrpMatchesLxt, DiffersFromInputXGradientWhichMatchesTheUnpatchedModel) {
  client::AttributeOptions options = Options();
  options.method = "input_x_gradient";
  absl::StatusOr<client::Attribution> plain = client_->Attribute(options);
  ASSERT_THAT(plain, IsOk());
  EXPECT_LT(ScaledError(plain->sequence, (*model_)["input_x_gradient"].get<std::vector<double>>()), 1e-4);
  EXPECT_GT(ScaledError(plain->sequence, (*model_)[GetParam().rule]["relevance"].get<std::vector<double>>()), 1e-2);
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const char* model : kArchitectures) {
    for (const char* rule : kRules) cases.push_back({model, rule});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(EveryArchitecture, LrpMatchesLxt, ::testing::ValuesIn(AllCases()), [](const auto& info) {
  std::string name = info.param.model + "_" + info.param.rule;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
});

// Contrastive: relevance of Σ logit(target) − Σ logit(foil), as LXT gives it for that objective.
TEST(LrpContrastive, TargetMinusFoilMatchesLxt) {
  ASSERT_FALSE(Reference().is_discarded());
  const nlohmann::json& llama = Reference()["models"]["llama"];
  auto server = ServerProcess::Start(
      {absl::StrCat("--model=llama=", ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/llama"), "--dtype=float32"});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  for (const char* rule : kRules) {
    SCOPED_TRACE(rule);
    const nlohmann::json& expected = llama["contrastive"][rule];
    absl::StatusOr<client::Attribution> result =
        (*client)->Attribute({.model = "llama",
                              .prompt_ids = llama["prompt"].get<std::vector<int64_t>>(),
                              .target_ids = llama["target"].get<std::vector<int64_t>>(),
                              .method = rule,
                              .quantity = "logit",
                              .foil_ids = llama["contrastive"]["foil"].get<std::vector<int64_t>>()});
    ASSERT_THAT(result, IsOk());
    EXPECT_LT(ScaledError(result->sequence, expected["relevance"].get<std::vector<double>>()), 1e-4);
    EXPECT_NEAR(result->objective, expected["objective"].get<double>(), 1e-5);
  }
}

}  // namespace
}  // namespace attribution
