// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/added_tokens.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

// What Split (or SplitNormalized) reports, in order: a segment as "[begin,end)", a token as "id@begin".
std::vector<std::string> SplitEvents(const AddedTokens& added, const std::string& text, bool normalized = false) {
  std::vector<std::string> events;
  auto segment = [&](size_t begin, size_t end) {
    events.push_back(absl::StrCat("[", begin, ",", end, ")"));
    return absl::OkStatus();
  };
  auto token = [&](const AddedToken& token, size_t begin, size_t end) {
    if (!normalized) {
      EXPECT_EQ(text.substr(begin, end - begin), token.content);
    }
    events.push_back(absl::StrCat(token.id, "@", begin));
  };
  const absl::Status status =
      normalized ? added.SplitNormalized(text, segment, token) : added.Split(text, segment, token);
  EXPECT_TRUE(status.ok()) << status;
  return events;
}

// The library's rules, token by token over ASCII text, without the trie: the tokens longest first, of
// equal length in the order given, and at each position the first of them that the text goes on with; a
// single_word one is passed over (and the search goes on after it) where a letter, digit or "_" touches it.
std::vector<std::string> ScanEveryToken(std::vector<AddedToken> tokens, const std::string& text) {
  std::stable_sort(tokens.begin(), tokens.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  std::vector<std::string> events;
  size_t from = 0, i = 0;
  while (i < text.size()) {
    auto match = std::find_if(tokens.begin(), tokens.end(), [&](const AddedToken& a) {
      return !a.content.empty() && text.compare(i, a.content.size(), a.content) == 0;
    });
    if (match == tokens.end()) {
      ++i;
      continue;
    }
    const size_t begin = i, end = i + match->content.size();
    i = end;
    if (match->single_word && ((begin > 0 && word(text[begin - 1])) || (end < text.size() && word(text[end])))) {
      continue;
    }
    size_t segment_end = begin, next = end;
    while (match->lstrip && segment_end > from && space(text[segment_end - 1])) --segment_end;
    while (match->rstrip && next < text.size() && space(text[next])) ++next;
    if (segment_end > from) events.push_back(absl::StrCat("[", from, ",", segment_end, ")"));
    events.push_back(absl::StrCat(match->id, "@", begin));
    from = next;
  }
  if (text.size() > from) events.push_back(absl::StrCat("[", from, ",", text.size(), ")"));
  return events;
}

// Where several tokens match, the one that starts first wins, and of those the longest, wherever it is
// in the file: "abcd" is "abc" + "d", not "ab" + "cd" nor "a" + "bcd".
TEST(AddedTokens, TakesTheLongestOfTheTokensThatStartFirst) {
  const AddedTokens added({{.id = 6, .content = "ab"},
                           {.id = 7, .content = "abc"},
                           {.id = 8, .content = "bcd"},
                           {.id = 9, .content = "cd"},
                           {.id = 12, .content = "abcdx"}});
  EXPECT_THAT(SplitEvents(added, "abcd"), ElementsAre("7@0", "[3,4)"));
  EXPECT_THAT(SplitEvents(added, "abcdx"), ElementsAre("12@0"));
  EXPECT_THAT(SplitEvents(added, "abcdabc"), ElementsAre("7@0", "[3,4)", "7@4"));
  EXPECT_THAT(SplitEvents(added, "zbcdab"), ElementsAre("[0,1)", "8@1", "6@4"));
  EXPECT_THAT(SplitEvents(added, "cdabcdxx"), ElementsAre("9@0", "12@2", "[7,8)"));
  EXPECT_THAT(SplitEvents(added, "abcdab"), ElementsAre("7@0", "[3,4)", "6@4"));
  EXPECT_THAT(SplitEvents(added, "abcdxab"), ElementsAre("12@0", "6@5"));
  EXPECT_THAT(SplitEvents(added, "a"), ElementsAre("[0,1)"));
  EXPECT_THAT(SplitEvents(added, ""), ElementsAre());
}

// Of tokens of the same content, the first in file order is the one found in text and named by IdOf;
// Find still knows each id. An empty content is never found in text.
TEST(AddedTokens, OfEqualContentsTheFirstInFileOrderIsFound) {
  const AddedTokens added(
      {{.id = 5, .content = "xx"}, {.id = 4, .content = "xx", .special = true}, {.id = 3, .content = ""}});
  EXPECT_THAT(SplitEvents(added, "axxxb"), ElementsAre("[0,1)", "5@1", "[3,5)"));
  EXPECT_THAT(added.IdOf("xx"), Optional(5));
  EXPECT_THAT(added.IdOf(""), Optional(3));
  EXPECT_EQ(added.IdOf("x"), std::nullopt);
  EXPECT_EQ(added.IdOf("xxx"), std::nullopt);
  ASSERT_NE(added.Find(4), nullptr);
  EXPECT_TRUE(added.Find(4)->special);
  EXPECT_THAT(SplitEvents(AddedTokens({{.id = 3, .content = ""}}), "ab"), ElementsAre("[0,2)"));
  EXPECT_THAT(SplitEvents(AddedTokens(), "ab"), ElementsAre("[0,2)"));
}

// Bytes past ASCII (UTF-8, 0xFF) are matched as the unsigned bytes they are ("\xC3\xA9t\xC3\xA9" is 5 bytes).
TEST(AddedTokens, MatchesBytesPastAscii) {
  const AddedTokens added(
      {{.id = 1, .content = "\xC3\xA9"}, {.id = 2, .content = "\xC3\xA9t\xC3\xA9"}, {.id = 3, .content = "\xFF"}});
  EXPECT_THAT(SplitEvents(added, "\xC3\xA9t\xC3\xA9\xC3\xA9\xFF"), ElementsAre("2@0", "1@5", "3@7"));
  EXPECT_THAT(added.IdOf("\xC3\xA9t\xC3\xA9"), Optional(2));
}

// Random small alphabets make tokens that overlap, nest and repeat, with and without single_word, lstrip and
// rstrip: the tries split every text as the scan over every token does, those without `normalized` in
// Split, those with it (here normalized to themselves) in SplitNormalized.
TEST(AddedTokens, SplitsAsTheScanOverEveryToken) {
  std::mt19937 random(20261206);
  const std::string alphabet = "ab< \n";
  auto random_text = [&](int max_length) {
    std::string text(std::uniform_int_distribution<int>(0, max_length)(random), ' ');
    for (char& c : text) c = alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(random)];
    return text;
  };
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<AddedToken> tokens, raw, normalized;
    const int n = std::uniform_int_distribution<int>(1, 12)(random);
    for (int k = 0; k < n; ++k) {
      tokens.push_back({.id = std::uniform_int_distribution<int64_t>(0, 8)(random),
                        .content = random_text(5),
                        .special = random() % 2 == 0,
                        .lstrip = random() % 3 == 0,
                        .rstrip = random() % 3 == 0,
                        .single_word = random() % 3 == 0,
                        .normalized = random() % 2 == 0});
      (tokens.back().normalized ? normalized : raw).push_back(tokens.back());
    }
    const AddedTokens added(tokens);
    for (int t = 0; t < 20; ++t) {
      const std::string text = random_text(40);
      ASSERT_EQ(SplitEvents(added, text), ScanEveryToken(raw, text)) << "trial " << trial << " text \"" << text << "\"";
      ASSERT_EQ(SplitEvents(added, text, /*normalized=*/true), ScanEveryToken(normalized, text))
          << "trial " << trial << " text \"" << text << "\" (normalized)";
    }
  }
}

