// SPDX-License-Identifier: Apache-2.0
// The renderers' shared colours and ranking (client/palette.h): NaN and infinities are grey and rank
// last, and they do not set the colour scale.
#include "client/palette.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace attribution::client {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

bool Same(Rgb x, Rgb y) { return x.r == y.r && x.g == y.g && x.b == y.b; }

// std::min(1.0, NaN) is 1 and NaN >= 0 is false: a NaN was drawn in the strongest red.
TEST(ColorOf, IsGreyForNaNAndInfinities) {
  for (double value : {kNaN, -kNaN, kInf, -kInf}) {
    EXPECT_TRUE(Same(ColorOf(value, 1), kNonFiniteColor)) << value;
    EXPECT_TRUE(Same(ColorOf(value, kNaN), kNonFiniteColor)) << value;
  }
  EXPECT_TRUE(Same(ColorOf(-1, 1), Rgb{255, 64, 64}));
  EXPECT_TRUE(Same(ColorOf(1, 1), Rgb{64, 255, 64}));
  EXPECT_TRUE(Same(ColorOf(0.5, kInf), Rgb{255, 255, 255}));  // no scale: white, as scale 0
}

TEST(MaxAbs, IgnoresNaNAndInfinities) {
  EXPECT_EQ(MaxAbs({kNaN, -2, kInf, 1}), 2);
  EXPECT_EQ(MaxAbs({kNaN}), 0);
}

TEST(StrongerThan, RanksByMagnitudeWithNaNAndInfinitiesLast) {
  std::vector<double> values = {0.5, kNaN, -3, kInf, 1, kNaN, -0.1};
  std::sort(values.begin(), values.end(), StrongerThan);
  EXPECT_EQ(values[0], -3);
  EXPECT_EQ(values[1], 1);
  EXPECT_EQ(values[2], 0.5);
  EXPECT_EQ(values[3], -0.1);
  for (size_t i = 4; i < values.size(); ++i) EXPECT_FALSE(std::isfinite(values[i])) << i;
}

// Tokens, names and messages from a server reached the terminal raw: ESC, BEL or a C1 CSI could clear,
// recolour or retitle it (only \n \t \r and ESC were escaped).
TEST(Printable, MakesEveryControlCharacterVisible) {
  EXPECT_EQ(Printable("\x1b]0;title\x07"), "\\e]0;title\\x07");
  EXPECT_EQ(Printable(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(Printable("\x08\x7f\r\n\t"), "\\x08\\x7f\\r\\n\\t");
  EXPECT_EQ(Printable("\xc2\x9b"
                      "2J"),
            "\\u009b2J");  // C1 CSI as UTF-8 encodes it
  EXPECT_EQ(Printable("\x9b"
                      "2J"),
            "\\x9b2J");                              // a lone byte: CSI to an 8-bit terminal
  EXPECT_EQ(Printable("a\xe2\x82"), "a\\xe2\\x82");  // a sequence cut short
}

TEST(Printable, KeepsPrintableUtf8) {
  for (const char* text : {"caf\xc3\xa9", "\xc2\xa0nbsp", "\xe2\x96\x81token", "\xf0\x9f\x98\x80", "\xef\xbf\xbd"}) {
    EXPECT_EQ(Printable(text), text);
  }
}

TEST(TerminalText, KeepsLineBreaksAndTabsOnly) { EXPECT_EQ(TerminalText("a\nb\tc\r\x1b[2J"), "a\nb\tc\\r\\e[2J"); }

}  // namespace
}  // namespace attribution::client
