// SPDX-License-Identifier: Apache-2.0
// A damaged model directory stops the real server at startup the same way whatever the damage: exit
// status 1 within seconds, and a message naming the file and the tensor or field, never an abort.
// Each case copies a good model directory (tools/make_architecture_models.py) and damages one thing.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using nlohmann::json;
using test_support::ServerProcess;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

json ReadJson(const std::string& path) { return json::parse(ReadAll(path)); }
void WriteJson(const std::string& path, const json& value) { WriteAll(path, value.dump()); }
void EditJson(const std::string& path, const std::function<void(json&)>& edit) {
  json value = ReadJson(path);
  edit(value);
  WriteJson(path, value);
}

// The safetensors file as its 8-byte little-endian header length, header text and data bytes.
struct Safetensors {
  std::string header, data;
  static Safetensors Read(const std::string& path) {
    const std::string bytes = ReadAll(path);
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<uint8_t>(bytes[i]);
    return {bytes.substr(8, length), bytes.substr(8 + length)};
  }
  void Write(const std::string& path, std::optional<uint64_t> declared_length = std::nullopt) const {
    std::string bytes(8, '\0');
    const uint64_t length = declared_length.value_or(header.size());
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
    WriteAll(path, bytes + header + data);
  }
};

// Rewrites the header of `path` through `edit`, keeping the data bytes.
void EditHeader(const std::string& path, const std::function<void(json&)>& edit) {
  Safetensors file = Safetensors::Read(path);
  json header = json::parse(file.header);
  edit(header);
  file.header = header.dump();
  file.Write(path);
}

struct BadModel {
  std::string name;
  std::string base;  // the good model directory copied first
  std::function<void(const std::string& dir)> damage;
  std::vector<std::string> message;  // substrings of the startup failure
};

void PrintTo(const BadModel& c, std::ostream* os) { *os << c.name; }

