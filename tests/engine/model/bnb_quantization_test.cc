// SPDX-License-Identifier: Apache-2.0
// nf4 / fp4 against bitsandbytes itself (tools/bnb_reference.py): the same codes, absmaxes and
// dequantized weights from the same float weight, and models (quantized here, or loaded as
// transformers + bitsandbytes saved them) that answer like transformers + bitsandbytes.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/model/causal_lm.h"
#include "engine/model/quantization.h"
#include "engine/model/safetensors.h"
#include "tests/testing/reference.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::ScaledError;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReferenceDir() { return ATTRIBUTION_BNB_REFERENCE_DIR; }

at::Tensor BnbTensor(const std::string& name) {
  static const auto* file = new auto(SafetensorsFile::Open(ReferenceDir() + "/quantization.safetensors"));
  EXPECT_THAT(*file, IsOk());
  const TensorRecord* record = (**file)->Find(name);
  EXPECT_NE(record, nullptr) << name;
  return (**file)->View(*record).clone();
}

TEST(CodeBooks, AreBitsandbytesOwn) {
  EXPECT_TRUE(at::equal(FourBitCodeBook(Quantization::kNf4, at::kCPU), BnbTensor("nf4_code")));
  EXPECT_TRUE(at::equal(FourBitCodeBook(Quantization::kFp4, at::kCPU), BnbTensor("fp4_code")));
  EXPECT_TRUE(at::equal(DynamicCodeBook(at::kCPU), BnbTensor("dynamic_code")));
}

struct Format {
  Quantization kind;
  int64_t block_size;
  bool double_quantization;
  std::string Key() const { return absl::StrCat(QuantizationName(kind), "_", block_size, "_", double_quantization); }
};

class BitCompatible : public ::testing::TestWithParam<Format> {};

TEST_P(BitCompatible, SameCodesAndAbsmaxesAsBitsandbytes) {
  const Format f = GetParam();
  auto ours =
      Quantize(BnbTensor("weight"), f.kind, {.block_size = f.block_size, .double_quantization = f.double_quantization});
  ASSERT_THAT(ours, IsOk());
  EXPECT_TRUE(at::equal(ours->codes, BnbTensor(f.Key() + ".codes")));
  if (!f.double_quantization) {
    EXPECT_TRUE(at::equal(ours->scales, BnbTensor(f.Key() + ".absmax")));
    EXPECT_TRUE(at::equal(Dequantize(*ours, at::kFloat), BnbTensor(f.Key() + ".dequantized")));
    EXPECT_TRUE(at::equal(Dequantize(*ours, at::kBFloat16), BnbTensor(f.Key() + ".dequantized_bf16")));
    return;
  }
  // Double quantization: the mean, each nested block's absmax and every 8-bit code are bitsandbytes'.
  ASSERT_TRUE(ours->nested.has_value());
  EXPECT_TRUE(at::equal(ours->nested->scales, BnbTensor(f.Key() + ".nested_absmax")));
  EXPECT_TRUE(at::equal(ours->nested->offsets.slice(0, 0, 1), BnbTensor(f.Key() + ".offset")));
  EXPECT_TRUE(at::equal(ours->nested->codes, BnbTensor(f.Key() + ".absmax")));
  EXPECT_TRUE(at::equal(ours->nested->code_book, BnbTensor(f.Key() + ".nested_code")));
  EXPECT_TRUE(at::equal(Dequantize(*ours, at::kFloat), BnbTensor(f.Key() + ".dequantized")));
}

TEST_P(BitCompatible, DequantizesBitsandbytesStateExactly) {
  const Format f = GetParam();
  const at::Tensor weight = BnbTensor("weight");
  QuantizedWeight stored{.kind = f.kind,
                         .out_features = weight.size(0),
                         .in_features = weight.size(1),
                         .block_size = f.block_size,
                         .codes = BnbTensor(f.Key() + ".codes"),
                         .code_book = BnbTensor(QuantizationName(f.kind) + std::string("_code"))};
  if (f.double_quantization) {
    const at::Tensor nested_absmax = BnbTensor(f.Key() + ".nested_absmax");
    stored.nested = NestedAbsmax{.codes = BnbTensor(f.Key() + ".absmax"),
                                 .code_book = BnbTensor(f.Key() + ".nested_code"),
                                 .scales = nested_absmax,
                                 .offsets = BnbTensor(f.Key() + ".offset").expand(nested_absmax.sizes()).contiguous()};
  } else {
    stored.scales = BnbTensor(f.Key() + ".absmax");
  }
  EXPECT_TRUE(at::equal(Dequantize(stored, at::kFloat), BnbTensor(f.Key() + ".dequantized")));
  EXPECT_TRUE(at::equal(Dequantize(stored, at::kBFloat16), BnbTensor(f.Key() + ".dequantized_bf16")));
}

