// SPDX-License-Identifier: Apache-2.0
// What users mean by a text target and by "the prompt's features", through the real server binary:
// text targets are scored as the prompt's continuation (as transformers tokenizes prompt + target),
// SEPARATE tokenizes them alone (Captum's way), a target that splits a token is refused with both
// tokenizations; special tokens are no features by default and are shown as fixed tokens. Models:
// the SentencePiece default model and byte-level BPE models with a bos template and chat-template
// control tokens; references from tools/token_semantics_reference.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using test_support::ServerProcess;
using ::testing::AllOf;
using ::testing::HasSubstr;

const nlohmann::json& References() {
  static const nlohmann::json* references = [] {
    std::ifstream in(ATTRIBUTION_TOKEN_SEMANTICS_DIR "/token_semantics.json");
    return new nlohmann::json(nlohmann::json::parse(in));
  }();
  return *references;
}

std::vector<int64_t> Ids(const std::vector<client::Token>& tokens) {
  std::vector<int64_t> ids;
  for (const client::Token& t : tokens) ids.push_back(t.id);
  return ids;
}

std::vector<int64_t> Ids(const client::Logprobs& logprobs) {
  std::vector<int64_t> ids;
  for (const client::TokenLogprob& t : logprobs.target) ids.push_back(t.token.id);
  return ids;
}

// Runs attribution-cli with `args`; its standard output (stderr appended) and exit code.
std::pair<std::string, int> RunCli(const std::string& args) {
  FILE* pipe = ::popen(absl::StrCat(ATTRIBUTION_CLI_BINARY, " ", args, " 2>&1").c_str(), "r");
  std::string out;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
  const int status = ::pclose(pipe);
  return {out, WEXITSTATUS(status)};
}

class TokenSemanticsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string models;
    for (const auto& [name, model] : References().items()) {
      absl::StrAppend(&models, models.empty() ? "" : ",", name, "=", model["dir"].get<std::string>());
    }
    auto started = ServerProcess::Start({"--model=" + models});
    ASSERT_THAT(started, IsOk());
    server_ = started->release();
    client_ = std::move(*client::AttributionClient::Connect({.target = server_->address()})).release();
  }
  static void TearDownTestSuite() {
    delete client_;
    delete server_;
  }
  static ServerProcess* server_;
  static client::AttributionClient* client_;
};
ServerProcess* TokenSemanticsTest::server_ = nullptr;
client::AttributionClient* TokenSemanticsTest::client_ = nullptr;

TEST_F(TokenSemanticsTest, TextTargetsAreTheTokensThatFollowThePromptAsTransformersTokenizesThem) {
  int checked = 0, refused = 0;
  for (const auto& [name, model] : References().items()) {
    for (const nlohmann::json& c : model["cases"]) {
      const std::string prompt = c["prompt"], target = c["target"];
      SCOPED_TRACE(absl::StrCat(name, ": \"", prompt, "\" + \"", target, "\""));
      absl::StatusOr<client::Logprobs> scored =
          client_->GetLogprobs({.model = name, .prompt = prompt, .target = target});
      if (c["continuation"].is_null()) {
        EXPECT_THAT(scored, StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr("target: the text does not start on a token boundary")));
        EXPECT_THAT(scored.status().message(), HasSubstr("but prompt + target tokenize as"));
        ++refused;
        continue;
      }
      ASSERT_THAT(scored, IsOk());
      EXPECT_EQ(Ids(*scored), c["continuation"].get<std::vector<int64_t>>());
      ++checked;
    }
  }
  EXPECT_EQ(checked, 30);
  EXPECT_EQ(refused, 2);  // "Hello wor" + "ld" merges into one token in both byte-level models
}

