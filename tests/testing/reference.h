// SPDX-License-Identifier: Apache-2.0
// Access to the random test models and the reference outputs that tools/make_test_models.py computed
// with transformers (see that script for what each reference holds).
#pragma once

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>
#include <string>

namespace attribution::test_support {

// The folders the test_data fixture writes (environment ATTRIBUTION_TEST_MODELS /
// ATTRIBUTION_TEST_TOKENIZERS override the build's).
std::string TestModelsDir();
std::string TestTokenizersDir();

struct Reference {
  nlohmann::json spec;  // rows, objective_positions, objective_tokens, greedy_generations
  std::string tensors_path;
  at::Tensor Tensor(const std::string& name) const;  // float32 CPU copy
};

Reference LoadReference(const std::string& arch, const std::string& dtype);

// Max |a - b| over max(|b|, 1): the error relative to the reference's scale.
double ScaledError(const at::Tensor& actual, const at::Tensor& expected);

}  // namespace attribution::test_support
