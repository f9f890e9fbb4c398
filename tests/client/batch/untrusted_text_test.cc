// SPDX-License-Identifier: Apache-2.0
// Text a job does not control (client/batch/untrusted_text.h): JSON nested a million deep is refused
// without overflowing the stack (nlohmann's DOM copies and destroys recursively), a repeated key is
// refused naming it, invalid UTF-8 is written as U+FFFD instead of throwing, control characters are
// escaped for the terminal.
#include "client/batch/untrusted_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "engine/common/utf8.h"
#include "tests/testing/status_matchers.h"

namespace attribution::client::batch {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using nlohmann::json;
using ::testing::HasSubstr;

std::string Nested(int levels, const std::string& inside = "") {
  return std::string(levels, '[') + inside + std::string(levels, ']');
}

TEST(ParseJson, RefusesNestingPastTheLimitWithoutBuildingIt) {
  // A million levels: building (or destroying) that DOM recursed once per level and overflowed the stack.
  const std::string deep = R"({"id":"x","settings":{"seed":)" + Nested(1000000) + "}}";
  EXPECT_THAT(ParseJson(deep, "rows.jsonl:3"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("rows.jsonl:3: objects and arrays nested more than 64 deep")));
  EXPECT_THAT(ParseJson(Nested(kMaxJsonDepth, "1"), "f"), IsOk());
  EXPECT_THAT(ParseJson(Nested(kMaxJsonDepth + 1, "1"), "f"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseJson(std::string(100000, '{'), "f"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ParseJson, RefusesAKeyGivenTwiceInOneObject) {
  EXPECT_THAT(
      ParseJson(R"({"id":"k1","prompt":"p","id":"k2"})", "rows.jsonl:2"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows.jsonl:2: key \"id\" given twice in one object")));
  EXPECT_THAT(ParseJson(R"({"s":{"a":1,"a":2}})", "f"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"a\"")));
  // The same key in different objects is no repeat.
  absl::StatusOr<json> sibling = ParseJson(R"({"a":{"id":1},"b":[{"id":2},{"id":3}],"id":4})", "f");
  ASSERT_THAT(sibling, IsOk());
  EXPECT_EQ((*sibling)["b"][1]["id"], 3);
  EXPECT_EQ((*sibling)["id"], 4);
}

TEST(ParseJson, RefusesTextThatIsNotJson) {
  EXPECT_THAT(ParseJson("{\"id\":", "f:1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("f:1: not valid JSON")));
  EXPECT_THAT(ParseJson("\"caf\xe9\"", "f:1"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(JsonText, WritesInvalidUtf8AsTheReplacementCharacter) {
  EXPECT_EQ(JsonText(json{{"message", "bad \xff\xfe here"}}), "{\"message\":\"bad \xEF\xBF\xBD\xEF\xBF\xBD here\"}");
}

TEST(TerminalSafe, EscapesControlCharacters) {
  EXPECT_EQ(TerminalSafe("r\x1b[2J\x07\n\x7f"
                         "caf\xc3\xa9 \xc2\x9b"
                         "1m \x9b"
                         "2J"),
            "r\\e[2J\\x07\\n\\x7f"
            "caf\xc3\xa9 \\u009b1m \\x9b2J");  // a lone 0x9b is CSI to an 8-bit terminal
}

// Unicode bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E/F, U+061C) reorder what a terminal shows
// after them: escaped as the other controls; other characters of those blocks pass.
TEST(TerminalSafe, EscapesBidiControls) {
  EXPECT_EQ(TerminalSafe("a\xe2\x80\xae"
                         "b\xe2\x81\xa6"
                         "c\xe2\x81\xa9"
                         "d\xe2\x80\x8f"
                         "e\xe2\x80\x8e\xd8\x9c"),
            "a\\u202eb\\u2066c\\u2069d\\u200fe\\u200e\\u061c");
  EXPECT_EQ(TerminalSafe("\xe2\x80\x94 \xe2\x81\xb0 \xe2\x80\xaf"), "\xe2\x80\x94 \xe2\x81\xb0 \xe2\x80\xaf");
  // The line and paragraph separators break lines in log viewers and editors.
  EXPECT_EQ(TerminalSafe("a\xe2\x80\xa8"
                         "b\xe2\x80\xa9"),
            "a\\u2028b\\u2029");
}

// Why a text is not JSON, where, and for invalid UTF-8 and lone surrogates that, never echoing a long text
// whole. Before, every refusal was "not valid JSON".
TEST(ParseJson, SaysWhereAndWhyATextIsNotJson) {
  EXPECT_THAT(ParseJson(R"({"id": tru})", "rows.jsonl:1").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("rows.jsonl:1: not valid JSON at byte 11: syntax error while parsing value")));
  EXPECT_THAT(ParseJson("{\"id\": \"\xff\"}", "w").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("UTF-8")));
  EXPECT_THAT(ParseJson(R"({"id": "\ud800"})", "w").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("surrogate")));
  const absl::Status unclosed = ParseJson("{\"id\": \"" + std::string(1 << 20, 'x'), "w").status();
  EXPECT_THAT(unclosed, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("...")));
  EXPECT_LT(unclosed.message().size(), 300u);
  // Cut on a character's first byte: "é" is two bytes, and the message stays UTF-8.
  for (const std::string& lead : {std::string(""), std::string("x")}) {
    std::string text;
    for (int i = 0; i < 1000; ++i) text += "\xc3\xa9";
    const std::string message(ParseJson("[\"" + lead + text, "w").status().message());
    ASSERT_THAT(message, HasSubstr("..."));
    for (size_t i = 0; i < message.size();) {
      const size_t length = ::attribution::Utf8SequenceLength(message, i, /*subpart=*/false);
      ASSERT_GT(length, 0u) << "byte " << i << " of " << message;
      i += length;
    }
  }
}

}  // namespace
}  // namespace attribution::client::batch
