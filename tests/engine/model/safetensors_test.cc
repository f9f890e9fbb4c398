// SPDX-License-Identifier: Apache-2.0
// Every kind of defect in a weight file or model directory must come back as a status naming the
// file, tensor and problem, never as a crash or a silently wrong model.
#include "engine/model/safetensors.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/model/causal_lm.h"
#include "engine/model/weight_store.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::CopyDirectoryFiles;
using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::attribution::test_support::TempDir;
using ::testing::HasSubstr;

// Writes raw bytes: 8-byte little-endian header length, the header text, then `data`.
void WriteRaw(const std::string& path, const std::string& header, const std::string& data,
              std::optional<uint64_t> declared_length = std::nullopt) {
  std::ofstream out(path, std::ios::binary);
  uint64_t length = declared_length.value_or(header.size());
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xff));
  out << header << data;
}

// A valid two-tensor file, then the same with one header field changed.
std::string ValidHeader(const nlohmann::json& patch = nlohmann::json::object()) {
  nlohmann::json header = {
      {"a", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}},
      {"b", {{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {16, 24}}}},
  };
  header.merge_patch(patch);
  return header.dump();
}

absl::Status OpenStatus(const std::string& header, const std::string& data = std::string(24, '\0'),
                        std::optional<uint64_t> declared_length = std::nullopt) {
  TempDir dir;
  WriteRaw(dir.File("m.safetensors"), header, data, declared_length);
  return SafetensorsFile::Open(dir.File("m.safetensors")).status();
}

TEST(Safetensors, OpensValidFileAndViewsTensors) {
  TempDir dir;
  std::string data(24, '\0');
  const float values[4] = {1, 2, 3, 4};
  std::memcpy(data.data(), values, sizeof(values));
  WriteRaw(dir.File("m.safetensors"), ValidHeader({{"__metadata__", {{"format", "pt"}}}}), data);
  auto file = SafetensorsFile::Open(dir.File("m.safetensors"));
  ASSERT_THAT(file, IsOk());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  at::Tensor a = (*file)->View(*(*file)->Find("a"));
  EXPECT_TRUE(at::equal(a, at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2})));
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

// A file cut short after it opened (replaced while the server loads it): reading a tensor past the new end is
// DATA_LOSS naming the tensor; through the mapping it raised SIGBUS and killed the server.
TEST(Safetensors, ReadsTensorsAndAFileCutShortSinceItOpenedIsDataLoss) {
  TempDir dir;
  std::string data(24, '\0');
  const float values[4] = {1, 2, 3, 4};
  std::memcpy(data.data(), values, sizeof(values));
  const std::string path = dir.File("m.safetensors");
  WriteRaw(path, ValidHeader(), data);
  auto file = SafetensorsFile::Open(path);
  ASSERT_THAT(file, IsOk());
  absl::StatusOr<at::Tensor> a = (*file)->Read(*(*file)->Find("a"));
  ASSERT_THAT(a, IsOk());
  EXPECT_TRUE(at::equal(*a, at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2})));
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(8 + ValidHeader().size() + 20)), 0);
  EXPECT_THAT((*file)->Read(*(*file)->Find("a")), IsOk());
  EXPECT_THAT((*file)->Read(*(*file)->Find("b")).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("tensor \"b\": the file ends before it")));
}

struct Defect {
  std::string name;
  std::string header;
  std::string data;
  std::optional<uint64_t> declared_length;
  std::string message;
};

class SafetensorsDefect : public ::testing::TestWithParam<Defect> {};

TEST_P(SafetensorsDefect, IsRejectedWithClearMessage) {
  const Defect& d = GetParam();
  absl::Status status = OpenStatus(d.header, d.data, d.declared_length);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(d.message)));
  EXPECT_THAT(status.message(), HasSubstr("m.safetensors"));
}

const std::string kData(24, '\0');

