// SPDX-License-Identifier: Apache-2.0
// config.json values a model cannot be built from are INVALID_ARGUMENT naming the field, never a
// config that parses into sizes the loader then trips over (cases found with
// tests/fuzz/model_config_fuzzer).
#include "engine/model/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

nlohmann::json Llama(const nlohmann::json& patch = nlohmann::json::object()) {
  nlohmann::json config = {
      {"model_type", "llama"},  {"vocab_size", 10},         {"hidden_size", 8},         {"intermediate_size", 16},
      {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"num_key_value_heads", 2}, {"max_position_embeddings", 64},
      {"rms_norm_eps", 1e-5}};
  config.merge_patch(patch);
  return config;
}

nlohmann::json Gpt2(const nlohmann::json& patch = nlohmann::json::object()) {
  nlohmann::json config = {{"model_type", "gpt2"}, {"vocab_size", 10}, {"n_embd", 8},
                           {"n_layer", 1},         {"n_head", 2},      {"n_positions", 64}};
  config.merge_patch(patch);
  return config;
}

nlohmann::json Falcon(const nlohmann::json& patch = nlohmann::json::object()) {
  nlohmann::json config = {{"model_type", "falcon"},
                           {"vocab_size", 10},
                           {"hidden_size", 8},
                           {"num_hidden_layers", 1},
                           {"num_attention_heads", 4}};
  config.merge_patch(patch);
  return config;
}

// FalconConfig's defaults (multi_query, parallel_attn, no bias, 4 * hidden MLP, tied head) and its three
// fused query_key_value layouts, as transformers' FalconAttention reads them.
TEST(ModelConfig, FalconLayoutsFollowTransformersDefaults) {
  auto seven_b = ParseModelConfig(Falcon().dump(), "config.json");
  ASSERT_THAT(seven_b, IsOk());
  EXPECT_EQ(seven_b->num_kv_heads, 1);
  EXPECT_EQ(seven_b->qkv_layout, FusedQkvLayout::kConsecutive);
  EXPECT_TRUE(seven_b->parallel_attention);
  EXPECT_FALSE(seven_b->separate_parallel_norms);
  EXPECT_EQ(seven_b->intermediate_size, 32);
  EXPECT_TRUE(seven_b->tie_word_embeddings);
  EXPECT_FALSE(seven_b->attention_bias);

  auto grouped = ParseModelConfig(Falcon({{"new_decoder_architecture", true}, {"n_head_kv", 2}}).dump(), "c");
  ASSERT_THAT(grouped, IsOk());
  EXPECT_EQ(grouped->num_kv_heads, 2);
  EXPECT_EQ(grouped->qkv_layout, FusedQkvLayout::kPerKvGroup);
  EXPECT_TRUE(grouped->separate_parallel_norms);  // num_ln_in_parallel_attn null: 2

  auto sequential =
      ParseModelConfig(Falcon({{"multi_query", false}, {"parallel_attn", false}, {"bias", true}}).dump(), "c");
  ASSERT_THAT(sequential, IsOk());
  EXPECT_EQ(sequential->num_kv_heads, 4);
  EXPECT_EQ(sequential->qkv_layout, FusedQkvLayout::kPerHead);
  EXPECT_FALSE(sequential->parallel_attention);
  EXPECT_TRUE(sequential->attention_bias && sequential->mlp_bias);
}

TEST(ModelConfig, MixtralReadsItsExperts) {
  auto mixtral = ParseModelConfig(
      Llama({{"model_type", "mixtral"}, {"num_local_experts", 4}, {"num_experts_per_tok", 2}, {"sliding_window", 6}})
          .dump(),
      "config.json");
  ASSERT_THAT(mixtral, IsOk());
  ASSERT_TRUE(mixtral->mixture_of_experts.has_value());
  EXPECT_EQ(mixtral->mixture_of_experts->num_experts, 4);
  EXPECT_EQ(mixtral->mixture_of_experts->experts_per_token, 2);
  EXPECT_EQ(mixtral->sliding_window, 6);
  EXPECT_FALSE(ParseModelConfig(Llama().dump(), "config.json")->mixture_of_experts.has_value());
}

