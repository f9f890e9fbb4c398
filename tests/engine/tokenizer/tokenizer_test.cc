// SPDX-License-Identifier: Apache-2.0
// Our tokenizers give the same ids (and decodings) as the Python `tokenizers` and `sentencepiece`
// libraries on a corpus of 2,200 varied strings per tokenizer kind (tools/make_test_tokenizers.py).
#include "engine/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unicode/locid.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>

#include "absl/strings/escaping.h"
#include "engine/tokenizer/continuation.h"
#include "engine/tokenizer/precompiled_charsmap.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string TokenizersDir() { return ::attribution::test_support::TestTokenizersDir(); }

// A reference file make_test_tokenizers.py wrote beside the tokenizer of `kind` (expected.json, ...).
nlohmann::json ReadReference(const std::string& kind, const std::string& file) {
  std::ifstream in(TokenizersDir() + "/" + kind + "/" + file);
  return nlohmann::json::parse(in);
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto tokenizer = Tokenizer::Load(TokenizersDir() + "/" + GetParam());
    ASSERT_THAT(tokenizer, IsOk());
    tokenizer_ = std::move(*tokenizer);
    expected_ = ReadReference(GetParam(), "expected.json");
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json expected_;
};

TEST_P(TokenizerParity, IdsMatchPythonOnTheWholeCorpus) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  const auto ids = expected_["ids"].get<std::vector<std::vector<int64_t>>>();
  ASSERT_GE(texts.size(), 2000u);
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto encoding = tokenizer_->Encode(texts[i], /*add_special_tokens=*/true);
    ASSERT_THAT(encoding, IsOk());
    if (encoding->ids != ids[i] && ++mismatches <= 3) {
      ADD_FAILURE() << "text " << i << " \"" << texts[i] << "\"\n  ours:   " << ::testing::PrintToString(encoding->ids)
                    << "\n  python: " << ::testing::PrintToString(ids[i]);
    }
  }
  std::cout << "[ tokenize ] " << GetParam() << ": " << texts.size() - mismatches << "/" << texts.size()
            << " strings with identical ids\n";
  EXPECT_EQ(mismatches, 0);
}