INSTANTIATE_TEST_SUITE_P(
    AllKinds, SafetensorsDefect,
    ::testing::Values(
        Defect{"HeaderLengthPastEnd", ValidHeader(), kData, 1000, "runs past the end"},
        Defect{"HeaderLengthAbsurd", ValidHeader(), kData, uint64_t{1} << 40, "exceeds the limit"},
        Defect{"HeaderNotJson", "{\"a\": [", "", std::nullopt, "not valid JSON"},
        Defect{"HeaderNotObject", "[1, 2, 3]", "", std::nullopt, "not a JSON object"},
        // 100,000 nested arrays overflowed the stack when the shape was printed into the refusal.
        Defect{"HeaderNestedTooDeep", R"({"a": {"dtype": "F32", "shape": )" + std::string(100000, '[') + "]}}", "",
               std::nullopt, "header: objects and arrays nested more than 128 deep"},
        Defect{"EntryMissingFields", R"({"a": {"dtype": "F32"}})", "", std::nullopt, "needs \"dtype\""},
        Defect{"UnsupportedDtype", ValidHeader({{"a", {{"dtype", "I64"}}}}), kData, std::nullopt,
               "\"I64\" is not supported"},
        Defect{"DtypeNotString", ValidHeader({{"a", {{"dtype", 7}}}}), kData, std::nullopt, "dtype is not a string"},
        Defect{"ShapeNotList", ValidHeader({{"a", {{"shape", "2x2"}}}}), kData, std::nullopt, "shape is not a list"},
        Defect{"NegativeDimension", ValidHeader({{"a", {{"shape", {-2, -2}}}}}), kData, std::nullopt,
               "non-negative integer"},
        Defect{"OffsetsNotPair", ValidHeader({{"a", {{"data_offsets", {0}}}}}), kData, std::nullopt,
               "two non-negative integers"},
        Defect{"OffsetsReversed", ValidHeader({{"a", {{"data_offsets", {16, 0}}}}}), kData, std::nullopt,
               "begin after end"},
        Defect{"SizeDisagreesWithShape", ValidHeader({{"a", {{"shape", {3, 2}}}}}), kData, std::nullopt, "needs 24"},
        Defect{"TruncatedData", ValidHeader(), std::string(20, '\0'), std::nullopt, "past the data section"},
        Defect{"OverlappingTensors", ValidHeader({{"b", {{"data_offsets", {8, 16}}}}}), std::string(16, '\0'),
               std::nullopt, "overlaps"},
        Defect{"HoleBetweenTensors", ValidHeader({{"b", {{"data_offsets", {20, 28}}}}}), std::string(28, '\0'),
               std::nullopt, "leaving a hole"},
        Defect{"TrailingBytes", ValidHeader(), std::string(30, '\0'), std::nullopt, "trailing bytes"},
        Defect{"MetadataNotStrings", ValidHeader({{"__metadata__", {{"format", 3}}}}), kData, std::nullopt,
               "is not a string"},
        Defect{"DuplicatedTensorName",
               R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                   "a": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}})",
               kData, std::nullopt, "names \"a\" more than once"},
        Defect{"HugeShapeOverflows", ValidHeader({{"a", {{"shape", {uint64_t{1} << 40, uint64_t{1} << 40}}}}}), kData,
               std::nullopt, "overflows"}),
    [](const auto& info) { return info.param.name; });

// Found with tests/fuzz/safetensors_fuzzer: beside a 0 the overflow check let a dimension of 2^64 - 1
// through, which became -1 in the tensor's shape and made View throw.
TEST(Safetensors, DimensionPastInt64BesideAZeroIsRejected) {
  const std::string header = R"({"a": {"dtype": "F32", "shape": [0, 18446744073709551615], "data_offsets": [0, 0]}})";
  EXPECT_THAT(OpenStatus(header, ""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflows")));
}

TEST(Safetensors, ShortFileIsRejected) {
  TempDir dir;
  std::ofstream(dir.File("m.safetensors")) << "abc";
  auto status = SafetensorsFile::Open(dir.File("m.safetensors")).status();
  EXPECT_THAT(status.message(), HasSubstr("shorter than the 8-byte header"));
}

TEST(Safetensors, MissingFileIsNotFound) {
  EXPECT_THAT(SafetensorsFile::Open("/nonexistent/m.safetensors"), StatusIs(absl::StatusCode::kNotFound));
}

// Model-directory defects: a copy of the random llama test model, damaged one way per test.
class ModelDirectoryDefect : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = root_.File("model");
    CopyDirectoryFiles(::attribution::test_support::TestModelsDir() + "/llama", dir_);
  }
  nlohmann::json Config() {
    std::ifstream in(dir_ + "/config.json");
    return nlohmann::json::parse(in);
  }
  void WriteConfig(const nlohmann::json& config) { std::ofstream(dir_ + "/config.json") << config.dump(); }
  // Rewrites model.safetensors after `edit` changed its tensors.
  void RewriteWeights(const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    std::map<std::string, at::Tensor> tensors;
    {
      auto file = SafetensorsFile::Open(dir_ + "/model.safetensors");
      ASSERT_THAT(file, IsOk());
      for (const auto& [name, record] : (*file)->tensors()) tensors[name] = (*file)->View(record).clone();
    }
    edit(tensors);
    nlohmann::json header = nlohmann::json::object();
    std::string data;
    for (const auto& [name, t] : tensors) {
      at::Tensor c = t.contiguous();
      header[name] = {
          {"dtype", "F32"}, {"shape", c.sizes().vec()}, {"data_offsets", {data.size(), data.size() + c.nbytes()}}};
      data.append(static_cast<const char*>(c.data_ptr()), c.nbytes());
    }
    WriteRaw(dir_ + "/model.safetensors", header.dump(), data);
  }
  absl::Status Load() { return CausalLM::Load(dir_, {}).status(); }

  TempDir root_;
  std::string dir_;
};

