// SPDX-License-Identifier: Apache-2.0
// The attribution renderers (client/heatmap.h) on attributions built by hand: NaN and infinite values
// are drawn grey (they were the strongest red), and the faithfulness chart leaves out points that are
// not finite (it wrote points="56.0,nan" and cy="nan") and says so.
#include "client/heatmap.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "client/palette.h"

namespace attribution::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Three prompt tokens, one feature each: "Is" "it" "big", target " No".
Attribution ThreeFeatures(std::vector<double> sequence) {
  Attribution a{.model = "demo", .method = "saliency"};
  for (const char* text : {"Is", "it", "big"}) a.prompt_tokens.push_back({.text = text});
  a.target_tokens.push_back({.id = 9, .text = " No"});
  for (int64_t p = 0; p < 3; ++p)
    a.features.push_back({.token_begin = p, .token_end = p + 1, .text = a.prompt_tokens[p].text});
  a.sequence = std::move(sequence);
  return a;
}

std::string SpanOf(const std::string& html, const std::string& text) {
  const size_t end = html.find(">" + text + "</span>");
  if (end == std::string::npos) return "";
  return html.substr(html.rfind("<span", end), end - html.rfind("<span", end));
}

// Markup is escaped, and other control bytes show as their pictures: browsers drop a NUL, so two row ids that
// differ by one read alike in a report.
TEST(HtmlEscape, EscapesMarkupAndShowsControlBytes) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
  EXPECT_EQ(HtmlEscape(std::string("nul\0byte\x1b\x7f", 10)), "nul&#x2400;byte&#x241b;&#x2421;");
  EXPECT_EQ(HtmlEscape("tab\tline\n"), "tab\tline\n");
  EXPECT_EQ(HtmlEscape("caf\xc3\xa9"), "caf\xc3\xa9");
}

TEST(HtmlReport, DrawsNaNAttributionsGreyWithNaNOnHover) {
  const std::string html = HtmlReport(ThreeFeatures({0.5, kNaN, -1}));
  EXPECT_THAT(SpanOf(html, "it"), HasSubstr(Css(kNonFiniteColor)));
  EXPECT_THAT(SpanOf(html, "it"), HasSubstr("title=\"nan\""));
  EXPECT_THAT(SpanOf(html, "big"), HasSubstr(Css(ColorOf(-1, 1))));  // the finite ones keep their scale
  EXPECT_THAT(html, HasSubstr("NaN or infinite</span>"));            // in the legend
  EXPECT_THAT(HtmlReport(ThreeFeatures({0.5, 0, -1})), Not(HasSubstr("NaN or infinite")));
}

TEST(HtmlReport, DrawsNaNInTheTokenMatrixGrey) {
  Attribution a = ThreeFeatures({0.5, 0.25, -1});
  a.token_matrix = {{kNaN, 0.25, -1}};
  EXPECT_THAT(HtmlReport(a), HasSubstr("<td style=\"" + Css(kNonFiniteColor) + "\">nan</td>"));
}

TEST(HtmlReport, LeavesNaNFaithfulnessPointsOutOfTheChart) {
  Attribution a = ThreeFeatures({0.5, 0.25, -1});
  a.faithfulness = Faithfulness{.percents = {25, 50, 75},
                                .full = 0.9,
                                .empty = 0.1,
                                .deletion = {0.5, kNaN, 0.2},
                                .insertion = {kNaN, kNaN, std::numeric_limits<double>::infinity()}};
  const std::string html = HtmlReport(a);
  const std::string svg = html.substr(html.find("<svg"), html.find("</svg>") - html.find("<svg"));
  EXPECT_THAT(svg, Not(HasSubstr("nan")));
  EXPECT_THAT(svg, Not(HasSubstr(",inf")));
  EXPECT_THAT(svg, Not(HasSubstr("\"inf")));
  EXPECT_THAT(svg, HasSubstr("4 points NaN or"));
  EXPECT_THAT(svg, HasSubstr(">0.9</text>"));  // the y axis up to the largest finite p
  // The deletion curve breaks at its NaN: two polylines (0%, 25%) and (75%, 100%).
  size_t polylines = 0;
  for (size_t at = svg.find("#1f77b4\" stroke-width=\"3\" points="); at != std::string::npos;
       at = svg.find("#1f77b4\" stroke-width=\"3\" points=", at + 1)) {
    ++polylines;
  }
  EXPECT_EQ(polylines, 2u);
  // Nothing finite: an axis from 0 to 1 (it was 0 to 1e-12) and no curve.
  a.faithfulness->full = a.faithfulness->empty = kNaN;
  a.faithfulness->deletion = {kNaN, kNaN, kNaN};
  const std::string empty = HtmlReport(a);
  EXPECT_THAT(empty, HasSubstr("text-anchor=\"end\">1</text>"));
  EXPECT_THAT(empty, Not(HasSubstr("<polyline")));
  EXPECT_THAT(empty, HasSubstr("10 points NaN or"));
}

// LIME's lasso answers -0 for the features it drops; the table showed "-0" beside "0", as if negative.
TEST(TerminalHeatmap, ShowsAnExactZeroUnsigned) {
  const std::string plain = TerminalHeatmap(ThreeFeatures({0.5, -0.0, 0.0}), /*color=*/false);
  EXPECT_THAT(plain, Not(HasSubstr("-0")));
  EXPECT_THAT(plain, HasSubstr("\n2      it" + std::string(34, ' ') + "0\n"));
  EXPECT_THAT(HtmlReport(ThreeFeatures({0.5, -0.0, 0.0})), Not(HasSubstr("\"-0\"")));
}

TEST(TerminalHeatmap, PaintsNaNAttributionsGreyAndRanksThemLast) {
  const std::string out = TerminalHeatmap(ThreeFeatures({0.5, kNaN, -1}), /*color=*/true);
  EXPECT_THAT(out, HasSubstr(Paint("it", kNonFiniteColor)));
  EXPECT_THAT(out, HasSubstr(Paint("big", ColorOf(-1, 1))));
  EXPECT_THAT(out, HasSubstr(Paint("grey", kNonFiniteColor) + ": NaN or infinite"));
  const std::string plain = TerminalHeatmap(ThreeFeatures({0.5, kNaN, -1}), /*color=*/false);
  EXPECT_THAT(plain, HasSubstr("\n1      big"));
  EXPECT_THAT(plain, HasSubstr("\n2      Is"));
  EXPECT_THAT(plain, HasSubstr("\n3      it"));
}

// Tokens and names from a server reached the terminal with their control characters (only \n \t \r and
// ESC were escaped; BEL, backspace, C1 CSI were not; the model and method name not at all).
TEST(TerminalHeatmap, ShowsControlCharactersInTokensAndNamesVisibly) {
  Attribution a = ThreeFeatures({0.5, 0.25, -1});
  a.model = "\x1b]0;pwned\x07";
  a.method = "m\x08";
  a.features[1].text =
      "\xc2\x9b"
      "2J";
  a.target_tokens[0].text = "\x07No";
  const std::string out = TerminalHeatmap(a, /*color=*/false);
  EXPECT_EQ(out.find_first_of("\x1b\x07\x08"), std::string::npos) << out;
  EXPECT_EQ(out.find("\xc2\x9b"), std::string::npos) << out;
  EXPECT_THAT(out, HasSubstr("model \\e]0;pwned\\x07, method m\\x08"));
  EXPECT_THAT(out, HasSubstr("[\\u009b2J]"));
  EXPECT_THAT(out, HasSubstr("\"\\x07No\""));
}

}  // namespace
}  // namespace attribution::client
