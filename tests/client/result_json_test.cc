// SPDX-License-Identifier: Apache-2.0
// The --json text of Generate, Logprobs and ListModels results (client/result_json.h), on results built
// by hand: every field is there, and text that is not UTF-8 (a server's strings arrive unchecked) is
// written with U+FFFD where nlohmann's strict dump threw and aborted the CLI.
#include "client/result_json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace attribution::client {
namespace {

constexpr char kNotUtf8[] =
    "a\xff"
    "b";
constexpr char kReplaced[] =
    "a\xef\xbf\xbd"
    "b";  // U+FFFD for the bad byte

TEST(GenerationJson, WritesTextThatIsNotUtf8WithReplacements) {
  Generation generation{.tokens = {{.id = 7, .text = kNotUtf8, .log_prob = -0.5f}}, .text = kNotUtf8, .stopped = true};
  const nlohmann::json json = nlohmann::json::parse(GenerationJson(generation));
  EXPECT_EQ(json["text"], kReplaced);
  EXPECT_EQ(json["tokens"][0]["text"], kReplaced);
  EXPECT_EQ(json["tokens"][0]["id"], 7);
  EXPECT_EQ(json["tokens"][0]["log_prob"], -0.5);
  EXPECT_EQ(json["stopped"], true);
}

}  // namespace
}  // namespace attribution::client
