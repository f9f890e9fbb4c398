// SPDX-License-Identifier: Apache-2.0
// The component renderers (client/component_render.h) on results built by hand: text that is not
// UTF-8 in the JSON.
#include "client/component_render.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_format.h"
#include "client/palette.h"

namespace attribution::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// One layer of two heads over a one-token pair.
ComponentAttribution TwoHeads(std::vector<double> values) {
  ComponentAttribution a{
      .model = "demo", .method = "activation_patching", .metric = "logit_difference", .direction = "denoising"};
  a.answer = {.id = 1, .text = " Yes"};
  a.wrong_answer = {.id = 2, .text = " No"};
  a.grids.push_back({.site = "heads",
                     .granularity = "layer_head",
                     .shape = {1, 2},
                     .axes = {"layer", "head"},
                     .values = std::move(values)});
  a.pairs.push_back({.clean_metric = 1,
                     .corrupted_metric = -1,
                     .clean_tokens = {{.id = 3, .text = "cup"}},
                     .corrupted_tokens = {{.id = 4, .text = "mug"}}});
  return a;
}

TEST(ComponentJson, WritesTextThatIsNotUtf8WithReplacements) {
  ComponentAttribution a = TwoHeads({0.5, -0.25});
  a.answer.text =
      "a\xff"
      "b";
  a.pairs[0].clean_tokens[0].text = "\xc3";
  const nlohmann::json json = nlohmann::json::parse(ComponentJson(a));
  EXPECT_EQ(json["answer"]["text"],
            "a\xef\xbf\xbd"
            "b");
  EXPECT_EQ(json["pairs"][0]["clean_tokens"][0], "\xef\xbf\xbd");
  EXPECT_EQ(json["grids"][0]["values"][1], -0.25);
}

// --json left out the server's build and forward passes (its own stats object), and the settings the method ran with.
TEST(ComponentJson, CarriesTheStatsAndTheSettingsUsed) {
  ComponentAttribution a = TwoHeads({0.5, -0.25});
  a.stats = {.rows = 4, .forward_passes = 3, .backward_passes = 2, .wall_seconds = 0.5, .server_build = "146fc405e291"};
  a.settings_used = {.n_steps = 8, .rule = "gausslegendre"};
  const nlohmann::json json = nlohmann::json::parse(ComponentJson(a));
  EXPECT_EQ(json["stats"]["server_build"], "146fc405e291");
  EXPECT_EQ(json["stats"]["forward_passes"], 3);
  EXPECT_EQ(json["settings_used"], nlohmann::json({{"n_steps", 8}, {"rule", "gausslegendre"}}));
}

// An exact zero shows as 0 in the table and the ranking, whatever its sign.
TEST(TerminalComponents, ShowsAnExactZeroUnsigned) {
  const std::string out = TerminalComponents(TwoHeads({-0.0, 0.5}), /*color=*/false);
  EXPECT_THAT(out, Not(HasSubstr("-0.0000")));
  EXPECT_THAT(out, HasSubstr("   0.0000   0.5000"));
  EXPECT_THAT(ComponentHtmlReport(TwoHeads({-0.0, 0.5})), Not(HasSubstr("-0")));
}

// A NaN cell was the strongest red, and std::sort over |value| with a NaN is no strict weak order.
TEST(TerminalComponents, PaintsNaNGreyAndRanksItLast) {
  const ComponentAttribution a = TwoHeads({std::numeric_limits<double>::quiet_NaN(), -0.25});
  const std::string out = TerminalComponents(a, /*color=*/true);
  EXPECT_THAT(out,
              HasSubstr(Paint(absl::StrFormat(" %8.4f", std::numeric_limits<double>::quiet_NaN()), kNonFiniteColor)));
  EXPECT_THAT(out, HasSubstr(Paint("  -0.2500", ColorOf(-1, 1))));
  EXPECT_THAT(out, HasSubstr("strongest:  L0.H1 -0.2500  L0.H0"));
}

TEST(ComponentHtmlReport, DrawsNaNGreyWithNaNOnHover) {
  const std::string html = ComponentHtmlReport(TwoHeads({std::numeric_limits<double>::quiet_NaN(), -0.25}));
  EXPECT_THAT(html, HasSubstr("<td style=\"" + Css(kNonFiniteColor) + "\" title=\"L0 H0: nan\">nan</td>"));
}

TEST(TerminalComponents, ShowsControlCharactersInNamesVisibly) {
  ComponentAttribution a = TwoHeads({0.5, -0.25});
  a.method = "\x1b[2J";
  a.grids[0].site = "heads\x07";
  a.answer.text = "\x9b";
  const std::string out = TerminalComponents(a, /*color=*/false);
  EXPECT_EQ(out.find_first_of("\x1b\x07\x9b"), std::string::npos) << out;
  EXPECT_THAT(out, HasSubstr("\\e[2J, denoising"));
  EXPECT_THAT(out, HasSubstr("\nheads\\x07\n"));
}

}  // namespace
}  // namespace attribution::client
