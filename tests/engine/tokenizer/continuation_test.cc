// SPDX-License-Identifier: Apache-2.0
// Continuations against transformers (tools/token_semantics_reference.py): the tokens after the
// prompt's own equal transformers' tokenization of prompt + target minus the prompt's; a target that
// changes the prompt's last token is refused naming both; decoding a continuation in context and
// encoding the text again gives the same ids (a generated text passed back as a target).
#include "engine/tokenizer/continuation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

class ContinuationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::ifstream in(ATTRIBUTION_TOKEN_SEMANTICS_DIR "/token_semantics.json");
    reference_ = nlohmann::json::parse(in)[GetParam()];
    tokenizer_ = std::move(*Tokenizer::Load(reference_["dir"]));
  }
  nlohmann::json reference_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(ContinuationTest, EncodesAsTransformersTokenizesPromptPlusTarget) {
  for (const nlohmann::json& c : reference_["cases"]) {
    const std::string prompt = c["prompt"], target = c["target"];
    SCOPED_TRACE("\"" + prompt + "\" + \"" + target + "\"");
    absl::StatusOr<Encoding> encoding = EncodeContinuation(*tokenizer_, prompt, target);
    if (c["continuation"].is_null()) {
      EXPECT_THAT(encoding,
                  StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not start on a token boundary")));
      continue;
    }
    ASSERT_THAT(encoding, IsOk());
    EXPECT_EQ(encoding->ids, c["continuation"].get<std::vector<int64_t>>());
    ASSERT_EQ(encoding->spans.size(), encoding->ids.size());
    EXPECT_LE(encoding->spans.back().end, target.size());
  }
}

TEST_P(ContinuationTest, DecodedContinuationEncodesToTheSameIds) {
  for (const nlohmann::json& c : reference_["cases"]) {
    if (c["continuation"].is_null()) continue;
    const std::string prompt = c["prompt"];
    const auto ids = c["continuation"].get<std::vector<int64_t>>();
    // A special token (" No</s>" ends in eos) decodes to no text, as a stop token that ended a generation.
    if (std::any_of(ids.begin(), ids.end(), [&](int64_t id) { return tokenizer_->IsSpecial(id); })) continue;
    const Continuation decoded = DecodeContinuation(*tokenizer_, tokenizer_->Encode(prompt, true)->ids, ids);
    SCOPED_TRACE("\"" + prompt + "\" + \"" + decoded.text + "\"");
    absl::StatusOr<Encoding> again = EncodeContinuation(*tokenizer_, prompt, decoded.text);
    ASSERT_THAT(again, IsOk());
    EXPECT_EQ(again->ids, ids);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ContinuationTest, ::testing::Values("default", "bytelevel", "chat"));

}  // namespace
}  // namespace attribution::engine