TEST_F(TokenSemanticsTest, SeparateTokenizesTheTargetAlone) {
  for (const auto& [name, model] : References().items()) {
    for (const nlohmann::json& c : model["cases"]) {
      SCOPED_TRACE(absl::StrCat(name, ": \"", c["target"].get<std::string>(), "\""));
      absl::StatusOr<client::Logprobs> scored = client_->GetLogprobs(
          {.model = name, .prompt = c["prompt"], .target = c["target"], .target_tokenization = "separate"});
      ASSERT_THAT(scored, IsOk());
      EXPECT_EQ(Ids(*scored), c["separate"].get<std::vector<int64_t>>());
    }
  }
}

TEST_F(TokenSemanticsTest, AttributeScoresTheContinuationForTargetAndFoil) {
  const nlohmann::json& c = References()["default"]["cases"][0];  // " No" after "... A:"
  absl::StatusOr<client::Attribution> a = client_->Attribute(
      {.model = "default", .prompt = c["prompt"], .target = c["target"], .method = "feature_ablation", .foil = " Yes"});
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(Ids(a->target_tokens), c["continuation"].get<std::vector<int64_t>>());
  EXPECT_EQ(a->target_tokens[0].text, " No");
  EXPECT_EQ(a->target_tokens[0].char_begin, 0);
  EXPECT_EQ(a->target_tokens[0].char_end, 3);
  EXPECT_GT(a->objective, 2);  // log p(No) - log p(Yes): the model answers No to "Is it big?" of a tiny cup
}

