// SPDX-License-Identifier: Apache-2.0
#include "engine/tokenizer/added_tokens.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

// What Split reports, in order: a segment as "[begin,end)", a token as "id@begin".
std::vector<std::string> SplitEvents(const AddedTokens& added, const std::string& text) {
  std::vector<std::string> events;
  const absl::Status status = added.Split(
      text,
      [&](size_t begin, size_t end) {
        events.push_back(absl::StrCat("[", begin, ",", end, ")"));
        return absl::OkStatus();
      },
      [&](const AddedToken& token, size_t begin, size_t end) {
        EXPECT_EQ(text.substr(begin, end - begin), token.content);
        events.push_back(absl::StrCat(token.id, "@", begin));
      });
  EXPECT_TRUE(status.ok()) << status;
  return events;
}

// The matching as it was before the trie (and as documented): the tokens longest first, of equal length in
// the order given, and at each position the first of them that the text goes on with.
std::vector<std::string> ScanEveryToken(std::vector<AddedToken> tokens, const std::string& text) {
  std::stable_sort(tokens.begin(), tokens.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
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
    size_t segment_end = i, next = i + match->content.size();
    while (match->lstrip && segment_end > from && space(text[segment_end - 1])) --segment_end;
    while (match->rstrip && next < text.size() && space(text[next])) ++next;
    if (segment_end > from) events.push_back(absl::StrCat("[", from, ",", segment_end, ")"));
    events.push_back(absl::StrCat(match->id, "@", i));
    from = i = next;
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

// Random small alphabets make tokens that overlap, nest and repeat, with and without lstrip / rstrip: the
// trie splits every text as the scan over every token did.
TEST(AddedTokens, SplitsAsTheScanOverEveryTokenDid) {
  std::mt19937 random(20261206);
  const std::string alphabet = "ab< \n";
  auto random_text = [&](int max_length) {
    std::string text(std::uniform_int_distribution<int>(0, max_length)(random), ' ');
    for (char& c : text) c = alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(random)];
    return text;
  };
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<AddedToken> tokens;
    const int n = std::uniform_int_distribution<int>(1, 12)(random);
    for (int k = 0; k < n; ++k) {
      tokens.push_back({.id = std::uniform_int_distribution<int64_t>(0, 8)(random),
                        .content = random_text(5),
                        .special = random() % 2 == 0,
                        .lstrip = random() % 3 == 0,
                        .rstrip = random() % 3 == 0});
    }
    const AddedTokens added(tokens);
    for (int t = 0; t < 20; ++t) {
      const std::string text = random_text(40);
      ASSERT_EQ(SplitEvents(added, text), ScanEveryToken(tokens, text))
          << "trial " << trial << " text \"" << text << "\"";
    }
  }
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