// As the `tokenizers` library's own cases (and its Python package's ids for them): a single_word token
// counts only with no word character beside it, and Unicode's marks, "_" and joiners are word characters,
// punctuation and "-" are not.
TEST(AddedTokens, SingleWordTokensNeedNoWordCharacterBeside) {
  const AddedTokens added({{.id = 1, .content = "<mask>", .single_word = true}});
  EXPECT_THAT(SplitEvents(added, "<mask> My name <mask> A<mask> <mask>ony <mask>"),
              ElementsAre("1@0", "[6,15)", "1@15", "[21,40)", "1@40"));
  EXPECT_THAT(SplitEvents(added, "<mask>, <mask>- \u25cc\u0330<mask>_<mask> 3<mask> <mask>\u200d"),
              ElementsAre("1@0", "[6,8)", "1@8", "[14,52)"));
}

// A single_word token passed over is not searched again for shorter tokens inside it, as the library's
// search goes on after each match: in "xab ab" the "b" of "xab" is text ("x", "a", "b" in Python).
TEST(AddedTokens, ASingleWordTokenPassedOverHidesTheTokensInsideIt) {
  const AddedTokens added({{.id = 1, .content = "ab", .single_word = true}, {.id = 2, .content = "b"}});
  EXPECT_THAT(SplitEvents(added, "xab ab"), ElementsAre("[0,4)", "1@4"));
  EXPECT_THAT(SplitEvents(added, "x b"), ElementsAre("[0,2)", "2@2"));
}