TEST_P(TokenizerParity, DecodeMatchesPython) {
  const auto ids = expected_["ids"].get<std::vector<std::vector<int64_t>>>();
  const auto decoded = expected_["decoded"].get<std::vector<std::string>>();
  const bool drops_bos = GetParam() == "sentencepiece";  // the reference decoded without its bos
  int mismatches = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    std::vector<int64_t> tokens(ids[i].begin() + (drops_bos ? 1 : 0), ids[i].end());
    auto text = tokenizer_->Decode(tokens, /*skip_special_tokens=*/false);
    ASSERT_THAT(text, IsOk());
    if (*text != decoded[i] && ++mismatches <= 3) {
      ADD_FAILURE() << "ids of text " << i << "\n  ours:   \"" << *text << "\"\n  python: \"" << decoded[i] << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Ids whose first token is spaces only ("▁▁", no bos before it): the Metaspace decoder drops every "▁" of it.
TEST_P(TokenizerParity, LeadingSpacesDecodeAsPython) {
  if (!expected_.contains("leading_space_ids")) GTEST_SKIP() << "a SentencePiece model: no tokenizer.json decoder";
  const auto ids = expected_["leading_space_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto decoded = expected_["leading_space_decoded"].get<std::vector<std::string>>();
  ASSERT_EQ(ids.size(), decoded.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto text = tokenizer_->Decode(ids[i], /*skip_special_tokens=*/true);
    ASSERT_THAT(text, IsOk());
    EXPECT_EQ(*text, decoded[i]) << ::testing::PrintToString(ids[i]);
  }
}

// A model's embedding often has rows past its tokenizer's tokens (Qwen2: 151936 ids, 151665 tokens) and
// may generate one: such ids decode to nothing, as in Python, and the other ids keep their text, whether
// decoded alone or as a prompt's continuation (where each gets its span and those ids empty ones).
TEST_P(TokenizerParity, IdsPastTheVocabularyDecodeToNothingAsPython) {
  const auto ids = expected_["beyond_vocab_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto decoded = expected_["beyond_vocab_decoded"].get<std::vector<std::string>>();
  ASSERT_EQ(ids.size(), decoded.size());
  ASSERT_FALSE(ids.empty());
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "ids " << ::testing::PrintToString(ids[i]));
    const absl::StatusOr<std::string> text = tokenizer_->Decode(ids[i], /*skip_special_tokens=*/false);
    ASSERT_THAT(text, IsOk());
    EXPECT_EQ(*text, decoded[i]);
    const Continuation continuation = DecodeContinuation(*tokenizer_, {}, ids[i]);
    EXPECT_EQ(continuation.text, decoded[i]);
    ASSERT_EQ(continuation.spans.size(), ids[i].size());
    size_t previous_end = 0;
    for (size_t t = 0; t < ids[i].size(); ++t) {
      const TokenSpan& span = continuation.spans[t];
      EXPECT_LE(span.begin, span.end);
      EXPECT_GE(span.begin, std::min(previous_end, span.end)) << "token " << t;
      if (ids[i][t] >= tokenizer_->vocab_size()) {
        EXPECT_EQ(span.begin, span.end) << "token " << t;
      }
      previous_end = span.end;
    }
    EXPECT_EQ(continuation.spans.back().end, decoded[i].size());
  }
}

TEST_P(TokenizerParity, SpansLieInTheTextInOrder) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  for (size_t i = 0; i < 300; ++i) {
    auto encoding = tokenizer_->Encode(texts[i], true);
    ASSERT_THAT(encoding, IsOk());
    size_t previous_begin = 0;
    for (const TokenSpan& span : encoding->spans) {
      ASSERT_LE(span.begin, span.end);
      ASSERT_LE(span.end, texts[i].size());
      ASSERT_GE(span.begin, previous_begin) << "text " << i;
      previous_begin = span.begin;
    }
  }
}

TEST_P(TokenizerParity, RejectsInvalidUtf8NamingTheByte) {
  for (const std::string& bad :
       {std::string("ok \xff"), std::string("\xc3"), std::string("a\xed\xa0\x80"), std::string("\xc0\xaf")}) {
    auto encoding = tokenizer_->Encode(bad, true);
    EXPECT_THAT(encoding, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not valid UTF-8 at byte")));
  }
  EXPECT_THAT(tokenizer_->Decode({-1}, false), StatusIs(absl::StatusCode::kInvalidArgument));
}

// gpt2_*: the gpt2 tokenizer with Digits or Split (merging delimiters with the piece before or after) before its
// ByteLevel pre-tokenizer, on texts with numbers that are not decimal digits ("²", "½", "Ⅻ") and delimiter runs.
INSTANTIATE_TEST_SUITE_P(AllKinds, TokenizerParity,
                         ::testing::Values("gpt2", "llama3", "qwen2", "llama2", "metaspace", "sentencepiece",
                                           "gpt2_digits", "gpt2_digit_runs", "gpt2_merged_with_previous",
                                           "gpt2_merged_with_next"));

TEST(Tokenizer, SpansOfAsciiWordsCoverTheirText) {
  auto tokenizer = Tokenizer::Load(TokenizersDir() + "/gpt2");
  ASSERT_THAT(tokenizer, IsOk());
  const std::string text = "Is it true that vaccines cause autism?";
  auto encoding = (*tokenizer)->Encode(text, false);
  ASSERT_THAT(encoding, IsOk());
  std::string rebuilt;
  for (const TokenSpan& span : encoding->spans) rebuilt += text.substr(span.begin, span.end - span.begin);
  EXPECT_EQ(rebuilt, text);
}

// A tokenizer.json of `json_text` loaded as the server loads one.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& json_text) {
  test_support::TempDir dir;
  std::ofstream(dir.File("tokenizer.json")) << json_text;
  return Tokenizer::Load(dir.path());
}

// Found with tests/fuzz/tokenizer_json_fuzzer: an added token's id past the BPE vocabulary made ids in
// between count as part of the vocabulary, and decoding one read past the token table.
// Byte-fallback tokens decode as their own library decodes them: in tokenizer.json's vocabulary (Llama's and
// Mistral's), the `tokenizers` library writes a run whose bytes are not UTF-8 as one U+FFFD per token, valid bytes
// among them too (replacing only the ill-formed bytes gave "7\uFFFD" for "<0x37><0x9D>" where transformers gives
// "\uFFFD\uFFFD"); libsentencepiece one U+FFFD per byte that starts no character. The exact bytes stay in the
// continuation (Generate's text_bytes): libsentencepiece's replacements were in it, 3 bytes for 1.
class ByteRuns : public ::testing::TestWithParam<std::string> {};

TEST_P(ByteRuns, DecodeAsTheirLibraryDoesAndKeepTheirBytes) {
  auto tokenizer = Tokenizer::Load(TokenizersDir() + "/" + GetParam());
  ASSERT_THAT(tokenizer, IsOk());
  const nlohmann::json runs = ReadReference(GetParam(), "byte_runs.json");
  int replaced = 0;
  for (size_t r = 0; r < runs["ids"].size(); ++r) {
    const auto ids = runs["ids"][r].get<std::vector<int64_t>>();
    const std::string expected = runs["decoded"][r];
    const Continuation decoded = DecodeContinuation(**tokenizer, {}, ids);
    EXPECT_EQ(DecodedText(**tokenizer, ids, decoded.text, decoded.spans), expected)
        << "run " << r << ", bytes \"" << absl::CHexEscape(decoded.text) << "\"";
    if (ToValidUtf8(decoded.text) != expected) ++replaced;
    ASSERT_EQ(decoded.spans.size(), ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {  // each byte token's span holds its one byte
      if (!(*tokenizer)->IsFallbackByte(ids[i])) continue;
      const TokenSpan span = decoded.spans[i];
      EXPECT_EQ(decoded.text.substr(span.begin, span.end - span.begin), (*tokenizer)->TokenText(ids[i]))
          << "run " << r << ", token " << i;
    }
  }
  EXPECT_GT(replaced, 5);  // runs the rule decides: ToValidUtf8 of their bytes is not their text
}

INSTANTIATE_TEST_SUITE_P(Kinds, ByteRuns, ::testing::Values("llama2_vocabulary_bytes", "sentencepiece"));

TEST(HfTokenizerFile, IdsInAGapOfTheVocabularyAreNoTokens) {
  auto tokenizer = LoadTokenizerJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": 100, "content": "<x>"}]})");
  ASSERT_THAT(tokenizer, IsOk());
  EXPECT_EQ((*tokenizer)->vocab_size(), 101);
  // As the `tokenizers` library's decode: such an id adds nothing (its decode of [50] is '').
  EXPECT_EQ((*tokenizer)->Decode({50}, false).value_or("<error>"), "");
  EXPECT_EQ((*tokenizer)->TokenText(50), "");
  EXPECT_EQ((*tokenizer)->Decode({0, 50, 1}, false).value_or("?"), (*tokenizer)->Decode({0, 1}, false).value_or("!"));
  EXPECT_THAT((*tokenizer)->Decode({0, 100}, false), IsOk());
}

// An added token's content goes through the decoder as the vocabulary's tokens do, as the `tokenizers` library
// decodes them (<kind>/decoding.json): "ĠZqx" decodes to " Zqx" in gpt2 (a token with a character outside the
// byte alphabet, "Ġ中", is its content's own bytes), "▁foo" to " foo" and "<0x41>" to "A" in llama2 and metaspace.
// A token with "normalized" decodes as its normalized form: "ﬁne" as "fine" and "[SPAN]" as "[span]" under
// NFKC + Lowercase (added_lowercase), "Hello World" as " Hello World" after Llama 2's normalizer (added_llama2);
// a special one is skipped only where that form is a special token's content, as the library skips it.
class AddedTokenDecoding : public ::testing::TestWithParam<std::string> {};

TEST_P(AddedTokenDecoding, MatchesTheTokenizersLibrary) {
  auto tokenizer = Tokenizer::Load(TokenizersDir() + "/" + GetParam());
  ASSERT_THAT(tokenizer, IsOk());
  const nlohmann::json expected = ReadReference(GetParam(), "decoding.json");
  const auto sequences = expected["ids"].get<std::vector<std::vector<int64_t>>>();
  ASSERT_GE(sequences.size(), 300u);
  for (size_t i = 0; i < sequences.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "ids " << ::testing::PrintToString(sequences[i]));
    for (const bool skip : {false, true}) {
      absl::StatusOr<std::string> text = (*tokenizer)->Decode(sequences[i], skip);
      ASSERT_THAT(text, IsOk());
      EXPECT_EQ(ToValidUtf8(*text), expected[skip ? "decoded_skipping_special" : "decoded"][i].get<std::string>())
          << "skip_special_tokens " << skip;
    }
    if (sequences[i].size() == 1) {  // gpt2's only: a token's text keeps the space the others' decoders strip
      EXPECT_EQ(ToValidUtf8((*tokenizer)->TokenText(sequences[i][0])), expected["decoded"][i].get<std::string>());
    }
  }
  // A token's text is what it adds to the text before it, so with the space that starts it.
  const auto token_ids = expected["token_ids"].get<std::vector<int64_t>>();
  ASSERT_EQ(token_ids.size(), expected["token_texts"].size());
  for (size_t i = 0; i < token_ids.size(); ++i) {
    EXPECT_EQ(ToValidUtf8((*tokenizer)->TokenText(token_ids[i])), expected["token_texts"][i].get<std::string>())
        << "token " << token_ids[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, AddedTokenDecoding,
                         ::testing::Values("gpt2_added", "llama2_added", "metaspace_added", "added_lowercase",
                                           "added_llama2"));

// Added tokens that overlap: at each position the longest that starts there, wherever it is in the file, and
// an lstrip / rstrip token takes the spaces beside it. The ids are the Python `tokenizers` library's (0.23.3):
// Tokenizer.from_str of this file (with "normalized": false, which our matching assumes) and
// encode(text, add_special_tokens=False).ids.
TEST(HfTokenizerFile, OverlappingAddedTokensSplitAsTheTokenizersLibrarySplits) {
  auto tokenizer =
      LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "x": 4, " ": 5}},
      "added_tokens": [{"id": 6, "content": "ab", "special": true, "normalized": false},
                       {"id": 7, "content": "abc", "special": true, "normalized": false},
                       {"id": 8, "content": "bcd", "special": true, "normalized": false},
                       {"id": 9, "content": "cd", "special": false, "normalized": false},
                       {"id": 10, "content": "xx", "special": true, "normalized": false, "rstrip": true},
                       {"id": 11, "content": "dab", "special": true, "normalized": false, "lstrip": true},
                       {"id": 12, "content": "abcdx", "special": true, "normalized": false}]})");
  ASSERT_THAT(tokenizer, IsOk());
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"abcd", {7, 3}},    {"abcdx", {12}},          {"abab", {6, 6}},         {"xxx", {10, 4}},
      {"dabc", {11, 2}},   {"abcdab", {7, 11}},      {"cdabcdxx", {9, 12, 4}}, {"a  dab", {0, 11}},
      {"xx  ab", {10, 6}}, {"b xx a", {1, 5, 10, 0}}};
  for (const auto& [text, ids] : expected) {
    absl::StatusOr<Encoding> encoding = (*tokenizer)->Encode(text, /*add_special_tokens=*/false);
    ASSERT_THAT(encoding, IsOk());
    EXPECT_EQ(encoding->ids, ids) << "\"" << text << "\"";
  }
}