// The README's logprobs example: the answer the model gives with probability ~1 scores ~0, and the CLI
// names the scored tokens first.
TEST_F(TokenSemanticsTest, ReadmeLogprobsCommandsScoreTheMeantTokens) {
  auto [out, code] = RunCli(absl::StrCat("logprobs --server ", server_->address(), " --model default",
                                         " --prompt 'The cup is tiny. Q: Is it big? A:' --target ' No' --top_k 3"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.rfind("target tokens (1): \" No\" #292\n", 0), 0u) << out;
  double total = -1e9;
  ASSERT_EQ(std::sscanf(out.substr(out.find("total log-prob")).c_str(), "total log-prob %lf", &total), 1) << out;
  EXPECT_GT(total, -0.05) << out;

  std::tie(out, code) = RunCli(absl::StrCat("logprobs --server ", server_->address(), " --model default",
                                            " --prompt 'The capital of France is' --target ' Paris'"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.rfind("target tokens (3): \" P\" #429 \"ar\" #272 \"is\" #328\n", 0), 0u) << out;
}

TEST_F(TokenSemanticsTest, GeneratedTextPassedBackAsTargetScoresTheGeneratedTokens) {
  const std::vector<std::string> prompts = {
      "The kettle is red. Q: Is it warm? A:", "The box is huge. Q: Is it small? A:",
      "Ann lives in York. The kettle is red. Q: Is the kettle warm? A:",
      "The cup is tiny. Q: Is it big? A: No. The rope is"};
  for (const std::string& prompt : prompts) {
    SCOPED_TRACE(prompt);
    absl::StatusOr<client::Generation> generated =
        client_->Generate({.model = "default", .prompt = prompt, .generation = {.max_new_tokens = 6}});
    ASSERT_THAT(generated, IsOk());
    std::vector<int64_t> expected;
    for (const client::Token& t : generated->tokens) {
      if (!t.special) expected.push_back(t.id);  // a stop token ends the text, it is not part of it
    }
    ASSERT_FALSE(expected.empty());
    absl::StatusOr<client::Attribution> a = client_->Attribute(
        {.model = "default", .prompt = prompt, .target = generated->text, .method = "feature_ablation"});
    ASSERT_THAT(a, IsOk());
    EXPECT_EQ(Ids(a->target_tokens), expected) << "generated text \"" << generated->text << "\"";
  }
}

TEST_F(TokenSemanticsTest, SpecialTokensAreFixedByDefaultAndFeaturesWhenIncluded) {
  for (const auto& [name, model] : References().items()) {
    for (const nlohmann::json& p : model["prompts"]) {
      SCOPED_TRACE(absl::StrCat(name, ": ", p["prompt"].get<std::string>()));
      const auto ids = p["ids"].get<std::vector<int64_t>>();
      const auto special = p["special"].get<std::vector<bool>>();
      std::vector<int64_t> fixed, features;
      for (size_t i = 0; i < ids.size(); ++i) (special[i] ? fixed : features).push_back(static_cast<int64_t>(i));
      client::AttributeOptions options{
          .model = name, .prompt = p["prompt"], .target = " yes", .method = "feature_ablation"};
      absl::StatusOr<client::Attribution> a = client_->Attribute(options);
      ASSERT_THAT(a, IsOk());
      ASSERT_EQ(Ids(a->prompt_tokens), ids);
      std::vector<int64_t> feature_tokens;
      for (const client::Feature& f : a->features) {
        EXPECT_EQ(f.token_end, f.token_begin + 1);
        feature_tokens.push_back(f.token_begin);
      }
      EXPECT_EQ(feature_tokens, features);
      EXPECT_EQ(a->fixed_tokens, fixed);
      for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(a->prompt_tokens[i].special, special[i]) << i;

      options.include_special_tokens = true;
      absl::StatusOr<client::Attribution> all = client_->Attribute(options);
      ASSERT_THAT(all, IsOk());
      EXPECT_EQ(all->features.size(), ids.size());
      EXPECT_TRUE(all->fixed_tokens.empty());
    }
  }
}

// A special token's string in the text is that token, as transformers reads it: "</s>" in a prompt is
// eos (not the characters <, /, s, >), special, so no feature by default, with its characters as its
// text; as a target it scores eos.
TEST_F(TokenSemanticsTest, SpecialTokenStringsInTheTextAreTheSpecialTokens) {
  const std::string prompt = "<s>The cup is tiny.</s>Q: Is it big? A:";
  const nlohmann::json* reference = nullptr;
  for (const nlohmann::json& p : References()["default"]["prompts"]) {
    if (p["prompt"] == prompt) reference = &p;
  }
  ASSERT_NE(reference, nullptr);
  absl::StatusOr<client::Attribution> a =
      client_->Attribute({.model = "default", .prompt = prompt, .target = " No", .method = "feature_ablation"});
  ASSERT_THAT(a, IsOk());
  ASSERT_EQ(Ids(a->prompt_tokens), (*reference)["ids"].get<std::vector<int64_t>>());
  ASSERT_EQ(a->prompt_tokens[7].id, 2);
  EXPECT_EQ(a->prompt_tokens[0].text, "<s>");  // the bos the tokenizer adds, at no character
  EXPECT_EQ(a->prompt_tokens[0].char_begin, a->prompt_tokens[0].char_end);
  for (const auto& [position, text] : std::vector<std::pair<size_t, std::string>>{{1, "<s>"}, {7, "</s>"}}) {
    const client::Token& token = a->prompt_tokens[position];
    EXPECT_TRUE(token.special) << position;
    EXPECT_EQ(token.text, text);
    EXPECT_EQ(token.char_begin, static_cast<int64_t>(prompt.find(text)));
    EXPECT_EQ(token.char_end, static_cast<int64_t>(prompt.find(text) + text.size()));
  }
  EXPECT_EQ(a->fixed_tokens, (std::vector<int64_t>{0, 1, 7}));
  EXPECT_EQ(a->features.size(), a->prompt_tokens.size() - 3);
  EXPECT_EQ(Ids(a->target_tokens), (std::vector<int64_t>{292}));

  for (const std::string tokenization : {"continuation", "separate"}) {
    absl::StatusOr<client::Logprobs> eos = client_->GetLogprobs(
        {.model = "default", .prompt = prompt, .target = "</s>", .target_tokenization = tokenization});
    ASSERT_THAT(eos, IsOk());
    EXPECT_EQ(Ids(*eos), (std::vector<int64_t>{2})) << tokenization;
  }
  absl::StatusOr<client::Generation> generated =
      client_->Generate({.model = "default", .prompt = prompt, .generation = {.max_new_tokens = 4}});
  ASSERT_THAT(generated, IsOk());
  EXPECT_FALSE(generated->tokens.empty());
}

// Stop strings are found in the generated text, which leaves special tokens out: "</s>" or "<|im_start|>" as a
// stop string never stopped a generation that produced that token (while a prompt or target spelled so is the
// token). Alone it now stops as its id does; inside other text, where it could never match, it is refused.
TEST_F(TokenSemanticsTest, AStopStringOfASpecialTokenStopsAsItsIdAndOneInsideTextIsRefused) {
  for (const auto& [model, special] : {std::pair{"default", "</s>"}, std::pair{"chat", "<|im_start|>"}}) {
    absl::StatusOr<client::Logprobs> as_target =
        client_->GetLogprobs({.model = model, .prompt = "Q: Is it big? A:", .target = special});
    ASSERT_THAT(as_target, IsOk());
    ASSERT_EQ(as_target->target.size(), 1u) << model;
    const int64_t id = as_target->target[0].token.id;
    EXPECT_THAT(client_->Generate({.model = model,
                                   .prompt = "Q: Is it big? A:",
                                   .generation = {.max_new_tokens = 4},
                                   .stop = {"A:", absl::StrCat("end", special)}}),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr(absl::StrCat("stop[1]: holds the special token \"", special, "\" (id ", id)),
                               HasSubstr("generation.stop_token_ids"))))
        << model;
    // Sampled until the token comes: by the string, the generation ends there, as it does by the id.
    bool compared = false;
    for (uint64_t seed = 1; seed <= 40 && !compared; ++seed) {
      const client::GenerationSettings sampled{.max_new_tokens = 24, .temperature = 3, .seed = seed};
      absl::StatusOr<client::Generation> by_id =
          client_->Generate({.model = model, .prompt = "Q: Is it big? A:", .generation = [&] {
                               client::GenerationSettings s = sampled;
                               s.stop_token_ids = {id};
                               return s;
                             }()});
      ASSERT_THAT(by_id, IsOk());
      if (by_id->tokens.empty() || by_id->tokens.back().id != id) continue;  // this seed never made the token
      absl::StatusOr<client::Generation> by_string =
          client_->Generate({.model = model, .prompt = "Q: Is it big? A:", .generation = sampled, .stop = {special}});
      ASSERT_THAT(by_string, IsOk());
      EXPECT_EQ(Ids(by_string->tokens), Ids(by_id->tokens)) << model << " seed " << seed;
      EXPECT_TRUE(by_string->stopped);
      compared = true;
    }
    EXPECT_TRUE(compared) << model << ": no seed of 40 generated " << special;
  }
}