std::vector<BadModel> BadModels() {
  const auto weights = [](const std::string& dir) { return dir + "/model.safetensors"; };
  const auto config = [](const std::string& dir) { return dir + "/config.json"; };
  const std::string norm = "model.norm.weight";
  return {
      // LibTorch / JSON exceptions that used to escape and abort the server.
      {"config_hidden_act_not_a_string",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["hidden_act"] = 1; }); },
       {"config.json", "hidden_act"}},
      {"config_rope_type_not_a_string",
       "llama3-scaled",
       [=](auto d) { EditJson(config(d), [](json& c) { c["rope_parameters"]["rope_type"] = 3; }); },
       {"config.json", "rope_type"}},
      {"tokenizer_json_model_type_not_a_string",
       "llama",
       [](auto d) { EditJson(d + "/tokenizer.json", [](json& t) { t["model"]["type"] = 5; }); },
       {"tokenizer.json"}},
      {"tokenizer_json_added_token_id_not_an_integer",
       "llama",
       [](auto d) { EditJson(d + "/tokenizer.json", [](json& t) { t["added_tokens"][0]["id"] = "one"; }); },
       {"tokenizer.json", "added_tokens"}},
      // Values of the wrong type or range that used to load and answer wrongly.
      {"config_rope_theta_a_string",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["rope_parameters"]["rope_theta"] = "500000"; }); },
       {"config.json", "rope_parameters: \"rope_theta\" must be a number"}},
      {"config_rope_theta_beyond_float32",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["rope_parameters"]["rope_theta"] = 1e308; }); },
       {"config.json", "rope_theta 1e+308"}},
      {"generation_config_eos_outside_the_vocabulary",
       "llama",
       [](auto d) {
         WriteJson(d + "/generation_config.json", {{"eos_token_id", 99999}});
       },
       {"generation_config.json", "eos_token_id", "99999 is outside the vocabulary"}},
      {"tokenizer_json_empty_vocabulary",
       "llama",
       [](auto d) {
         EditJson(d + "/tokenizer.json", [](json& t) {
           t["model"]["vocab"] = json::object();
           t["model"]["merges"] = json::array();
         });
       },
       {"tokenizer.json", "\"vocab\" is empty"}},
      // Damaged weights files.
      {"empty_weights_file",
       "llama",
       [=](auto d) { WriteAll(weights(d), ""); },
       {"model.safetensors", "shorter than the 8-byte header"}},
      {"truncated_weights_file",
       "llama",
       [=](auto d) {
         std::string b = ReadAll(weights(d));
         WriteAll(weights(d), b.substr(0, b.size() - 100));
       },
       {"model.safetensors", "tensor \"", "past the data section"}},
      {"header_length_beyond_the_file",
       "llama",
       [=](auto d) { Safetensors::Read(weights(d)).Write(weights(d), 1 << 24); },
       {"model.safetensors", "runs past the end"}},
      {"header_not_json",
       "llama",
       [=](auto d) {
         Safetensors f = Safetensors::Read(weights(d));
         f.header[0] = '[';
         f.Write(weights(d));
       },
       {"model.safetensors", "header: not valid JSON"}},
      {"overlapping_offsets",
       "llama",
       [=](auto d) {
         EditHeader(weights(d), [](json& h) {
           h["model.layers.0.input_layernorm.weight"]["data_offsets"] =
               h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"];
         });
       },
       {"model.safetensors", "tensor \"model.layers.0."}},
      {"negative_offset",
       "llama",
       [=](auto d) { EditHeader(weights(d), [&](json& h) { h[norm]["data_offsets"][0] = -4; }); },
       {"model.safetensors", "tensor \"model.norm.weight\"", "non-negative integers"}},
      {"offset_past_the_data",
       "llama",
       [=](auto d) { EditHeader(weights(d), [&](json& h) { h[norm]["data_offsets"][1] = uint64_t{1} << 32; }); },
       {"model.safetensors", "tensor \"model.norm.weight\"", "past the data section"}},
      {"unknown_dtype",
       "llama",
       [=](auto d) { EditHeader(weights(d), [&](json& h) { h[norm]["dtype"] = "F7"; }); },
       {"model.safetensors", "tensor \"model.norm.weight\"", "dtype \"F7\" is not supported"}},
      {"integer_dtype",
       "llama",
       [=](auto d) { EditHeader(weights(d), [&](json& h) { h[norm]["dtype"] = "I32"; }); },
       {"model.safetensors", "tensor \"model.norm.weight\"", "dtype \"I32\" is not supported"}},
      {"missing_tensor",
       "llama",
       [=](auto d) {
         EditHeader(weights(d), [&](json& h) {
           h["model.norm.weight.old"] = h[norm];
           h.erase(norm);
         });
       },
       {"model.safetensors", "lack the required tensor \"model.norm.weight\""}},
      {"non_finite_weights",
       "gpt2",
       [=](auto d) {
         Safetensors f = Safetensors::Read(weights(d));
         const uint64_t begin = json::parse(f.header)["transformer.ln_f.weight"]["data_offsets"][0].get<uint64_t>();
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(f.data.data() + begin, &nan, sizeof(nan));
         f.Write(weights(d));
       },
       {"model.safetensors", "tensor \"transformer.ln_f.weight\" holds NaN", "--allow_nonfinite_weights"}},
      // Configs that disagree with the weights or with themselves.
      {"shape_disagrees_with_config",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["intermediate_size"] = 96; }); },
       {"model.safetensors",
        "\"model.layers.0.mlp.gate_proj.weight\" has shape [128, 64] but the config needs [96, 64]"}},
      {"vocab_disagrees_with_weights",
       "qwen2",
       [=](auto d) { EditJson(config(d), [](json& c) { c["vocab_size"] = 1000; }); },
       {"model.safetensors", "\"model.embed_tokens.weight\" has shape [1408, 64] but the config needs [1000, 64]"}},
      {"tokenizer_larger_than_vocab",
       "gpt2",
       [](auto d) {
         EditJson(d + "/tokenizer.json", [](json& t) {
           t["added_tokens"].push_back({{"id", 1500},
                                        {"content", "<|extra|>"},
                                        {"special", true},
                                        {"single_word", false},
                                        {"lstrip", false},
                                        {"rstrip", false},
                                        {"normalized", false}});
         });
       },
       {"tokenizer.json has 1501 tokens, more than the vocab_size 1408 of config.json"}},
      {"hidden_size_zero",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["hidden_size"] = 0; }); },
       {"config.json", "\"hidden_size\" must be a positive integer"}},
      {"heads_do_not_divide_hidden",
       "mistral",
       [=](auto d) {
         EditJson(config(d), [](json& c) {
           c.erase("head_dim");
           c["num_attention_heads"] = 5;
           c["num_key_value_heads"] = 5;
         });
       },
       {"config.json", "hidden_size 64", "num_attention_heads 5"}},
      {"config_missing", "llama", [=](auto d) { ::unlink(config(d).c_str()); }, {"config.json", "cannot open"}},
      // Named pipes waited for a writer forever (startup hung, deaf to SIGTERM), and with a writer that never
      // wrote, still (refused by what it is, a writer or none); a dangling link made the model serve token ids
      // only, with no error.
      {"config_is_a_fifo",
       "llama",
       [=](auto d) {
         ::unlink(config(d).c_str());
         ::mkfifo(config(d).c_str(), 0644);
       },
       {"config.json", "a pipe, not a regular file"}},
      // A device read without end (4 GB and on), and a named pipe blocked the weights digest's open forever.
      {"generation_config_is_a_device",
       "llama",
       [=](auto d) {
         ::unlink((d + "/generation_config.json").c_str());
         ::symlink("/dev/zero", (d + "/generation_config.json").c_str());
       },
       {"generation_config.json", "a device, not a regular file"}},
      {"tokenizer_json_is_a_fifo",
       "llama",
       [=](auto d) {
         ::unlink((d + "/tokenizer.json").c_str());
         ::mkfifo((d + "/tokenizer.json").c_str(), 0644);
       },
       {"tokenizer.json", "a pipe, not a regular file"}},
      {"weights_are_a_fifo",
       "llama",
       [=](auto d) {
         ::unlink(weights(d).c_str());
         ::mkfifo(weights(d).c_str(), 0644);
       },
       {"model.safetensors", "a pipe, not a regular file"}},
      {"tokenizer_json_dangling_link",
       "llama",
       [](auto d) {
         ::unlink((d + "/tokenizer.json").c_str());
         ::symlink((d + "/missing.json").c_str(), (d + "/tokenizer.json").c_str());
       },
       {"tokenizer.json", "cannot open"}},
      {"config_not_json",
       "llama",
       [=](auto d) { WriteAll(config(d), "{\"model_type\": "); },
       {"config.json", "not valid JSON"}},
      {"unknown_model_type",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["model_type"] = "bloom"; }); },
       {"config.json", "model_type \"bloom\" is not supported"}},
      // Escape sequences in what the files hold reached the operator's terminal (a cleared screen).
      {"model_type_with_escape_sequences",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["model_type"] = "x\x1b]0;PWNED\a\x1b[2J"; }); },
       {"config.json", "model_type \"x\\e]0;PWNED\\x07\\e[2J\" is not supported"}},
      // U+009B is CSI to an 8-bit terminal, U+202E reverses what follows it; é stays.
      {"model_type_with_c1_and_bidi_controls",
       "llama",
       [=](auto d) { EditJson(config(d), [](json& c) { c["model_type"] = "x\u009b2J\u202e\u00e9"; }); },
       {"config.json", "model_type \"x\\u009b2J\\u202e\u00e9\" is not supported"}},
      // Damaged tokenizers.
      {"garbage_tokenizer_model",
       "llama",
       [](auto d) {
         ::unlink((d + "/tokenizer.json").c_str());
         WriteAll(d + "/tokenizer.model", "not a sentencepiece model");
       },
       {"tokenizer.model", "cannot load the SentencePiece model"}},
      {"tokenizer_json_unknown_model_type",
       "gpt2",
       [](auto d) { EditJson(d + "/tokenizer.json", [](json& t) { t["model"]["type"] = "Unigram"; }); },
       {"tokenizer.json", "only \"BPE\" models are supported"}},
  };
}

