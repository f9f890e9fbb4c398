// SPDX-License-Identifier: Apache-2.0
#include "tests/testing/reference.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "engine/model/safetensors.h"
#include "tests/testing/status_matchers.h"

namespace attribution::test_support {

std::string TestModelsDir() {
  const char* dir = std::getenv("ATTRIBUTION_TEST_MODELS");
  return dir != nullptr ? dir : ATTRIBUTION_TEST_MODELS_DIR;
}

std::string TestTokenizersDir() {
  const char* dir = std::getenv("ATTRIBUTION_TEST_TOKENIZERS");
  return dir != nullptr ? dir : ATTRIBUTION_TEST_TOKENIZERS_DIR;
}

Reference LoadReference(const std::string& arch, const std::string& dtype) {
  Reference reference;
  const std::string base = TestModelsDir() + "/" + arch + "/reference_" + dtype;
  std::ifstream in(base + ".json");
  EXPECT_TRUE(in.good()) << "missing " << base << ".json (did the make_test_models fixture run?)";
  reference.spec = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  reference.tensors_path = base + ".safetensors";
  return reference;
}

at::Tensor Reference::Tensor(const std::string& name) const {
  auto file = engine::SafetensorsFile::Open(tensors_path);
  EXPECT_THAT(file, IsOk());
  const engine::TensorRecord* record = (*file)->Find(name);
  EXPECT_NE(record, nullptr) << tensors_path << " lacks " << name;
  return (*file)->View(*record).to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

double ScaledError(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.to(at::kFloat).cpu(), e = expected.to(at::kFloat).cpu();
  const double scale = std::max(1.0, e.abs().max().item<double>());
  return (a - e).abs().max().item<double>() / scale;
}

}  // namespace attribution::test_support
