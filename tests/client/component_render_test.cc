// SPDX-License-Identifier: Apache-2.0
// The component renderers (client/component_render.h) on results built by hand: text that is not
// UTF-8 in the JSON.
#include "client/component_render.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace attribution::client {
namespace {

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

}  // namespace
}  // namespace attribution::client
