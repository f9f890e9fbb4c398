// SPDX-License-Identifier: Apache-2.0
#include "server/user_text.h"

#include <gtest/gtest.h>

#include <string>

namespace attribution::server {
namespace {

TEST(UserText, ShortTextIsKeptWhole) {
  EXPECT_EQ(AbbreviateUserText("gpt-9"), "gpt-9");
  EXPECT_EQ(QuoteUserText("gpt-9"), "\"gpt-9\"");
  EXPECT_EQ(AbbreviateUserText(std::string(64, 'm')), std::string(64, 'm'));
}

TEST(UserText, LongTextKeepsAPrefixAndItsLength) {
  EXPECT_EQ(AbbreviateUserText(std::string(10000, 'm')), std::string(64, 'm') + "\u2026(10000 bytes)");
  EXPECT_EQ(QuoteUserText("abcdef", 3), "\"abc\u2026(6 bytes)\"");
}

TEST(UserText, PrefixNeverSplitsACharacter) {
  // "é" is two bytes; a 4-byte cut of "aéé" would end inside the second one.
  EXPECT_EQ(AbbreviateUserText("a\u00e9\u00e9x", 4), "a\u00e9\u2026(6 bytes)");
}

}  // namespace
}  // namespace attribution::server