// A prompt sent as the ids a call answered with scores the same target as the prompt sent as text. The ids were
// decoded without their special tokens, which joined the text on either side of "</s>": " No" after it became
// [" No"] (-0.095) where the text prompt (and libsentencepiece on prompt + target) has ["▁", "▁No"] (-25.6).
TEST_F(TokenSemanticsTest, AnIdsPromptScoresTheTargetAsTheSamePromptAsText) {
  const std::string prompt = "The cup is tiny. Q: Is it big? A:</s>";
  const std::vector<std::pair<std::string, std::vector<int64_t>>> targets = {
      {" No", {3938, 292}}, {"No", {292}}, {"\nNo", {3938, 13, 3969, 3945}}};
  for (const auto& [target, expected] : targets) {
    SCOPED_TRACE(target);
    absl::StatusOr<client::Logprobs> as_text =
        client_->GetLogprobs({.model = "default", .prompt = prompt, .target = target});
    ASSERT_THAT(as_text, IsOk());
    EXPECT_EQ(Ids(*as_text), expected);
    absl::StatusOr<client::Logprobs> as_ids =
        client_->GetLogprobs({.model = "default", .prompt_ids = Ids(as_text->prompt_tokens), .target = target});
    ASSERT_THAT(as_ids, IsOk());
    EXPECT_EQ(Ids(*as_ids), expected);
    EXPECT_EQ(as_ids->total_log_prob, as_text->total_log_prob);
  }
  // The unknown piece, named in text, splits it too; text after the split keeps its leading space.
  for (const std::string& split : {std::string("The cup is tiny.<unk>"), std::string("A:</s> Yes")}) {
    for (const std::string target : {"dog", " dog"}) {
      SCOPED_TRACE(split + target);
      absl::StatusOr<client::Logprobs> as_text =
          client_->GetLogprobs({.model = "default", .prompt = split, .target = target});
      ASSERT_THAT(as_text, IsOk());
      absl::StatusOr<client::Logprobs> as_ids =
          client_->GetLogprobs({.model = "default", .prompt_ids = Ids(as_text->prompt_tokens), .target = target});
      ASSERT_THAT(as_ids, IsOk());
      EXPECT_EQ(Ids(*as_ids), Ids(*as_text));
    }
  }
}

