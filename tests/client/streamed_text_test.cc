// SPDX-License-Identifier: Apache-2.0
#include "client/streamed_text.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace attribution::client {
namespace {

std::string Joined(const std::vector<Token>& tokens, std::vector<std::string>* pieces = nullptr,
                   std::vector<std::string> stop = {}) {
  StreamedText text(std::move(stop));
  std::string out;
  for (const Token& t : tokens) {
    out += text.Add(t);
    if (pieces != nullptr) pieces->push_back(out);
  }
  return out + text.Finish();
}

Token Bytes(std::string bytes) { return Token{.bytes = std::move(bytes)}; }

// 斩 (E6 96 A9) in three single-byte tokens, as a byte-level BPE emits a character it has not merged:
// each token's own text is U+FFFD; joined, the character shows once, when its last byte comes.
TEST(StreamedText, ShowsACharacterSplitAcrossTokensWholeWhenItCompletes) {
  std::vector<std::string> pieces;
  EXPECT_EQ(Joined({Bytes("a"), Bytes("\xE6"), Bytes("\x96"), Bytes("\xA9 b")}, &pieces), "a\xE6\x96\xA9 b");
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "a", "a", "a\xE6\x96\xA9 b"}));
}

// As GenerateResponse.text: special tokens (eos) are left out, bytes that can never be a character are
// U+FFFD at once, and a character the stream ends inside is U+FFFD.
TEST(StreamedText, ReadsAsTheResponseTextReads) {
  Token eos{.text = "</s>", .bytes = "</s>", .special = true};
  EXPECT_EQ(Joined({Bytes("x"), eos}), "x");
  EXPECT_EQ(Joined({Bytes("\xF7"), Bytes("y")}), "\xEF\xBF\xBDy");
  EXPECT_EQ(Joined({Bytes("\xE6\x96"), Bytes("z")}), "\xEF\xBF\xBDz");  // broken by an ASCII byte
  EXPECT_EQ(Joined({Bytes("z"), Bytes("\xF0\x9F\x91")}), "z\xEF\xBF\xBD");
  EXPECT_EQ(Joined({Bytes("\xF0\x9F"), Bytes("\x91\x8D")}), "\xF0\x9F\x91\x8D");
}

// A server that sends each token's text without its bytes (one from before token_bytes was streamed): the
// text is shown as it came. Before, such a stream printed nothing.
TEST(StreamedText, ShowsTheTextOfTokensThatCameWithoutBytes) {
  EXPECT_EQ(Joined({Token{.text = " once"}, Token{.text = " upon"}}), " once upon");
}

// generate --stream --stop printed the stop string and what its token held after it, where the response's
// text (and generate without --stream) ends before it. Text that may begin a stop string is held back until
// it cannot; the earliest stop string ends what is shown, also one spanning tokens.
TEST(StreamedText, EndsBeforeTheEarliestStopString) {
  std::vector<std::string> pieces;
  EXPECT_EQ(Joined({Bytes("one #"), Bytes("#"), Bytes("# two")}, &pieces, {"###"}), "one ");
  EXPECT_EQ(pieces, (std::vector<std::string>{"one ", "one ", "one "}));
  EXPECT_EQ(Joined({Bytes("a END b."), Bytes("c")}, nullptr, {".", "END"}), "a ");
  // A start that does not go on to a stop string is shown once it cannot, or at the end.
  pieces.clear();
  EXPECT_EQ(Joined({Bytes("x #"), Bytes("#y"), Bytes(" #")}, &pieces, {"###"}), "x ##y #");
  EXPECT_EQ(pieces, (std::vector<std::string>{"x ", "x ##y", "x ##y "}));
  EXPECT_EQ(Joined({Bytes("\xE6\x96"), Bytes("\xA9!")}, nullptr, {"\xE6\x96\xA9"}), "");
  EXPECT_EQ(Joined({Bytes("a.b")}, nullptr, {""}), "a.b");  // an empty stop string (the server refuses it)
}

}  // namespace
}  // namespace attribution::client
