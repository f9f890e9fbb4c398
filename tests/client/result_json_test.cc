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
  Generation generation{.tokens = {{.id = 7, .text = kNotUtf8, .bytes = kNotUtf8, .log_prob = -0.5f}},
                        .text = kNotUtf8,
                        .text_bytes = kNotUtf8,
                        .stopped = true,
                        .stats = {.rows = 3}};
  const nlohmann::json json = nlohmann::json::parse(GenerationJson(generation));
  EXPECT_EQ(json["text"], kReplaced);
  // The exact bytes stay readable (the text alone cannot say which bytes U+FFFD replaced).
  EXPECT_EQ(json["text_bytes_hex"], "61ff62");
  EXPECT_EQ(json["tokens"][0]["bytes_hex"], "61ff62");
  EXPECT_EQ(json["stats"]["rows"], 3);
  EXPECT_EQ(json["tokens"][0]["text"], kReplaced);
  EXPECT_EQ(json["tokens"][0]["id"], 7);
  EXPECT_EQ(json["tokens"][0]["log_prob"], -0.5);
  EXPECT_EQ(json["stopped"], true);
}

TEST(LogprobsJson, WritesPromptTargetAlternativesAndTotal) {
  Logprobs logprobs{
      .prompt_tokens = {{.id = 1, .text = "<s>", .special = true}, {.id = 5, .text = "Is", .char_end = 2}},
      .target = {{.token = {.id = 9, .text = "\xef\xbf\xbd", .bytes = "\xf0", .log_prob = -0.25f},
                  .top = {{.id = 8, .text = " Yes", .bytes = " Yes", .log_prob = -0.5f}}}},
      .total_log_prob = -0.25,
      .stats = {.rows = 1, .forward_passes = 1}};
  const nlohmann::json json = nlohmann::json::parse(LogprobsJson(logprobs));
  EXPECT_EQ(json["prompt_tokens"].size(), 2u);
  EXPECT_EQ(json["prompt_tokens"][0]["special"], true);
  EXPECT_EQ(json["prompt_tokens"][1]["char_end"], 2);
  EXPECT_EQ(json["target"][0]["id"], 9);
  EXPECT_EQ(json["target"][0]["text"], "\xef\xbf\xbd");
  EXPECT_EQ(json["target"][0]["bytes_hex"], "f0");  // the first of an emoji's four bytes
  EXPECT_EQ(json["target"][0]["top"][0]["bytes_hex"], "20596573");
  EXPECT_EQ(json["target"][0]["log_prob"], -0.25);
  EXPECT_EQ(json["target"][0]["top"][0]["text"], " Yes");
  EXPECT_EQ(json["target"][0]["top"][0]["log_prob"], -0.5);
  EXPECT_EQ(json["total_log_prob"], -0.25);
  EXPECT_EQ(json["stats"]["rows"], 1);
}

TEST(ModelsJson, WritesEveryFieldWithTheLimits) {
  const std::vector<ModelInfo> models = {{.name = "demo",
                                          .architecture = "llama",
                                          .dtype = "float32",
                                          .quantization = "nf4",
                                          .device = "cpu",
                                          .quantization_block_size = 64,
                                          .double_quantization = true,
                                          .checkpoint_compute_dtype = "bfloat16",
                                          .resident_weight_bytes = 1000,
                                          .vocab_size = 512,
                                          .num_layers = 2,
                                          .hidden_size = 64,
                                          .max_steps = 1024,
                                          .max_samples = 2048,
                                          .max_features = 256,
                                          .max_tokens = 4096,
                                          .max_new_tokens = 128,
                                          .max_top_k = 20,
                                          .max_exact_shapley_features = 12,
                                          .max_choices = 256,
                                          .max_rows = 65536,
                                          .max_pairs = 64,
                                          .max_queued_tokens = 1 << 24,
                                          .max_queued_bytes = int64_t{8} << 30,
                                          .max_kv_cache_tokens = 4096}};
  const nlohmann::json json = nlohmann::json::parse(ModelsJson(models));
  ASSERT_EQ(json["models"].size(), 1u);
  const nlohmann::json& m = json["models"][0];
  EXPECT_EQ(m.size(), 28u);
  EXPECT_EQ(m["name"], "demo");
  EXPECT_EQ(m["quantization_block_size"], 64);
  EXPECT_EQ(m["double_quantization"], true);
  EXPECT_EQ(m["quantization_from_checkpoint"], false);
  EXPECT_EQ(m["checkpoint_compute_dtype"], "bfloat16");
  EXPECT_EQ(m["resident_weight_bytes"], 1000);
  EXPECT_EQ(m["max_steps"], 1024);
  EXPECT_EQ(m["max_top_k"], 20);
  EXPECT_EQ(m["max_choices"], 256);
  EXPECT_EQ(m["max_rows"], 65536);
  EXPECT_EQ(m["max_pairs"], 64);
  EXPECT_EQ(m["max_queued_tokens"], 1 << 24);
  EXPECT_EQ(m["max_queued_bytes"], int64_t{8} << 30);
  EXPECT_EQ(m["max_exact_shapley_features"], 12);
  EXPECT_EQ(m["max_kv_cache_tokens"], 4096);
}

}  // namespace
}  // namespace attribution::client