TEST_F(TokenSemanticsTest, CliShowsTargetTokensFirstAndFixedTokensApart) {
  auto [out, code] = RunCli(absl::StrCat("attribute --server ", server_->address(), " --model default --nocolor",
                                         " --prompt 'The kettle is red. Q: Is it warm? A:' --target ' Yes'",
                                         " --method feature_ablation"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.rfind("target tokens (1): \" Yes\" #", 0), 0u) << out;
  EXPECT_THAT(out, HasSubstr("(<s>) [The] "));
  EXPECT_THAT(out, HasSubstr(": fixed tokens, kept real in every row (not features)"));
}

// `generate --stream` prints what `generate` prints: it printed each token's own text, so a character
// that the byte-level tokenizer split across tokens showed as U+FFFD per piece ("��" for 斩 here) and the
// eos that ended a generation as "<|endoftext|>". These seeds' samples (temperature 3) hold such
// characters; the text without --stream is the server's, checked against transformers' decode elsewhere.
TEST_F(TokenSemanticsTest, CliStreamPrintsTheGeneratedTextAsTheAnswerHasIt) {
  for (int seed : {1, 6, 19}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    const std::string generate = absl::StrCat("generate --server ", server_->address(), " --model bytelevel",
                                              " --prompt 'A:' --temperature 3 --max_new_tokens 30 --seed ", seed);
    auto [whole, whole_code] = RunCli(generate);
    auto [streamed, streamed_code] = RunCli(generate + " --stream");
    ASSERT_EQ(whole_code, 0) << whole;
    ASSERT_EQ(streamed_code, 0) << streamed;
    EXPECT_EQ(streamed, whole);
  }
}

// A byte-level BPE splits characters it has not merged (☃, 😀) into tokens of single bytes: their text
// must still be valid UTF-8 (or clients fail the whole call) and their bytes must lose nothing.
TEST_F(TokenSemanticsTest, TokenTextIsValidUtf8AndTokenBytesKeepEveryByte) {
  const std::string prompt = "A snowman \xE2\x98\x83 and a grin \xF0\x9F\x98\x80 split into bytes";
  absl::StatusOr<client::Attribution> a =
      client_->Attribute({.model = "bytelevel", .prompt = prompt, .target = " yes", .method = "feature_ablation"});
  ASSERT_THAT(a, IsOk());
  std::string bytes;
  int partial = 0;
  for (const client::Token& t : a->prompt_tokens) {
    EXPECT_THAT(engine::CheckUtf8(t.text), IsOk()) << t.id;
    if (!t.special) bytes += t.bytes;
    partial += t.text.find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_EQ(bytes, prompt);
  EXPECT_GE(partial, 2);  // the test does meet tokens holding part of a character
  for (const client::Feature& f : a->features) EXPECT_THAT(engine::CheckUtf8(f.text), IsOk()) << f.token_begin;

  absl::StatusOr<client::Logprobs> scored =
      client_->GetLogprobs({.model = "bytelevel", .prompt = "A grin", .target = " \xF0\x9F\x98\x80", .top_k = 20});
  ASSERT_THAT(scored, IsOk());
  for (const client::TokenLogprob& t : scored->target) {
    for (const client::Token& top : t.top) EXPECT_THAT(engine::CheckUtf8(top.text), IsOk()) << top.id;
  }
  // A random model samples byte tokens freely: whatever it ends on, the text stays valid.
  for (uint64_t seed = 0; seed < 8; ++seed) {
    absl::StatusOr<client::Generation> g = client_->Generate(
        {.model = "bytelevel",
         .prompt = prompt,
         .generation = {.max_new_tokens = 24, .temperature = 1.5, .seed = seed, .ignore_stop_tokens = true}});
    ASSERT_THAT(g, IsOk());
    EXPECT_THAT(engine::CheckUtf8(g->text), IsOk()) << seed;
    std::string generated;
    for (const client::Token& t : g->tokens) {
      EXPECT_THAT(engine::CheckUtf8(t.text), IsOk()) << t.id;
      if (!t.special) generated += t.bytes;
    }
    EXPECT_EQ(g->text_bytes, generated) << seed;
  }
}

// Whether the feature with the highest attribution covers a character of a decisive span (the held-out
// prompts are ASCII: characters are bytes).
bool TopFeatureIsDecisive(const client::Attribution& a, const nlohmann::json& decisive_spans) {
  const size_t top = std::max_element(a.sequence.begin(), a.sequence.end()) - a.sequence.begin();
  const int64_t begin = a.prompt_tokens[a.features[top].token_begin].char_begin;
  const int64_t end = a.prompt_tokens[a.features[top].token_end - 1].char_end;
  for (const nlohmann::json& span : decisive_spans) {
    if (begin < span[1].get<int64_t>() && span[0].get<int64_t>() < end) return true;
  }
  return false;
}

// The published faithfulness numbers describe what a user gets: the API's defaults (features, baseline,
// target tokenization) on the default model's 600 held-out questions, whose decisive words are known.
TEST_F(TokenSemanticsTest, ApiDefaultsPutTheDecisiveWordFirstOnHeldOutQuestions) {
  std::ifstream in(References()["default"]["dir"].get<std::string>() + "/heldout.jsonl");
  std::vector<nlohmann::json> questions;
  for (std::string line; std::getline(in, line);) questions.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(questions.size(), 600u);
  for (const std::string method : {"integrated_gradients", "feature_ablation"}) {
    std::mutex mu;
    std::condition_variable cv;
    size_t in_flight = 0, answered = 0;
    std::map<std::string, std::pair<int, int>> hits;  // task -> (hits, questions)
    for (const nlohmann::json& q : questions) {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight < 16; });
      ++in_flight;
      lock.unlock();
      // The file's targets are the answer words; the model reads them after "A:" as " Yes" / " No".
      client_->AttributeAsync({.model = "default",
                               .prompt = q["prompt"],
                               .target = absl::StrCat(" ", q["target"].get<std::string>()),
                               .method = method,
                               .n_steps = 32},
                              [&, q](absl::StatusOr<client::Attribution> a) {
                                std::lock_guard<std::mutex> lock(mu);
                                EXPECT_THAT(a, IsOk());
                                auto& [hit, count] = hits[q["task"]];
                                hit += a.ok() && TopFeatureIsDecisive(*a, q["decisive_spans"]);
                                ++count;
                                --in_flight;
                                ++answered;
                                cv.notify_all();
                              });
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return answered == questions.size(); });
    ASSERT_EQ(hits.size(), 3u);
    for (const auto& [task, counts] : hits) {
      const double top1 = static_cast<double>(counts.first) / counts.second;
      std::cout << "[ defaults ] " << method << " " << task << ": top-1 " << top1 << " of " << counts.second << "\n";
      EXPECT_GE(top1, 0.95) << method << " " << task;
    }
  }
}

}  // namespace
}  // namespace attribution