// As transformers' Qwen2Config: the window applies to the layers from max_window_layers on (default 28),
// or to those layer_types names "sliding_attention"; Mistral's to every layer.
TEST(ModelConfig, Qwen2WindowsOnlyItsSlidingAttentionLayers) {
  auto qwen = [](nlohmann::json fields) {
    fields.update(
        {{"model_type", "qwen2"}, {"use_sliding_window", true}, {"sliding_window", 6}, {"num_hidden_layers", 3}});
    return ParseModelConfig(Llama(fields).dump(), "config.json");
  };
  const int64_t layers = 3;
  auto from_max_window_layers = qwen({{"max_window_layers", 1}});
  ASSERT_THAT(from_max_window_layers, IsOk());
  std::vector<bool> expected(layers, true);
  expected[0] = false;
  EXPECT_EQ(from_max_window_layers->windowed_layers, expected);
  EXPECT_EQ(qwen({})->windowed_layers, std::vector<bool>(layers, false));  // max_window_layers 28
  nlohmann::json types = nlohmann::json::array();
  for (int64_t i = 0; i < layers; ++i) types.push_back(i % 2 ? "full_attention" : "sliding_attention");
  auto listed = qwen({{"layer_types", types}, {"max_window_layers", 0}});
  ASSERT_THAT(listed, IsOk());
  for (int64_t i = 0; i < layers; ++i) EXPECT_EQ(listed->windowed_layers[i], i % 2 == 0) << "layer " << i;
  EXPECT_THAT(qwen({{"layer_types", nlohmann::json::array({"sliding_attention"})}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer_types must list one attention type")));
  auto mistral = ParseModelConfig(
      Llama({{"model_type", "mistral"}, {"sliding_window", 6}, {"num_hidden_layers", layers}}).dump(), "config.json");
  ASSERT_THAT(mistral, IsOk());
  EXPECT_EQ(mistral->windowed_layers, std::vector<bool>(layers, true));
}

TEST(ModelConfig, ReadsBitsandbytesQuantizationConfig) {
  auto config = ParseModelConfig(Llama({{"quantization_config",
                                         {{"quant_method", "bitsandbytes"},
                                          {"load_in_4bit", true},
                                          {"bnb_4bit_use_double_quant", true},
                                          {"bnb_4bit_compute_dtype", "bfloat16"},
                                          {"llm_int8_skip_modules", {"lm_head", "mlp.down_proj"}}}}})
                                     .dump(),
                                 "config.json");
  ASSERT_THAT(config, IsOk());
  ASSERT_TRUE(config->checkpoint_quantization.has_value());
  EXPECT_EQ(config->checkpoint_quantization->quant_type, "fp4");  // BitsAndBytesConfig's default
  EXPECT_TRUE(config->checkpoint_quantization->double_quantization);
  EXPECT_EQ(config->checkpoint_quantization->compute_dtype, "bfloat16");
  EXPECT_FALSE(ParseModelConfig(Llama().dump(), "config.json")->checkpoint_quantization.has_value());
}

// Nesting is bounded before anything walks the config (a 100,000-deep layer_types overflowed the stack
// printing the value into its refusal); 128 levels, as the tokenizers library's parser allows.
TEST(ModelConfig, NestingPastTheLimitIsRefusedAndWithinItIsRead) {
  const auto nested = [](int depth) { return std::string(depth, '[') + "1" + std::string(depth, ']'); };
  std::string config = Llama().dump();
  config.insert(config.size() - 1, ",\"layer_types\":" + nested(100000));
  EXPECT_THAT(ParseModelConfig(config, "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("config.json: objects and arrays nested more than 128 deep")));
  std::string unknown = Llama().dump();
  unknown.insert(unknown.size() - 1, ",\"some_key\":" + nested(127));
  EXPECT_THAT(ParseModelConfig(unknown, "config.json"), IsOk());
}

// A layer count in the billions allocated per-layer tables of gigabytes before anything was checked.
TEST(ModelConfig, LayerCountsPastTheLimitAreRefused) {
  EXPECT_THAT(ParseModelConfig(Llama({{"num_hidden_layers", int64_t{1} << 36}}).dump(), "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("config.json: \"num_hidden_layers\" 68719476736 is more than 4096 layers")));
  EXPECT_THAT(ParseModelConfig(Llama({{"num_hidden_layers", 4096}}).dump(), "config.json"), IsOk());
  EXPECT_THAT(ParseModelConfig(Llama({{"head_dim", int64_t{1} << 62}}).dump(), "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must each be at most 1048576")));
}

TEST(ModelConfig, ValidConfigsParse) {
  EXPECT_THAT(ParseModelConfig(Llama().dump(), "config.json"), IsOk());
  auto gpt2 = ParseModelConfig(Gpt2({{"n_inner", nullptr}}).dump(), "config.json");
  ASSERT_THAT(gpt2, IsOk());
  EXPECT_EQ(gpt2->intermediate_size, 32);  // n_inner null: 4 * n_embd
}

// A key config.json leaves out means what the architecture's transformers config class says (transformers 5.23:
// MistralConfig, MixtralConfig, Qwen2Config, GPT2Config), not one default for all: before, a Mixtral without
// rope_theta ran with 10000 and a Mistral without sliding_window without a window.
TEST(ModelConfig, AbsentKeysTakeTheArchitecturesDefaults) {
  nlohmann::json bare = Llama({{"hidden_size", 64}, {"num_attention_heads", 32}});
  for (const char* key :
       {"rope_theta", "rms_norm_eps", "max_position_embeddings", "sliding_window", "num_key_value_heads"}) {
    bare.erase(key);
  }
  auto parse = [&](const char* type, const nlohmann::json& patch = nlohmann::json::object()) {
    nlohmann::json config = bare;
    config["model_type"] = type;
    config.update(patch);
    absl::StatusOr<ModelConfig> parsed = ParseModelConfig(config.dump(), "config.json");
    EXPECT_THAT(parsed, IsOk()) << type;
    return parsed.value_or(ModelConfig{});
  };
  const ModelConfig llama = parse("llama"), mistral = parse("mistral"), mixtral = parse("mixtral");
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_EQ(llama.norm_eps, 1e-6);
  EXPECT_EQ(llama.rope_theta, 1e4);
  EXPECT_FALSE(llama.sliding_window.has_value());
  EXPECT_EQ(mistral.max_position_embeddings, 131072);
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_EQ(mixtral.norm_eps, 1e-5);
  EXPECT_EQ(mixtral.rope_theta, 1e6);
  EXPECT_FALSE(mixtral.sliding_window.has_value());
  EXPECT_EQ(parse("qwen2").max_position_embeddings, 32768);
  EXPECT_FALSE(parse("qwen2").sliding_window.has_value());
  EXPECT_EQ(parse("qwen2", {{"use_sliding_window", true}}).sliding_window, 4096);
  EXPECT_FALSE(parse("mistral", {{"sliding_window", nullptr}}).sliding_window.has_value());  // null: no window
  // Key-value heads: LlamaConfig's are the attention heads, MistralConfig's and MixtralConfig's 8, Qwen2Config's
  // 32 (before, every architecture took the attention heads: a Mistral GQA checkpoint failed on k_proj's shape).
  EXPECT_EQ(llama.num_kv_heads, 32);
  EXPECT_EQ(mistral.num_kv_heads, 8);
  EXPECT_EQ(mixtral.num_kv_heads, 8);
  EXPECT_EQ(parse("qwen2").num_kv_heads, 32);
  EXPECT_EQ(parse("mistral", {{"num_key_value_heads", nullptr}}).num_kv_heads, 32);  // transformers 4's null
}

// A default key-value head count that does not divide the config's heads names the absent key, not a value
// the config never gave.
TEST(ModelConfig, AbsentKeyValueHeadsThatDoNotFitAreNamed) {
  nlohmann::json config = Llama({{"model_type", "mistral"}, {"num_attention_heads", 4}});
  config.erase("num_key_value_heads");
  EXPECT_THAT(ParseModelConfig(config.dump(), "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("config.json: num_key_value_heads is absent, and this architecture's default (8")));
  config["num_key_value_heads"] = 2;
  EXPECT_THAT(ParseModelConfig(config.dump(), "config.json"), IsOk());
}

// GPT-2's attention scaling options as GPT2Attention applies them, and its head untied when the config says so.
TEST(ModelConfig, Gpt2AttentionScalingAndHeadTying) {
  auto parse = [](const nlohmann::json& patch) { return *ParseModelConfig(Gpt2(patch).dump(), "config.json"); };
  const ModelConfig plain = parse(nlohmann::json::object());
  EXPECT_DOUBLE_EQ(AttentionScale(plain, 0), 1 / std::sqrt(plain.head_dim));
  EXPECT_DOUBLE_EQ(AttentionScale(plain, 3), 1 / std::sqrt(plain.head_dim));
  EXPECT_TRUE(plain.tie_word_embeddings);
  const ModelConfig by_layer = parse({{"scale_attn_by_inverse_layer_idx", true}});
  EXPECT_DOUBLE_EQ(AttentionScale(by_layer, 3), 1 / std::sqrt(plain.head_dim) / 4);
  EXPECT_DOUBLE_EQ(AttentionScale(parse({{"scale_attn_weights", false}}), 2), 1.0);
  EXPECT_FALSE(parse({{"tie_word_embeddings", false}}).tie_word_embeddings);
}

// transformers writes null for unset options: null means the key is absent, not a value of the wrong type.
TEST(ModelConfig, NullMeansAbsent) {
  nlohmann::json config = Llama();
  for (const char* key : {"pad_token_id", "bos_token_id", "eos_token_id", "rope_scaling", "rope_theta", "head_dim",
                          "num_key_value_heads", "tie_word_embeddings", "attention_bias", "max_position_embeddings"}) {
    config[key] = nullptr;
  }
  auto parsed = ParseModelConfig(config.dump(), "config.json");
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->max_position_embeddings, 2048);  // LlamaConfig's
  EXPECT_EQ(parsed->num_kv_heads, 2);
  EXPECT_EQ(parsed->rope_theta, 10000.0);
  EXPECT_FALSE(parsed->pad_token_id.has_value());
  EXPECT_TRUE(parsed->eos_token_ids.empty());

  nlohmann::json qwen = Llama({{"model_type", "qwen2"}, {"use_sliding_window", false}});
  qwen["sliding_window"] = nullptr;
  EXPECT_THAT(ParseModelConfig(qwen.dump(), "config.json"), IsOk());
}

// What real checkpoints ship that transformers reads as something it knows: a pad id of -1 (older Llama
// fine-tunes) is none, "swish" is SiLU, and "gelu_pytorch_tanh" is gelu_new's tanh approximation.
TEST(ModelConfig, NamesTransformersReadAsOthersAreThoseOthers) {
  auto llama = ParseModelConfig(Llama({{"pad_token_id", -1}, {"hidden_act", "swish"}}).dump(), "config.json");
  ASSERT_THAT(llama, IsOk());
  EXPECT_FALSE(llama->pad_token_id.has_value());
  EXPECT_EQ(llama->hidden_act, "silu");
  auto gpt2 = ParseModelConfig(Gpt2({{"activation_function", "gelu_pytorch_tanh"}}).dump(), "config.json");
  ASSERT_THAT(gpt2, IsOk());
  EXPECT_EQ(gpt2->hidden_act, "gelu_new");
  EXPECT_THAT(ParseModelConfig(Gpt2({{"activation_function", "relu"}}).dump(), "config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"relu\" is not supported")));

  const std::string dir = ::testing::TempDir() + "/model_config_generation_pad";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << Llama({{"pad_token_id", 0}}).dump();
  std::ofstream(dir + "/generation_config.json") << R"({"pad_token_id": -1})";
  auto read = ReadModelConfig(dir);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->pad_token_id, 0);  // the generation config's -1 names none, so config.json's stands
}

// Ids from generation_config.json are checked against config.json's vocabulary, and an error names
// generation_config.json, where the id came from.
TEST(ModelConfig, GenerationConfigEosOutsideVocabularyIsRefused) {
  const std::string dir = ::testing::TempDir() + "/model_config_generation_eos";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << Llama({{"eos_token_id", 2}}).dump();
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 99999})";
  EXPECT_THAT(ReadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("generation_config.json: eos_token_id: special token id 99999 is outside the "
                                 "vocabulary of 10")));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [2, -7]})";
  EXPECT_THAT(ReadModelConfig(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("generation_config.json: eos_token_id: special token id -7")));
  std::ofstream(dir + "/generation_config.json") << R"({"pad_token_id": "0"})";
  EXPECT_THAT(ReadModelConfig(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("generation_config.json: \"pad_token_id\" must be an integer")));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 3, "pad_token_id": null})";
  auto config = ReadModelConfig(dir);
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->eos_token_ids, std::vector<int64_t>{3});
}