INSTANTIATE_TEST_SUITE_P(Formats, BitCompatible,
                         ::testing::Values(Format{Quantization::kNf4, 64, false},
                                           Format{Quantization::kNf4, 128, false}, Format{Quantization::kNf4, 64, true},
                                           Format{Quantization::kNf4, 128, true}, Format{Quantization::kFp4, 64, false},
                                           Format{Quantization::kFp4, 128, false}, Format{Quantization::kFp4, 64, true},
                                           Format{Quantization::kFp4, 128, true}),
                         [](const auto& info) { return info.param.Key(); });

// Weights whose absmaxes all equal their mean: double quantization's centred values are all 0, and
// bitsandbytes stores code 0 under a nested absmax of 0, the offset alone giving each absmax back.
class UniformAbsmaxes : public ::testing::TestWithParam<std::tuple<std::string, Quantization>> {};

TEST_P(UniformAbsmaxes, DoubleQuantizeAsBitsandbytes) {
  const auto& [weight, kind] = GetParam();
  const std::string key = absl::StrCat(weight, ".", QuantizationName(kind), "_64_1");
  auto ours = Quantize(BnbTensor(weight + "_weight"), kind, {.block_size = 64, .double_quantization = true});
  ASSERT_THAT(ours, IsOk());
  ASSERT_TRUE(ours->nested.has_value());
  EXPECT_TRUE(at::equal(ours->codes, BnbTensor(key + ".codes")));
  EXPECT_TRUE(at::equal(ours->nested->codes, BnbTensor(key + ".absmax")));
  EXPECT_TRUE(at::equal(ours->nested->scales, BnbTensor(key + ".nested_absmax")));
  EXPECT_TRUE(at::equal(ours->nested->offsets.slice(0, 0, 1), BnbTensor(key + ".offset")));
  EXPECT_TRUE(at::equal(Dequantize(*ours, at::kFloat), BnbTensor(key + ".dequantized")));
}

INSTANTIATE_TEST_SUITE_P(Weights, UniformAbsmaxes,
                         ::testing::Combine(::testing::Values("zero", "one_block"),
                                            ::testing::Values(Quantization::kNf4, Quantization::kFp4)),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param), "_", QuantizationName(std::get<1>(info.param)));
                         });