// A token with "normalized" decodes as its normalized form and is skipped as special by that form: the plain
// "<Q>" decodes as "<q>", the special token's content, and goes with it; the special "Zz" decodes as "zz", no
// special token's content, and stays. The `tokenizers` library's (0.23.3) decode of this file (Tokenizer.from_str,
// with single_word, lstrip and rstrip false, which it requires) and "decoder": {"type": "Fuse"}.
TEST(HfTokenizerFile, NormalizedAddedTokensAreSkippedAsSpecialByTheirNormalizedForm) {
  auto tokenizer = LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
      "normalizer": {"type": "Lowercase"},
      "added_tokens": [{"id": 2, "content": "<q>", "special": true, "normalized": false},
                       {"id": 3, "content": "<Q>", "special": false, "normalized": true},
                       {"id": 4, "content": "Zz", "special": true, "normalized": true}]})");
  ASSERT_THAT(tokenizer, IsOk());
  EXPECT_EQ((*tokenizer)->Decode({0, 2, 3, 4, 1}, false).value_or("?"), "a<q><q>zzb");
  EXPECT_EQ((*tokenizer)->Decode({0, 2, 3, 4, 1}, true).value_or("?"), "azzb");
  EXPECT_EQ((*tokenizer)->Decode({3}, true).value_or("?"), "");
  EXPECT_EQ((*tokenizer)->TokenText(3), "<q>");
  EXPECT_EQ((*tokenizer)->TokenText(4), "zz");
  absl::StatusOr<Encoding> encoding = (*tokenizer)->Encode("a<Q>ZZ<q>", /*add_special_tokens=*/false);
  ASSERT_THAT(encoding, IsOk());
  EXPECT_EQ(encoding->ids, (std::vector<int64_t>{0, 3, 4, 2}));
}