class BadModelDirectory : public ::testing::TestWithParam<BadModel> {};

TEST_P(BadModelDirectory, ServerExitsWithStatusOneNamingTheFileAndField) {
  const BadModel& c = GetParam();
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/", c.base), dir);
  c.damage(dir);
  // Loading a model this small takes well under a second; 30 s only bounds a hang.
  auto [code, log] = ServerProcess::RunToExit({"--model=bad=" + dir}, absl::Seconds(30));
  EXPECT_EQ(code, 1) << log;
  EXPECT_EQ(log.find("terminate called"), std::string::npos) << log;
  EXPECT_EQ(log.find('\x1b'), std::string::npos) << log;
  EXPECT_NE(log.find("model \"bad\""), std::string::npos) << log;
  for (const std::string& part : c.message) {
    EXPECT_NE(log.find(part), std::string::npos) << "expected \"" << part << "\" in:\n" << log;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryDamage, BadModelDirectory, ::testing::ValuesIn(BadModels()),
                         [](const auto& info) { return info.param.name; });

// c10::Error's what() appends a C++ backtrace of 16 frames; the message says what is wrong without it.
TEST(BadModelDirectory, UnusableDeviceIsNamedWithoutABacktrace) {
  auto [code, log] = ServerProcess::RunToExit(
      {absl::StrCat("--model=m=", ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/llama"), "--device=cuda:7"},
      absl::Seconds(30));
  EXPECT_EQ(code, 1) << log;
  EXPECT_NE(log.find("device \"cuda:7\" is not usable here"), std::string::npos) << log;
  EXPECT_EQ(log.find("frame #"), std::string::npos) << log;
  EXPECT_EQ(log.find("Exception raised from"), std::string::npos) << log;
}

TEST(BadModelDirectory, ExtraTensorServesWithOneWarningLine) {
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/qwen2"), dir);
  Safetensors f = Safetensors::Read(dir + "/model.safetensors");
  json header = json::parse(f.header);
  header["model.layers.0.mlp.extra_proj.weight"] = {
      {"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {f.data.size(), f.data.size() + 8}}};
  f.header = header.dump();
  f.data += std::string(8, '\0');
  f.Write(dir + "/model.safetensors");
  auto server = ServerProcess::Start({"--model=extra=" + dir});
  ASSERT_THAT(server, IsOk());
  // The warning is written before the server reports its port, so the log holds it now.
  const std::string log = (*server)->Log();
  size_t lines = 0;
  for (size_t at = log.find("extra_proj"); at != std::string::npos; at = log.find("extra_proj", at + 1)) ++lines;
  EXPECT_EQ(lines, 1u) << log;
  EXPECT_NE(log.find("\"model_warning\""), std::string::npos) << log;
  EXPECT_NE(log.find("1 stored tensor(s) that the qwen2 architecture does not use"), std::string::npos) << log;
}

TEST(BadModelDirectory, NonFiniteWeightsServeWhenAllowed) {
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/llama"), dir);
  Safetensors f = Safetensors::Read(dir + "/model.safetensors");
  const uint64_t begin = json::parse(f.header)["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0].get<uint64_t>();
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(f.data.data() + begin, &inf, sizeof(inf));
  f.Write(dir + "/model.safetensors");
  auto server = ServerProcess::Start({"--model=inf=" + dir, "--allow_nonfinite_weights"});
  ASSERT_THAT(server, IsOk());
  // Its scores are NaN: every call that computes with them fails FAILED_PRECONDITION saying so (before, greedy
  // decoding picked token 0 from NaN, and Logprobs, attributions and component metrics answered OK with NaN in
  // them; sampling threw INTERNAL), and the server lives on.
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  const auto came_out_nan = [](const std::string& what) {
    return StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(what + " came out NaN"));
  };
  for (double temperature : {0.0, 1.0}) {
    EXPECT_THAT((*client)->Generate({.model = "inf",
                                     .prompt_ids = {1, 50, 60},
                                     .generation = {.max_new_tokens = 4, .temperature = temperature, .seed = 3}}),
                came_out_nan("the next-token scores at generated token 0"));
  }
  EXPECT_THAT((*client)->GetLogprobs({.model = "inf", .prompt_ids = {1, 50, 60}, .target_ids = {70, 80}}),
              came_out_nan("the log-prob of target token 0"));
  for (const char* method : {"integrated_gradients", "feature_ablation"}) {
    EXPECT_THAT((*client)->Attribute({.model = "inf", .prompt = "The cup is red.", .target = " Yes", .method = method}),
                came_out_nan("the attributed quantity (objective)"))
        << method;
  }
  EXPECT_THAT((*client)->AttributeComponents({.model = "inf",
                                              .pairs = {{.clean_ids = {1, 50, 60}, .corrupted_ids = {1, 51, 60}}},
                                              .answer_id = 70,
                                              .wrong_answer_id = 80}),
              came_out_nan("pairs[0]: the clean prompt's metric"));
  EXPECT_THAT((*client)->ListModels(), IsOk());
}

// Padding reads token 0's embedding: NaN there made a short prompt's call fail FAILED_PRECONDITION beside a longer
// prompt in its batch, though its own tokens are finite. Both calls answer as they do alone.
TEST(BadModelDirectory, ANonFiniteEmbeddingOfTokenZeroFailsNoBatchMateOfAPaddedRow) {
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/llama"), dir);
  Safetensors f = Safetensors::Read(dir + "/model.safetensors");
  const json embedding = json::parse(f.header)["model.embed_tokens.weight"];
  const uint64_t begin = embedding["data_offsets"][0].get<uint64_t>();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t i = 0; i < embedding["shape"][1].get<int64_t>(); ++i) {
    std::memcpy(f.data.data() + begin + i * sizeof(float), &nan, sizeof(nan));
  }
  f.Write(dir + "/model.safetensors");
  // A queue delay long enough that the two calls share a batch.
  const std::string config = root.File("server.json");
  std::ofstream(config) << R"({"models": [{"name": "nan0", "path": ")" << dir
                        << R"(", "allow_nonfinite_weights": true, "engine": {"max_queue_delay_seconds": 0.5}}]})";
  auto server = ServerProcess::Start({"--config=" + config});
  ASSERT_THAT(server, IsOk());
  auto client = client::AttributionClient::Connect({.target = (*server)->address()});
  ASSERT_THAT(client, IsOk());
  std::vector<int64_t> short_prompt, long_prompt;
  for (int64_t i = 0; i < 40; ++i) short_prompt.push_back(300 + i);
  for (int64_t i = 0; i < 50; ++i) long_prompt.push_back(400 + i);
  const client::LogprobsOptions short_call{.model = "nan0", .prompt_ids = short_prompt, .target_ids = {500, 501}};
  absl::StatusOr<client::Logprobs> alone = (*client)->GetLogprobs(short_call);
  ASSERT_THAT(alone, IsOk());
  absl::StatusOr<client::Logprobs> beside_long;
  std::thread long_call([&] {
    EXPECT_THAT((*client)->GetLogprobs({.model = "nan0", .prompt_ids = long_prompt, .target_ids = {500, 501}}), IsOk());
  });
  beside_long = (*client)->GetLogprobs(short_call);
  long_call.join();
  ASSERT_THAT(beside_long, IsOk());
  EXPECT_NEAR(beside_long->total_log_prob, alone->total_log_prob, 1e-4);
}

// A checkpoint value past float16's range loads as infinite there: refused at startup, naming the tensor
// (before, the server served it and answered NaN to everything).
TEST(BadModelDirectory, WeightsPastFloat16sRangeAreRefusedInFloat16) {
  test_support::TempDir root;
  const std::string dir = root.File("model");
  test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_ARCHITECTURE_MODELS_DIR, "/llama"), dir);
  Safetensors f = Safetensors::Read(dir + "/model.safetensors");
  const uint64_t begin =
      json::parse(f.header)["model.layers.0.mlp.down_proj.weight"]["data_offsets"][0].get<uint64_t>();
  const float large = 1e5f;
  std::memcpy(f.data.data() + begin, &large, sizeof(large));
  f.Write(dir + "/model.safetensors");
  auto [code, log] = ServerProcess::RunToExit({"--model=big=" + dir, "--dtype=float16"}, absl::Seconds(30));
  EXPECT_EQ(code, 1) << log;
  EXPECT_THAT(log, HasSubstr("tensor \"model.layers.0.mlp.down_proj.weight\" holds values up to 100000 in magnitude"));
  EXPECT_THAT(log, HasSubstr("serve the model in bfloat16 or float32"));
}

}  // namespace
}  // namespace attribution