TEST_F(ModelDirectoryDefect, IntactCopyLoads) { EXPECT_THAT(Load(), IsOk()); }

TEST_F(ModelDirectoryDefect, MissingTensorIsNamed) {
  RewriteWeights([](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  EXPECT_THAT(Load().message(), HasSubstr("lack the required tensor \"model.layers.1.mlp.up_proj.weight\""));
}

TEST_F(ModelDirectoryDefect, ExtraTensorLoadsAndIsListedAsUnused) {
  RewriteWeights([](auto& t) { t["model.layers.0.mlp.extra_proj.weight"] = at::ones({3}); });
  auto model = CausalLM::Load(dir_, {});
  ASSERT_THAT(model, IsOk());
  EXPECT_THAT((*model)->unused_weights(), ::testing::ElementsAre("model.layers.0.mlp.extra_proj.weight"));
}

// Exports of tied models sometimes store the head anyway; the embedding serves, the copy is known.
TEST_F(ModelDirectoryDefect, StoredCopyOfATiedHeadIsNotUnused) {
  dir_ = root_.File("gpt2");
  CopyDirectoryFiles(::attribution::test_support::TestModelsDir() + "/gpt2", dir_);
  RewriteWeights([](auto& t) { t["lm_head.weight"] = t["transformer.wte.weight"].clone(); });
  auto model = CausalLM::Load(dir_, {});
  ASSERT_THAT(model, IsOk());
  EXPECT_THAT((*model)->unused_weights(), ::testing::IsEmpty());
  EXPECT_THAT((*model)->load_warnings(), ::testing::IsEmpty());
}

// An instruct model's sampling and repetition penalty in generation_config.json: transformers' generate() applies
// them, Generate does not, and loading says so.
TEST_F(ModelDirectoryDefect, GenerationConfigDecodingSettingsAreNamedInALoadWarning) {
  std::ofstream(dir_ + "/generation_config.json")
      << R"({"eos_token_id": 2, "do_sample": true, "repetition_penalty": 1.1})";
  auto model = CausalLM::Load(dir_, {});
  ASSERT_THAT(model, IsOk());
  EXPECT_THAT((*model)->load_warnings(),
              ::testing::ElementsAre(HasSubstr("generation_config.json sets do_sample, repetition_penalty, which "
                                               "transformers' generate() applies by default and Generate does not")));
}

// An untied config whose checkpoint has no head: transformers would start one from random values, so there is no
// model to serve (it was tied to the embedding without a word).
TEST_F(ModelDirectoryDefect, AnUntiedConfigWithoutAStoredHeadIsRefused) {
  auto config = Config();
  config["tie_word_embeddings"] = false;
  WriteConfig(config);
  RewriteWeights([](auto& t) { t.erase("lm_head.weight"); });
  EXPECT_THAT(Load().message(), HasSubstr("tie_word_embeddings is false but the checkpoint holds no lm_head.weight"));
}

TEST_F(ModelDirectoryDefect, WrongShapeIsNamed) {
  RewriteWeights([](auto& t) { t["model.norm.weight"] = at::ones({63}); });
  EXPECT_THAT(Load().message(), HasSubstr("\"model.norm.weight\" has shape [63] but the config needs [64]"));
}

TEST_F(ModelDirectoryDefect, NonFiniteWeightsAreRejected) {
  RewriteWeights([](auto& t) { t["model.layers.0.self_attn.q_proj.weight"][3][5] = NAN; });
  EXPECT_THAT(Load().message(), HasSubstr("NaN or infinite"));
}

TEST_F(ModelDirectoryDefect, UnknownModelTypeListsSupportedOnes) {
  auto config = Config();
  config["model_type"] = "bloom";
  WriteConfig(config);
  EXPECT_THAT(Load().message(), HasSubstr("supported: llama, mistral, qwen2, gpt2, falcon, mixtral"));
}

TEST_F(ModelDirectoryDefect, MissingConfigFieldIsNamed) {
  auto config = Config();
  config.erase("hidden_size");
  WriteConfig(config);
  EXPECT_THAT(Load().message(), HasSubstr("\"hidden_size\" must be a positive integer"));
}

TEST_F(ModelDirectoryDefect, InconsistentHeadsAreRejected) {
  auto config = Config();
  config["num_key_value_heads"] = 3;
  WriteConfig(config);
  EXPECT_THAT(Load().message(), HasSubstr("not a multiple of num_key_value_heads"));
}

TEST_F(ModelDirectoryDefect, ConfigNotJson) {
  std::ofstream(dir_ + "/config.json") << "{ nope";
  EXPECT_THAT(Load().message(), HasSubstr("config.json: not valid JSON: [json.exception.parse_error.101]"));
}

TEST_F(ModelDirectoryDefect, MissingWeightsFile) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  EXPECT_THAT(Load(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ModelDirectoryDefect, ShardIndexNamingMissingShard) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  std::ofstream(dir_ + "/model.safetensors.index.json")
      << R"({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})";
  EXPECT_THAT(Load().message(), HasSubstr("model-00001-of-00002.safetensors: cannot open"));
}

// The loader takes tensors through WeightStore::Take: a weight file cut short after it opened is DATA_LOSS
// naming the tensor there (a read through the mapping raised SIGBUS and killed the server).
TEST_F(ModelDirectoryDefect, AWeightFileCutShortWhileLoadingIsDataLoss) {
  auto store = WeightStore::Open(dir_);
  ASSERT_THAT(store, IsOk());
  ASSERT_EQ(::truncate((dir_ + "/model.safetensors").c_str(), 4096), 0);
  EXPECT_THAT(
      (*store)->Take("model.norm.weight", {64}, at::TensorOptions().dtype(at::kFloat)).status(),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr("tensor \"model.norm.weight\": the file ends before it")));
}

TEST_F(ModelDirectoryDefect, ShardIndexNamingNoTensor) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  std::ofstream(dir_ + "/model.safetensors.index.json") << R"({"weight_map": {}})";
  EXPECT_THAT(Load().message(), HasSubstr("model.safetensors.index.json: the \"weight_map\" names no tensor"));
}