// ICU lowercases by the process's locale, which it reads from LANG / LC_ALL itself: under tr_TR or az_AZ "I" became
// the dotless "ı" (every text with an I tokenized otherwise, its log-probabilities changed, the digest the same).
// The tokenizers library lowercases as Rust's str::to_lowercase, whatever the locale: "IS" is "is".
TEST(HfTokenizerFile, LowercaseIsTheSameUnderEveryLocale) {
  auto tokenizer = LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"i": 0, "s": 1, "ı": 2}},
      "normalizer": {"type": "Lowercase"}})");
  ASSERT_THAT(tokenizer, IsOk());
  const icu::Locale before = icu::Locale::getDefault();
  for (const char* locale : {"en_US", "tr_TR", "az_AZ", "lt_LT"}) {
    UErrorCode status = U_ZERO_ERROR;
    icu::Locale::setDefault(icu::Locale(locale), status);
    ASSERT_TRUE(U_SUCCESS(status)) << locale;
    absl::StatusOr<Encoding> encoding = (*tokenizer)->Encode("IS", /*add_special_tokens=*/false);
    ASSERT_THAT(encoding, IsOk());
    EXPECT_EQ(encoding->ids, (std::vector<int64_t>{0, 1})) << locale;
  }
  UErrorCode status = U_ZERO_ERROR;
  icu::Locale::setDefault(before, status);
}

// Found with tests/fuzz/tokenizer_json_fuzzer: an id of 2^63 - 1 overflowed computing the vocabulary
// size, and a vocab id of 4e9 allocated a table of 4e9 strings.
TEST(HfTokenizerFile, HugeTokenIdsAreRefused) {
  EXPECT_THAT(LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                                    "added_tokens": [{"id": 9223372036854775807, "content": "<x>"}]})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("added token id 9223372036854775807")));
  EXPECT_THAT(LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 4000000000}}})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab id 4000000000 of \"b\"")));
}

// Specs that nest specs (Sequence normalizers, pre-tokenizers, decoders, post-processors) are read in place:
// copied at every level, 3,000 nested normalizers took 2 GB and 100,000 overflowed the stack. Past 128 levels
// the file is refused, as the tokenizers library refuses it; within, it loads.
TEST(HfTokenizerFile, NestedSequencesAreBoundedAndReadInPlace) {
  const auto nested_normalizers = [](int depth) {
    std::string spec = R"({"type": "Lowercase"})";
    for (int i = 0; i < depth; ++i) spec = R"({"type": "Sequence", "normalizers": [)" + spec + "]}";
    return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "normalizer": )" + spec + "}";
  };
  EXPECT_THAT(LoadTokenizerJson(nested_normalizers(30)), IsOk());
  EXPECT_THAT(LoadTokenizerJson(nested_normalizers(100000)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nested more than 128 deep")));
}

// A vocabulary without a single piece encodes no text: it loaded, and then every text request failed
// as if its prompt were too long.
TEST(HfTokenizerFile, EmptyVocabularyIsRefused) {
  EXPECT_THAT(
      LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}})"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer.json: the BPE model's \"vocab\" is empty")));
}

// Found with tests/fuzz/tokenizer_json_fuzzer: template tokens were added to every encoding unchecked,
// so a request's prompt could carry ids outside the vocabulary; a template naming no special_tokens
// entry read through a missing JSON key.
TEST(HfTokenizerFile, PostProcessorTokensMustBeInTheVocabulary) {
  EXPECT_THAT(LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
      "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}],
                         "special_tokens": {"<s>": {"ids": [77]}}}})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("post_processor adds token id 77")));
  EXPECT_THAT(LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
      "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}]}})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("names no entry of its special_tokens")));
  EXPECT_THAT(LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
      "post_processor": {"type": "BertProcessing", "cls": ["a", 0]}})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"sep\" as [token, id]")));
}