// transformers' generate() applies a checkpoint's decoding settings by default (an instruct model's sampling and
// repetition penalty); Generate applies only its request's, so they are listed for the load's warning. The ids are
// read; metadata, nulls and transformers' defaults are no settings.
TEST(ModelConfig, GenerationConfigDecodingSettingsAreListedAsUnapplied) {
  const std::string dir = ::testing::TempDir() + "/model_config_generation_settings";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << Llama().dump();
  std::ofstream(dir + "/generation_config.json")
      << R"({"bos_token_id": 1, "do_sample": true, "eos_token_id": [2, 3], "pad_token_id": 0, "min_p": null,
             "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
             "transformers_version": "4.37.0"})";
  auto config = ReadModelConfig(dir);
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->unapplied_generation_settings,
            (std::vector<std::string>{"do_sample", "repetition_penalty", "temperature", "top_k", "top_p"}));
  // transformers' own defaults, as hand-written files give them, change nothing.
  std::ofstream(dir + "/generation_config.json")
      << R"({"eos_token_id": 2, "do_sample": false, "num_beams": 1, "repetition_penalty": 1, "top_p": 1.0,
             "transformers_version": "4.37.0"})";
  config = ReadModelConfig(dir);
  ASSERT_THAT(config, IsOk());
  EXPECT_THAT(config->unapplied_generation_settings, ::testing::IsEmpty());
}