// lstrip / rstrip take Unicode whitespace (U+2000, U+00A0), as the library's \s does; the search goes on
// after the token, not after the whitespace, so a token that starts with a space is still found there
// ("ax  yb" is "a", "x  ", " y", "b" in Python).
TEST(AddedTokens, StripsUnicodeWhitespaceAndSearchesOnInsideIt) {
  const AddedTokens added({{.id = 1, .content = "<m>", .lstrip = true, .rstrip = true, .single_word = true}});
  EXPECT_THAT(SplitEvents(added, "a\u2000<m>\u00a0x a<m> \t<m>\t"), ElementsAre("[0,1)", "1@4", "[9,15)", "1@17"));
  const AddedTokens overlapping({{.id = 1, .content = "x ", .rstrip = true}, {.id = 2, .content = " y"}});
  EXPECT_THAT(SplitEvents(overlapping, "ax  yb"), ElementsAre("[0,1)", "1@1", "2@3", "[5,6)"));
}

// A token with `normalized` is looked for in the form `normalize` gives its content, and only by
// SplitNormalized; where a segment starts is a word boundary (the library matches each segment alone).
TEST(AddedTokens, NormalizedTokensAreFoundInTheirNormalizedForm) {
  const AddedTokens added({{.id = 1, .content = "Hello", .normalized = true},
                           {.id = 2, .content = "MY", .single_word = true, .normalized = true},
                           {.id = 3, .content = "SEP", .special = true}},
                          [](const std::string& content) { return absl::AsciiStrToLower(content); });
  EXPECT_THAT(SplitEvents(added, "hello Hello"), ElementsAre("[0,11)"));
  EXPECT_THAT(SplitEvents(added, "hello Hello", /*normalized=*/true), ElementsAre("1@0", "[5,11)"));
  EXPECT_THAT(SplitEvents(added, "xSEPmy"), ElementsAre("[0,1)", "3@1", "[4,6)"));
  EXPECT_THAT(SplitEvents(added, "my", /*normalized=*/true), ElementsAre("2@0"));
  EXPECT_THAT(SplitEvents(added, "xmy", /*normalized=*/true), ElementsAre("[0,3)"));
  EXPECT_THAT(added.IdOf("Hello"), Optional(1));
  EXPECT_EQ(added.IdOf("hello"), std::nullopt);
}

// 100,000 added tokens (as a tokenizer.json of "<extra_token_N>"s has) are each found where they stand.
TEST(AddedTokens, FindsEachOfManyTokens) {
  std::vector<AddedToken> tokens;
  for (int k = 0; k < 100000; ++k) tokens.push_back({.id = 1000 + k, .content = absl::StrCat("<extra_token_", k, ">")});
  const AddedTokens added(std::move(tokens));
  EXPECT_THAT(SplitEvents(added, "a<extra_token_99999><extra_token_1>x<extra_token_100000>"),
              ElementsAre("[0,1)", "100999@1", "1001@20", "[35,56)"));
  EXPECT_THAT(added.IdOf("<extra_token_4711>"), Optional(5711));
  EXPECT_EQ(added.IdOf("<extra_token_"), std::nullopt);
}

}  // namespace
}  // namespace attribution::engine