// tokenizer_config.json options that transformers 5 applies by rebuilding the tokenizer (and the tokenizers
// library does not) are named in a warning, not applied unsaid.
TEST(HfTokenizerFile, TokenizerConfigOptionsItDoesNotApplyAreWarnedOf) {
  auto load = [](const std::string& config) {
    test_support::TempDir dir;
    std::ofstream(dir.File("tokenizer.json")) << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}})";
    if (!config.empty()) std::ofstream(dir.File("tokenizer_config.json")) << config;
    return Tokenizer::Load(dir.path());
  };
  // add_prefix_space: false beside a pre-tokenizer that adds none (Qwen2's) asks nothing it does not do.
  for (const std::string config : {"", R"({"legacy": true, "eos_token": "b"})", R"({"add_prefix_space": false})"}) {
    auto tokenizer = load(config);
    ASSERT_THAT(tokenizer, IsOk());
    EXPECT_THAT((*tokenizer)->load_warnings(), ::testing::IsEmpty()) << config;
  }
  auto tokenizer = load(R"({"legacy": false, "add_prefix_space": true})");
  ASSERT_THAT(tokenizer, IsOk());
  EXPECT_THAT((*tokenizer)->load_warnings(),
              ::testing::ElementsAre(HasSubstr("\"add_prefix_space\": true, which transformers 5 applies"),
                                     HasSubstr("\"legacy\": false, which transformers 5 applies")));
}

// A Split pattern with nested quantifiers backtracks 2^n steps on "aa...ab": a 40-character prompt held a
// thread (past its call's deadline, and a draining server) for minutes. It stops at a budget linear in the
// text, shared by every piece of it: INVALID_ARGUMENT naming the pattern (no retry can tokenize that text);
// texts it matches are split as before.
TEST(HfTokenizerFile, APatternThatBacktracksWithoutBoundRunsOutOfItsBudget) {
  auto tokenizer = LoadTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}},
      "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a|aa)+c"}, "behavior": "Isolated"}})");
  ASSERT_THAT(tokenizer, IsOk());
  absl::StatusOr<Encoding> matched = (*tokenizer)->Encode("baacb", false);
  ASSERT_THAT(matched, IsOk());
  EXPECT_EQ(matched->ids, (std::vector<int64_t>{1, 0, 0, 2, 1}));
  const auto refused = StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("pattern \"(a|aa)+c\" did not finish within the matching budget"));
  EXPECT_THAT((*tokenizer)->Encode(std::string(60, 'a') + "b", false), refused);
  // Cut into pieces by an added token, each far under a budget of its own (22 a's: about 40 steps), together
  // over the text's (200 pieces: about 8,000 steps against 1,000 + 4,800 / 10).
  std::string pieces;
  for (int i = 0; i < 200; ++i) pieces += std::string(22, 'a') + "b<s>";
  EXPECT_THAT((*tokenizer)->Encode(pieces, false), refused);
  EXPECT_THAT((*tokenizer)->Encode(std::string(22, 'a') + "b<s>" + std::string(22, 'a') + "b", false), IsOk());
}

// A character outside the vocabulary becomes byte-fallback pieces ("<0xE9>", ...): each token's text is
// its one byte, so the tokens' texts join to the character's UTF-8 bytes (not to three U+FFFD).
TEST(SentencePieceTokenizer, ByteFallbackPiecesStandForTheirByte) {
  {
    auto tokenizer = Tokenizer::Load(TokenizersDir() + "/sentencepiece");
    ASSERT_THAT(tokenizer, IsOk());
    const std::string rare = "\xE9\xBE\x98";  // U+9F98, in no test corpus
    auto encoding = (*tokenizer)->Encode("a" + rare, /*add_special_tokens=*/false);
    ASSERT_THAT(encoding, IsOk());
    std::string joined;
    int single_bytes = 0;
    for (int64_t id : encoding->ids) {
      const std::string text = (*tokenizer)->TokenText(id);
      joined += text;
      single_bytes += text.size() == 1 && static_cast<unsigned char>(text[0]) >= 0x80;
    }
    EXPECT_EQ(single_bytes, 3);
    EXPECT_THAT(joined, ::testing::EndsWith(rare));
  }
}

