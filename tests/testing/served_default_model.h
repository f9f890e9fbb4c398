// SPDX-License-Identifier: Apache-2.0
// For the server's conversion tests, which run without a server: the committed default model and its
// tokenizer as the server holds them, and the values of a proto enum.
//
//   ServedModel* served = LoadServedDefaultModel();  // in SetUpTestSuite
//   for (v1::Method m : SpecifiedValues<v1::Method>(v1::Method_descriptor())) ...
#pragma once

#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "engine/attribution/attributor.h"
#include "server/model_registry.h"

namespace attribution::test_support {

// The model at ATTRIBUTION_DEFAULT_MODEL_DIR as model "default", with an attributor for its limits (no
// engine: nothing here submits rows). Failures are test failures; the caller owns the result.
inline server::ServedModel* LoadServedDefaultModel(const std::string& dir) {
  auto served = std::make_unique<server::ServedModel>();
  served->spec.name = "default";
  auto model = engine::CausalLM::Load(dir, {});
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return nullptr;
  served->model = std::move(*model);
  auto tokenizer = engine::Tokenizer::Load(dir);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return nullptr;
  served->tokenizer = std::move(*tokenizer);
  served->attributor = std::make_unique<engine::Attributor>(served->model, nullptr);
  return served.release();
}

// Every value of a proto enum but _UNSPECIFIED (0), so a value added to the proto fails the tests that
// map each one until their expected tables name it.
template <typename ProtoEnum>
std::vector<ProtoEnum> SpecifiedValues(const google::protobuf::EnumDescriptor* descriptor) {
  std::vector<ProtoEnum> values;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    if (descriptor->value(i)->number() != 0) values.push_back(static_cast<ProtoEnum>(descriptor->value(i)->number()));
  }
  return values;
}

}  // namespace attribution::test_support