TEST(FourBitOptions, RejectsBlockSizesBitsandbytesLacks) {
  EXPECT_THAT(Quantize(at::zeros({4, 96}), Quantization::kFp4, {.block_size = 96}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block size 96")));
  EXPECT_THAT(Quantize(at::zeros({3, 64}), Quantization::kNf4, {.block_size = 128}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("multiple of the block size 128")));
}

// Models: prompt + target log-probs and input-embedding gradients against transformers + bitsandbytes.
struct ModelCase {
  std::string arch;
  Quantization kind;
  bool double_quantization;
  bool from_checkpoint;  // load A-QD as saved; else quantize A here
  std::string Name() const {
    return absl::StrCat(arch, "_", QuantizationName(kind), double_quantization ? "_dq" : "",
                        from_checkpoint ? "_saved" : "_quantized_here");
  }
  std::string ReferenceDir() const {
    return absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/", arch, "-", QuantizationName(kind),
                        double_quantization ? "-dq" : "");
  }
};

class BnbModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(BnbModel, AnswersLikeTransformersWithBitsandbytes) {
  const ModelCase c = GetParam();
  std::ifstream in(c.ReferenceDir() + "/reference.json");
  const nlohmann::json reference = nlohmann::json::parse(in);
  LoadOptions options;
  std::string dir = c.ReferenceDir();
  if (!c.from_checkpoint) {
    dir = absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/", c.arch);
    options.quantization = c.kind;
    options.four_bit.double_quantization = c.double_quantization;
  }
  auto model = CausalLM::Load(dir, options);
  ASSERT_THAT(model, IsOk());
  EXPECT_EQ((*model)->options().quantization, c.kind);
  EXPECT_EQ((*model)->options().four_bit.double_quantization, c.double_quantization);
  EXPECT_EQ((*model)->prequantized(), c.from_checkpoint);

  std::vector<int64_t> ids = reference["prompt"].get<std::vector<int64_t>>();
  const std::vector<int64_t> target = reference["target"].get<std::vector<int64_t>>();
  const int64_t p = static_cast<int64_t>(ids.size());
  ids.insert(ids.end(), target.begin(), target.end());
  RowObjective objective{.tokens = target};
  for (size_t i = 0; i < target.size(); ++i) objective.positions.push_back(p - 1 + static_cast<int64_t>(i));
  ForwardBatch batch{.inputs_embeds = *(*model)->Embed(at::tensor(ids, at::kLong).unsqueeze(0))};
  ObjectiveDetails details;
  auto values = (*model)->ObjectiveValues(batch, {objective}, &details);
  ASSERT_THAT(values, IsOk());
  auto gradients = (*model)->ObjectiveGradients(batch, {objective});
  ASSERT_THAT(gradients, IsOk());

  const at::Tensor expected_log_probs = at::tensor(reference["target_log_probs"].get<std::vector<float>>());
  std::vector<float> grad_values;
  for (const auto& row : reference["input_grad"]) {
    for (float v : row.get<std::vector<float>>()) grad_values.push_back(v);
  }
  const at::Tensor expected_grad = at::tensor(grad_values).reshape({static_cast<int64_t>(ids.size()), -1});
  const double log_prob_error = ScaledError(details.log_probs.to(at::kFloat).reshape({-1}), expected_log_probs);
  const double grad_error = ScaledError(gradients->gradients[0].to(at::kFloat), expected_grad);
  std::cout << "[ bnb      ] " << c.Name() << ": log-prob error " << log_prob_error << ", input-gradient error "
            << grad_error << "\n";
  EXPECT_LT(log_prob_error, 1e-5);
  EXPECT_LT(grad_error, 1e-5);
}

std::vector<ModelCase> ModelCases() {
  std::vector<ModelCase> cases;
  for (const char* arch : {"llama", "mistral", "qwen2", "mixtral"}) {
    for (Quantization kind : {Quantization::kNf4, Quantization::kFp4}) {
      for (bool double_quantization : {false, true}) {
        for (bool from_checkpoint : {true, false}) {
          // transformers + bitsandbytes leave Mixtral's experts dense (3-D parameters, no nn.Linear), where a
          // --quantization load quantizes them: only its saved checkpoints are the same model.
          if (std::string(arch) == "mixtral" && !from_checkpoint) continue;
          cases.push_back({arch, kind, double_quantization, from_checkpoint});
        }
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, BnbModel, ::testing::ValuesIn(ModelCases()),
                         [](const auto& info) { return info.param.Name(); });

TEST(BnbCheckpoint, RefusesAnotherQuantization) {
  const std::string dir = absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/llama-nf4");
  EXPECT_THAT(CausalLM::Load(dir, {.quantization = Quantization::kFp4}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("saved quantized by bitsandbytes as nf4")));
  EXPECT_THAT(CausalLM::Load(dir, {.quantization = Quantization::kNf4}), IsOk());
}

TEST(BnbCheckpoint, ResidentBytesAreTheStoredOnes) {
  auto saved = CausalLM::Load(absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/llama-nf4"), {});
  auto here =
      CausalLM::Load(absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/llama"), {.quantization = Quantization::kNf4});
  ASSERT_THAT(saved, IsOk());
  ASSERT_THAT(here, IsOk());
  EXPECT_EQ((*saved)->ResidentWeightBytes(), (*here)->ResidentWeightBytes());
}

// A copy of a saved reference checkpoint, its tensors edited as raw bytes (a quant state is JSON in a
// uint8 vector) and written back.
class DamagedBnbCheckpoint : public ::testing::Test {
 protected:
  struct RawTensor {
    nlohmann::json meta;  // "dtype", "shape"
    std::string bytes;
  };
  using Tensors = std::map<std::string, RawTensor>;

  void Copy(const std::string& name) {
    dir_ = root_.File(name);
    test_support::CopyDirectoryFiles(absl::StrCat(ATTRIBUTION_BNB_REFERENCE_DIR, "/", name), dir_);
  }

  void Rewrite(const std::function<void(Tensors&)>& edit) {
    const std::string path = dir_ + "/model.safetensors";
    std::ifstream in(path, std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t header_size = 0;
    std::memcpy(&header_size, file.data(), sizeof(header_size));
    const nlohmann::json header = nlohmann::json::parse(file.substr(8, header_size));
    const std::string data = file.substr(8 + header_size);
    Tensors tensors;
    for (const auto& [name, meta] : header.items()) {
      if (name == "__metadata__") continue;
      const auto offsets = meta["data_offsets"].get<std::vector<size_t>>();
      tensors[name] = {{{"dtype", meta["dtype"]}, {"shape", meta["shape"]}},
                       data.substr(offsets[0], offsets[1] - offsets[0])};
    }
    edit(tensors);
    nlohmann::json out = nlohmann::json::object();
    std::string out_data;
    for (const auto& [name, t] : tensors) {
      out[name] = t.meta;
      out[name]["data_offsets"] = {out_data.size(), out_data.size() + t.bytes.size()};
      out_data += t.bytes;
    }
    const std::string out_header = out.dump();
    const uint64_t out_size = out_header.size();
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        << std::string(reinterpret_cast<const char*>(&out_size), sizeof(out_size)) << out_header << out_data;
  }

  void SetConfig(const std::string& key, const nlohmann::json& value) {
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir_ + "/config.json"));
    config["quantization_config"][key] = value;
    std::ofstream(dir_ + "/config.json", std::ios::trunc) << config.dump();
  }

  absl::Status Load() { return CausalLM::Load(dir_, {}).status(); }

  test_support::TempDir root_;
  std::string dir_;
};

TEST_F(DamagedBnbCheckpoint, IntactCopyLoads) {
  Copy("llama-nf4-dq");
  Rewrite([](Tensors&) {});
  EXPECT_THAT(Load(), IsOk());
}

// bitsandbytes dequantizes with its fixed table whatever quant_map holds: a different stored map is refused.
TEST_F(DamagedBnbCheckpoint, QuantMapOtherThanTheCodeBookIsRefused) {
  for (const char* name : {"llama-nf4", "llama-fp4-dq"}) {
    Copy(name);
    Rewrite([](Tensors& t) {
      // Code 3 (nf4 -0.39, fp4 1.0): a code of neither format's zeros, so the scaling changes it.
      std::string& map = t["model.layers.0.self_attn.k_proj.weight.quant_map"].bytes;
      float code = 0;
      std::memcpy(&code, map.data() + 3 * sizeof(float), sizeof(code));
      code *= 1.01f;
      std::memcpy(map.data() + 3 * sizeof(float), &code, sizeof(code));
    });
    EXPECT_THAT(Load(), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("\"model.layers.0.self_attn.k_proj.weight.quant_map\" is not the")))
        << name;
  }
}

TEST_F(DamagedBnbCheckpoint, NonIntegerShapeInAQuantStateIsNamed) {
  Copy("llama-nf4");
  const std::string state = "model.layers.0.self_attn.k_proj.weight.quant_state.bitsandbytes__nf4";
  Rewrite([&](Tensors& t) {
    nlohmann::json json = nlohmann::json::parse(t[state].bytes);
    json["shape"] = {"64", 128};
    t[state].bytes = json.dump();
    t[state].meta["shape"] = {t[state].bytes.size()};
  });
  EXPECT_THAT(Load(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("\"", state, "\": shape [\"64\",128] is not an array of integers"))));
}

// config.json's bnb_4bit_use_double_quant is a claim; the nested absmaxes stored (or not) are the format.
TEST_F(DamagedBnbCheckpoint, DoubleQuantizationIsWhatTheTensorsHold) {
  for (const auto& [name, stored] : {std::pair<std::string, bool>{"llama-nf4-dq", true}, {"llama-fp4", false}}) {
    Copy(name);
    SetConfig("bnb_4bit_use_double_quant", !stored);
    auto model = CausalLM::Load(dir_, {});
    ASSERT_THAT(model, IsOk()) << name;
    EXPECT_EQ((*model)->options().four_bit.double_quantization, stored) << name;
  }
}

// llm_int8_skip_modules without "lm_head" saves the head as bitsandbytes state; made here from our own
// quantization, bitsandbytes' bit for bit, under the quant state of a saved projection.
TEST_F(DamagedBnbCheckpoint, QuantizedHeadIsRefusedNamingIt) {
  Copy("llama-nf4");
  Rewrite([](Tensors& t) {
    auto raw = [](const at::Tensor& tensor, const char* dtype) {
      const at::Tensor c = tensor.contiguous();
      return RawTensor{{{"dtype", dtype}, {"shape", c.sizes().vec()}},
                       std::string(static_cast<const char*>(c.data_ptr()), c.nbytes())};
    };
    const std::vector<int64_t> shape = t["lm_head.weight"].meta["shape"].get<std::vector<int64_t>>();
    at::Tensor head = at::empty(shape, at::kFloat);
    std::memcpy(head.data_ptr(), t["lm_head.weight"].bytes.data(), head.nbytes());
    QuantizedWeight quantized = *Quantize(head, Quantization::kNf4);
    nlohmann::json state =
        nlohmann::json::parse(t["model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"].bytes);
    state["shape"] = shape;
    const std::string state_text = state.dump();
    t["lm_head.weight"] = raw(quantized.codes.unsqueeze(1), "U8");
    t["lm_head.weight.absmax"] = raw(quantized.scales, "F32");
    t["lm_head.weight.quant_map"] = raw(quantized.code_book, "F32");
    t["lm_head.weight.quant_state.bitsandbytes__nf4"] = {{{"dtype", "U8"}, {"shape", {state_text.size()}}}, state_text};
  });
  EXPECT_THAT(Load(), StatusIs(absl::StatusCode::kInvalidArgument,
                               HasSubstr("\"lm_head.weight\" is saved quantized by bitsandbytes as nf4: a quantized "
                                         "lm_head is not supported")));
}

}  // namespace
}  // namespace attribution::engine