// A tokenizer.model whose normalizer rules (normalizer_spec.precompiled_charsmap) are damaged is refused
// at load, naming the file; libsentencepiece took it and crashed the server at the first text it
// normalized. The damage is done in place, so the file stays a well-formed ModelProto.
TEST(SentencePieceTokenizer, DamagedNormalizerRulesAreRefusedAtLoad) {
  std::ifstream in(TokenizersDir() + "/sentencepiece/tokenizer.model", std::ios::binary);
  const std::string intact((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string_view charsmap;
  ASSERT_TRUE(FindPrecompiledCharsmap(intact, /*normalizer_spec*/ 3, &charsmap));
  ASSERT_GT(charsmap.size(), 1000u) << "the trainer's nmt_nfkc rules";
  const size_t begin = charsmap.data() - intact.data(), end = begin + charsmap.size();
  uint32_t trie_size = 0;
  std::memcpy(&trie_size, charsmap.data(), 4);  // little-endian, as the test machines are
  const size_t trie = begin + 4;

  std::mt19937 random(7);
  std::string random_trie = intact;
  for (size_t i = trie; i < trie + trie_size; ++i) random_trie[i] = static_cast<char>(random() & 0xFF);
  std::string huge_values = intact;  // every unit a leaf value far past the map
  for (size_t i = trie; i < trie + trie_size; i += 4) std::memcpy(&huge_values[i], "\xFF\xFF\xFF\xFF", 4);
  std::string unterminated = intact;
  unterminated[end - 1] = 'x';
  // ModelProto.self_test_data (4) { samples (1) { input (1) "Hello" expected (2) "x" } }, appended (protobuf
  // reads a field written last as any other): libsentencepiece encodes it at load, before any request.
  const std::string self_tested = random_trie + std::string("\x22\x0C\x0A\x0A\x0A\x05Hello\x12\x01x", 14);
  for (const auto& [name, model] : {std::pair<const char*, const std::string&>{"random trie", random_trie},
                                    {"huge values", huge_values},
                                    {"unterminated strings", unterminated},
                                    {"random trie, self-tested", self_tested}}) {
    test_support::TempDir dir;
    std::ofstream(dir.File("tokenizer.model"), std::ios::binary) << model;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.path());
    // Without the check the load passed and this encode crashed (the self-tested one crashed the load).
    if (tokenizer.ok()) (void)(*tokenizer)->Encode("Hello world, ＡＢＣ ① ﬁne", true);
    EXPECT_THAT(tokenizer, StatusIs(absl::StatusCode::kInvalidArgument,
                                    AllOf(HasSubstr(dir.File("tokenizer.model")),
                                          HasSubstr("normalizer_spec.precompiled_charsmap is damaged"))))
        << name;
  }

  // The intact copy loads, and its rules apply: full-width letters encode as ASCII ones (NFKC).
  test_support::TempDir dir;
  std::ofstream(dir.File("tokenizer.model"), std::ios::binary) << intact;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.path());
  ASSERT_THAT(tokenizer, IsOk());
  absl::StatusOr<Encoding> wide = (*tokenizer)->Encode("Ｈｅｌｌｏ ｗｏｒｌｄ", false);
  absl::StatusOr<Encoding> ascii = (*tokenizer)->Encode("Hello world", false);
  ASSERT_THAT(wide, IsOk());
  ASSERT_THAT(ascii, IsOk());
  EXPECT_EQ(wide->ids, ascii->ids);
}

// Added tokens with every option of the library (tools/make_test_tokenizers.py's ADDED_OPTIONS: single_word,
// lstrip, rstrip, normalized or not) in texts that put them next to words, digits, "_", combining marks,
// punctuation and Unicode spaces, in upper, lower and full-width forms: ids equal to the `tokenizers`
// library's under an NFKC + Lowercase normalizer and under Llama 2's Prepend / Replace("▁") one, where tokens
// with "normalized" are found in the normalized text ("HELLO WORLD" is "Hello World"; "Mask" only where no
// word character touches it), and the library's decoding of those ids. AddedTokenDecoding decodes the same
// tokens in chosen sequences, with and without special tokens.
class AddedTokenOptions : public TokenizerParity {};

TEST_P(AddedTokenOptions, IdsMatchTheLibrary) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  const auto ids = expected_["ids"].get<std::vector<std::vector<int64_t>>>();
  constexpr int64_t kFirstAdded = 1400, kAddedCount = 11;  // ids of ADDED_OPTIONS, in order
  std::vector<int> found(kAddedCount, 0);
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto encoding = tokenizer_->Encode(texts[i], /*add_special_tokens=*/true);
    ASSERT_THAT(encoding, IsOk());
    for (int64_t id : encoding->ids) {
      if (id >= kFirstAdded && id < kFirstAdded + kAddedCount) ++found[id - kFirstAdded];
    }
    if (encoding->ids != ids[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "text " << i << " \"" << absl::CHexEscape(texts[i])
                    << "\"\n  ours:    " << ::testing::PrintToString(encoding->ids)
                    << "\n  library: " << ::testing::PrintToString(ids[i]);
    }
  }
  std::cout << "[ tokenize ] " << GetParam() << ": " << texts.size() - mismatches << "/" << texts.size()
            << " texts with the library's ids; added tokens found " << ::testing::PrintToString(found) << "\n";
  EXPECT_EQ(mismatches, 0);
  for (int64_t k = 0; k < kAddedCount; ++k) EXPECT_GE(found[k], 20) << "added token " << kFirstAdded + k;
}