// Rotary embeddings turn pairs of dimensions, GPT-2's learned positions do not: heads of 3 dimensions (n_embd 24,
// n_head 8) are a GPT-2 that transformers runs.
TEST(ModelConfig, OnlyRotaryArchitecturesNeedAnEvenHeadWidth) {
  auto gpt2 = ParseModelConfig(Gpt2({{"n_embd", 24}, {"n_head", 8}}).dump(), "config.json");
  ASSERT_THAT(gpt2, IsOk());
  EXPECT_EQ(gpt2->head_dim, 3);
  EXPECT_THAT(
      ParseModelConfig(Llama({{"hidden_size", 24}, {"num_attention_heads", 8}, {"num_key_value_heads", 8}}).dump(),
                       "config.json"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim 3 must be a positive even number")));
}

struct BadConfig {
  std::string name;
  nlohmann::json config;
  std::string message;
};

void PrintTo(const BadConfig& bad, std::ostream* os) { *os << bad.name; }

class ModelConfigDefect : public ::testing::TestWithParam<BadConfig> {};

TEST_P(ModelConfigDefect, IsInvalidArgumentNamingTheField) {
  EXPECT_THAT(ParseModelConfig(GetParam().config.dump(), "dir/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(GetParam().message)));
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, ModelConfigDefect,
    ::testing::Values(
        BadConfig{"NegativeInnerSize", Gpt2({{"n_inner", -4}}), "\"n_inner\" must be a positive integer"},
        BadConfig{"InnerSizeOverflows", Gpt2({{"n_embd", int64_t{1} << 62}}),
                  "n_embd 4611686018427387904 is too large"},
        BadConfig{"NegativeMaxPositions", Llama({{"max_position_embeddings", -3}}), "max_position_embeddings -3"},
        BadConfig{"ZeroSlidingWindow", Llama({{"model_type", "mistral"}, {"sliding_window", 0}}), "sliding_window 0"},
        BadConfig{"NegativeNormEpsilon", Llama({{"rms_norm_eps", -1}}), "norm epsilon"},
        // Finite as a double, infinite in float32: every answer would be uniform.
        BadConfig{"HugeNormEpsilon", Llama({{"rms_norm_eps", 1e300}}), "must be a finite number in [0, 1]"},
        BadConfig{"Llama3RopeWithoutOriginalPositions",
                  Llama({{"rope_scaling",
                          {{"rope_type", "llama3"},
                           {"factor", 8.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 0}}}}),
                  "original_max_position_embeddings 0 must be positive"},
        // transformers refuses rope parameters without the keys their type needs; a default would be a guess.
        BadConfig{"Llama3RopeLackingAKey",
                  Llama({{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}}}}),
                  "llama3 rope scaling needs \"low_freq_factor\""},
        BadConfig{"LinearRopeWithoutFactor", Llama({{"rope_parameters", {{"rope_type", "linear"}}}}),
                  "rope_parameters: linear rope scaling needs a \"factor\""},
        BadConfig{"NegativeRopeTheta", Llama({{"rope_theta", -1}}), "rope_theta -1"},
        // Finite as a double, infinite in the float32 RoPE frequencies.
        BadConfig{"RopeThetaBeyondFloat", Llama({{"rope_theta", 1e308}}), "dir/config.json: rope_theta 1e+308"},
        // A present value of the wrong type is refused, never replaced by the default.
        BadConfig{"RopeThetaString", Llama({{"rope_theta", "500000"}}),
                  "dir/config.json: \"rope_theta\" must be a number"},
        BadConfig{"RopeParametersThetaString",
                  Llama({{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", "500000"}}}}),
                  "dir/config.json: rope_parameters: \"rope_theta\" must be a number"},
        BadConfig{"RopeFactorString", Llama({{"rope_parameters", {{"rope_type", "linear"}, {"factor", "4"}}}}),
                  "rope_parameters: \"factor\" must be a number"},
        BadConfig{"RopeParametersNotObject", Llama({{"rope_parameters", "default"}}),
                  "\"rope_parameters\" must be an object"},
        BadConfig{"NormEpsilonString", Llama({{"rms_norm_eps", "1e-5"}}), "\"rms_norm_eps\" must be a number"},
        BadConfig{"MaxPositionsString", Llama({{"max_position_embeddings", "512"}}),
                  "\"max_position_embeddings\" must be an integer"},
        BadConfig{"HeadDimString", Llama({{"head_dim", "32"}}), "\"head_dim\" must be an integer"},
        BadConfig{"KvHeadsFloat", Llama({{"num_key_value_heads", 2.0}}), "\"num_key_value_heads\" must be an integer"},
        BadConfig{"KvHeadsBeyondInt64", Llama({{"num_key_value_heads", uint64_t{1} << 63}}),
                  "\"num_key_value_heads\" must be an integer"},
        BadConfig{"TieEmbeddingsString", Llama({{"tie_word_embeddings", "true"}}),
                  "\"tie_word_embeddings\" must be true or false"},
        BadConfig{"SlidingWindowString", Llama({{"model_type", "mistral"}, {"sliding_window", "4096"}}),
                  "\"sliding_window\" must be an integer"},
        BadConfig{"FalconParallelAttentionString", Falcon({{"parallel_attn", "yes"}}),
                  "\"parallel_attn\" must be true or false"},
        BadConfig{"Gpt2EpsilonString", Gpt2({{"layer_norm_epsilon", "1e-5"}}),
                  "\"layer_norm_epsilon\" must be a number"},
        BadConfig{"FourBitFlagString", Llama({{"quantization_config", {{"load_in_4bit", "true"}}}}),
                  "quantization_config: \"load_in_4bit\" must be true or false"},
        BadConfig{"BosString", Llama({{"bos_token_id", "1"}}), "\"bos_token_id\" must be an integer"},
        BadConfig{"EosListWithString", Llama({{"eos_token_id", {2, "3"}}}),
                  "\"eos_token_id\" must be an integer or a list of integers"},
        BadConfig{"EosOutsideVocabulary", Llama({{"eos_token_id", 10}}),
                  "dir/config.json: eos_token_id: special token id 10 is outside the vocabulary of 10"},
        BadConfig{"EosListNegative", Llama({{"eos_token_id", {2, -1}}}), "eos_token_id: special token id -1"},
        BadConfig{"PadOutsideVocabulary", Llama({{"pad_token_id", 12}}), "pad_token_id: special token id 12"},
        BadConfig{"ZeroLinearRopeFactor", Llama({{"rope_scaling", {{"type", "linear"}, {"factor", 0}}}}),
                  "linear rope scaling factor 0"},
        BadConfig{"Int8Checkpoint",
                  Llama({{"quantization_config", {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}}}}),
                  "quantization_config.load_in_8bit: bitsandbytes LLM.int8 checkpoints"},
        BadConfig{"GptqCheckpoint", Llama({{"quantization_config", {{"quant_method", "gptq"}}}}),
                  "quantization_config.quant_method \"gptq\" is not supported"},
        BadConfig{"UnknownFourBitType",
                  Llama({{"quantization_config", {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "int4"}}}}),
                  "quantization_config.bnb_4bit_quant_type \"int4\""},
        BadConfig{"FalconAlibi", Falcon({{"alibi", true}}), "\"alibi\": true"},
        BadConfig{"FalconNewDecoderNotParallel", Falcon({{"new_decoder_architecture", true}, {"parallel_attn", false}}),
                  "new_decoder_architecture with \"parallel_attn\": false"},
        BadConfig{"FalconTwoNormsWithoutNewDecoder", Falcon({{"num_ln_in_parallel_attn", 2}}),
                  "\"num_ln_in_parallel_attn\": 2 needs new_decoder_architecture"},
        BadConfig{"FalconOtherActivation", Falcon({{"activation", "relu"}}), "activation \"relu\""},
        BadConfig{"FalconHeadsDoNotDivideHidden", Falcon({{"num_attention_heads", 3}}), "not divisible"},
        BadConfig{"MixtralMoreExpertsPerTokenThanExperts",
                  Llama({{"model_type", "mixtral"}, {"num_local_experts", 2}, {"num_experts_per_tok", 3}}),
                  "num_experts_per_tok 3 must be in [1, num_local_experts 2]"}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace attribution::engine