TEST_F(ModelDirectoryDefect, ShardIndexWithPathEscape) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  std::ofstream(dir_ + "/model.safetensors.index.json") << R"({"weight_map": {"x": "../model.safetensors"}})";
  EXPECT_THAT(Load().message(), HasSubstr("must be a plain file name"));
  // A NUL ends the name the file system sees: the shard opened under another name than the index gives.
  std::ofstream(dir_ + "/model.safetensors.index.json")
      << R"({"weight_map": {"model.norm.weight": "shard.safetensors\u0000junk"}})";
  EXPECT_THAT(Load().message(), HasSubstr("must be a plain file name"));
}

TEST_F(ModelDirectoryDefect, TensorStoredInTwoShards) {
  ASSERT_EQ(::rename((dir_ + "/model.safetensors").c_str(), (dir_ + "/shard.safetensors").c_str()), 0);
  {
    std::ifstream in(dir_ + "/shard.safetensors", std::ios::binary);
    std::ofstream(dir_ + "/copy.safetensors", std::ios::binary) << in.rdbuf();
  }
  nlohmann::json index = {{"weight_map", nlohmann::json::object()}};
  auto file = SafetensorsFile::Open(dir_ + "/shard.safetensors");
  for (const auto& [name, record] : (*file)->tensors()) index["weight_map"][name] = "shard.safetensors";
  index["weight_map"]["lm_head.weight"] = "copy.safetensors";
  std::ofstream(dir_ + "/model.safetensors.index.json") << index.dump();
  // Whichever shard is read first, the duplicate is caught as such or as a tensor the index did not
  // assign to that shard.
  EXPECT_THAT(Load().message(),
              ::testing::AnyOf(HasSubstr("is stored in both"), HasSubstr("is not assigned to this shard")));
}

// transformers reads model.safetensors when both it and an index are there (save_pretrained writing a sharded
// folder unsharded leaves the old index): so do we, the index's missing shards never opened.
TEST_F(ModelDirectoryDefect, ASingleWeightsFileIsReadBeforeAShardIndex) {
  std::ofstream(dir_ + "/model.safetensors.index.json")
      << R"({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})";
  EXPECT_THAT(Load(), IsOk());
}

TEST_F(ModelDirectoryDefect, UnsupportedRopeScaling) {
  auto config = Config();
  config["rope_parameters"]["rope_type"] = "yarn";
  WriteConfig(config);
  EXPECT_THAT(Load().message(), HasSubstr("\"yarn\" is not supported"));
}

}  // namespace
}  // namespace attribution::engine