// A token with "normalized" decodes as its normalized form through the decoder ("HELLO WORLD" encodes as
// "Hello World", which decodes as "hello world" under Lowercase), as the library decodes it.
TEST_P(AddedTokenOptions, DecodeMatchesTheLibrary) {
  const auto ids = expected_["ids"].get<std::vector<std::vector<int64_t>>>();
  const auto decoded = expected_["decoded"].get<std::vector<std::string>>();
  int mismatches = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StatusOr<std::string> text = tokenizer_->Decode(ids[i], /*skip_special_tokens=*/false);
    ASSERT_THAT(text, IsOk());
    if (*text != decoded[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "ids " << ::testing::PrintToString(ids[i]) << "\n  ours:    \"" << absl::CHexEscape(*text)
                    << "\"\n  library: \"" << absl::CHexEscape(decoded[i]) << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Tokens matched in normalized text span the original text they came from, in order with the rest.
TEST_P(AddedTokenOptions, SpansLieInTheTextInOrder) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  for (size_t i = 0; i < texts.size(); ++i) {
    auto encoding = tokenizer_->Encode(texts[i], /*add_special_tokens=*/true);
    ASSERT_THAT(encoding, IsOk());
    size_t previous_begin = 0;
    for (const TokenSpan& span : encoding->spans) {
      ASSERT_LE(span.begin, span.end) << "text " << i;
      ASSERT_LE(span.end, texts[i].size()) << "text " << i;
      ASSERT_GE(span.begin, previous_begin) << "text " << i;
      previous_begin = span.begin;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Normalizers, AddedTokenOptions, ::testing::Values("added_lowercase", "added_llama2"));

// A tokenizer.model whose tokenizer_config.json (or special_tokens_map.json) names special and added
// tokens reads their strings in text as those tokens, as transformers does: ids equal to transformers'
// SentencePiece tokenizer (the text split on the tokens, each segment encoded by the sentencepiece
// library) on 638 texts, and to transformers 5's LlamaTokenizer wherever no segment starts with a space
// (there it adds no word-boundary mark: the server keeps SentencePiece's; see the README).
class SentencePieceSpecialTokens : public TokenizerParity {};

TEST_P(SentencePieceSpecialTokens, IdsMatchTransformers) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  const auto ids = expected_["ids"].get<std::vector<std::vector<int64_t>>>();
  const auto transformers_ids = expected_["transformers_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto plain = expected_["plain"].get<std::vector<bool>>();
  int mismatches = 0, plain_checked = 0, with_special = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto encoding = tokenizer_->Encode(texts[i], /*add_special_tokens=*/true);
    ASSERT_THAT(encoding, IsOk());
    with_special +=
        std::any_of(encoding->ids.begin() + 1, encoding->ids.end(), [&](int64_t id) { return id <= 2 || id >= 900; });
    const bool mismatch = encoding->ids != ids[i] || (plain[i] && encoding->ids != transformers_ids[i]);
    plain_checked += plain[i];
    if (mismatch && ++mismatches <= 5) {
      ADD_FAILURE() << "text " << i << " \"" << texts[i]
                    << "\"\n  ours:         " << ::testing::PrintToString(encoding->ids)
                    << "\n  segments:     " << ::testing::PrintToString(ids[i])
                    << "\n  transformers: " << ::testing::PrintToString(transformers_ids[i]);
    }
  }
  std::cout << "[ tokenize ] " << GetParam() << ": " << texts.size() - mismatches << "/" << texts.size() << " texts ("
            << with_special << " with special or added tokens) with transformers' ids, " << plain_checked
            << " also LlamaTokenizer's\n";
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(with_special, 55);
  EXPECT_GE(plain_checked, 480);
}

// Each added or special token found in the text spans exactly its string; the pieces between lie in
// order around them.
TEST_P(SentencePieceSpecialTokens, SpansCoverEachTokensString) {
  const auto texts = expected_["texts"].get<std::vector<std::string>>();
  int found = 0;
  for (const std::string& text : texts) {
    auto encoding = tokenizer_->Encode(text, /*add_special_tokens=*/true);
    ASSERT_THAT(encoding, IsOk());
    size_t previous_begin = 0, max_end = 0, added_end = 0;
    for (size_t t = 0; t < encoding->ids.size(); ++t) {
      const TokenSpan& span = encoding->spans[t];
      SCOPED_TRACE(::testing::Message() << "token " << t << " of \"" << text << "\"");
      ASSERT_LE(span.begin, span.end);
      ASSERT_LE(span.end, text.size());
      ASSERT_GE(span.begin, std::max(previous_begin, added_end));
      const int64_t id = encoding->ids[t];
      if (t > 0 && (id <= 2 || id >= 900)) {
        ASSERT_GE(span.begin, max_end);  // no piece before it overlaps it
        EXPECT_EQ(text.substr(span.begin, span.end - span.begin), tokenizer_->TokenText(id));
        added_end = span.end;
        ++found;
      }
      previous_begin = span.begin;
      max_end = std::max(max_end, span.end);
    }
  }
  EXPECT_GE(found, 60);
}

// The pieces after an added token past the model's pieces keep the space of their word-boundary mark ("<sep>",
// "▁HELLO" -> "<sep> HELLO"), which libsentencepiece drops at the start of what it decodes; at the start of the
// text it goes, as in transformers' decode. Sequences that keep a control or the unknown piece are compared
// only without special tokens (see make_test_tokenizers.py).
TEST_P(SentencePieceSpecialTokens, DecodeMatchesTransformers) {
  const auto sequences = expected_["decode_ids"].get<std::vector<std::vector<int64_t>>>();
  ASSERT_GE(sequences.size(), 300u);
  int mismatches = 0, compared = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    for (const bool skip : {false, true}) {
      const nlohmann::json& reference = expected_[skip ? "decoded_skipping_special" : "decoded"][i];
      if (reference.is_null()) continue;
      ++compared;
      absl::StatusOr<std::string> text = tokenizer_->Decode(sequences[i], skip);
      ASSERT_THAT(text, IsOk());
      const std::string expected = reference;
      if (*text != expected && ++mismatches <= 8) {
        ADD_FAILURE() << "ids " << ::testing::PrintToString(sequences[i]) << ", skip_special_tokens " << skip
                      << "\n  ours:         \"" << *text << "\"\n  transformers: \"" << expected << "\"";
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(compared, 450);
}

INSTANTIATE_TEST_SUITE_P(Configs, SentencePieceSpecialTokens,
                         ::testing::Values("sentencepiece_special", "sentencepiece_map"));

TEST(SentencePieceSpecialTokens, AddedTokensAreSpecialAsMarkedAndDecodeToTheirText) {
  auto tokenizer = Tokenizer::Load(TokenizersDir() + "/sentencepiece_special");
  ASSERT_THAT(tokenizer, IsOk());
  const Tokenizer& t = **tokenizer;
  EXPECT_EQ(t.vocab_size(), 904);  // 900 pieces and 4 added tokens
  // <s>, </s>, <|tool|> and <mask> are marked special; <unk>, <|tool|>call and <sep> are not.
  std::vector<bool> special;
  for (int64_t id : {0, 1, 2, 900, 901, 902, 903}) special.push_back(t.IsSpecial(id));
  EXPECT_THAT(special, ::testing::ElementsAre(false, true, true, true, false, false, true));
  EXPECT_EQ(t.TokenText(900), "<|tool|>");
  EXPECT_EQ(t.TokenText(2), "</s>");

  auto round_trip = [&](const std::string& text, bool skip) {
    auto encoding = t.Encode(text, /*add_special_tokens=*/false);
    return encoding.ok() ? t.Decode(encoding->ids, skip).value_or("<error>") : "<error>";
  };
  // "b" after the token is "▁b", SentencePiece's encoding of a text of its own; transformers decodes it as " b".
  EXPECT_EQ(round_trip("a<|tool|>callb", false), "a<|tool|>call b");
  EXPECT_EQ(round_trip("a<|tool|>callb", true), "a<|tool|>call b");  // not special
  EXPECT_EQ(round_trip("a<|tool|>b", false), "a<|tool|> b");
  EXPECT_EQ(round_trip("a<|tool|>b", true), "a b");  // as a control piece between them (and transformers)
  // The segment after a special token keeps its word-boundary mark: "the end", " it" -> ▁the ▁end, ▁ ▁it.
  EXPECT_EQ(round_trip("the end</s> it", true), "the end  it");

  // A target that is a special token is that token, with its span.
  absl::StatusOr<Encoding> target = EncodeContinuation(t, "the end", "</s>");
  ASSERT_THAT(target, IsOk());
  EXPECT_THAT(target->ids, ::testing::ElementsAre(2));
  EXPECT_EQ(target->spans[0].begin, 0u);
  EXPECT_EQ(target->spans[0].end, 4u);
  // A generated added token reads as its text after the prompt, and that text encodes to it again.
  const Continuation generated = DecodeContinuation(t, t.Encode("the end", true)->ids, {901, 268});
  absl::StatusOr<Encoding> again = EncodeContinuation(t, "the end", generated.text);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->ids[0], 901);
}

// tokenizer_config.json's added tokens are checked as tokenizer.json's are.
TEST(SentencePieceSpecialTokens, MalformedAddedTokensAreRefused) {
  for (const char* config : {R"({"added_tokens_decoder": {"x": {"content": "<a>"}}})",
                             R"({"added_tokens_decoder": {"-1": {"content": "<a>"}}})",
                             R"({"added_tokens_decoder": {"99999999999": {"content": "<a>"}}})",
                             R"({"added_tokens_decoder": {"950": "<a>"}})", R"({"added_tokens_decoder": []})"}) {
    test_support::TempDir dir;
    std::ifstream model(TokenizersDir() + "/sentencepiece/tokenizer.model", std::ios::binary);
    std::ofstream(dir.File("tokenizer.model"), std::ios::binary) << model.rdbuf();
    std::ofstream(dir.File("tokenizer_config.json")) << config;
    EXPECT_THAT(Tokenizer::Load(dir.path()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("added_tokens_decoder")))
        << config;
  }
}

TEST(Tokenizer, MissingTokenizerIsNotFound) {
  EXPECT_THAT(Tokenizer::Load("/nonexistent"), StatusIs(absl::StatusCode::kNotFound));
}

// Expected values are Python's bytes.decode("utf-8", errors="replace") re-encoded (as Hugging Face
// decodes): one U+FFFD per maximal ill-formed subpart.
TEST(Utf8, IllFormedSequencesBecomeOneReplacementEachAsPythonDecodes) {
  const std::string r = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"abc", "abc"},
      {"\xE2\x98", r},                   // a snowman's first two bytes
      {"\xE2\x98\x83", "\xE2\x98\x83"},  // the whole snowman
      {"\xFF", r},
      {"a\xC3(b", "a" + r + "(b"},
      {"\xF0\x9F\x98", r},                  // an emoji's first three bytes
      {"\xED\xA0\x80", r + r + r},          // a surrogate: no subpart
      {"\xC0\xAF", r + r},                  // overlong
      {"\xF4\x90\x80\x80", r + r + r + r},  // past U+10FFFF
      {"\xE0\x80\xAF", r + r + r},          // overlong
      {"\xF0\x9F\x98\x80\xE2", "\xF0\x9F\x98\x80" + r},
      {"\x80\x80", r + r},
  };
  for (const auto& [bytes, expected] : cases) {
    EXPECT_EQ(ToValidUtf8(bytes), expected) << ::testing::PrintToString(bytes);
    EXPECT_THAT(CheckUtf8(ToValidUtf8(bytes)), IsOk());
    EXPECT_EQ(CheckUtf8(bytes).ok(), bytes == expected);
  }
}

}  // namespace
}  // namespace attribution::engine
