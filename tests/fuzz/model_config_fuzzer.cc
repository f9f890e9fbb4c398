// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes as config.json. ParseModelConfig must return a status and never
// crash, and a config it accepts must describe a model the loader can build: positive sizes, heads
// that divide evenly, an even head_dim, special token ids inside the vocabulary.
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/model/model_config.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = attribution::engine::ParseModelConfig(text, "config.json");
  if (!config.ok()) {
    FUZZ_CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  const attribution::engine::ModelConfig& c = *config;
  FUZZ_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0);
  FUZZ_CHECK(c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0);
  FUZZ_CHECK(c.head_dim > 0 && (c.architecture == attribution::engine::Architecture::kGpt2 || c.head_dim % 2 == 0));
  FUZZ_CHECK(c.max_position_embeddings > 0);
  FUZZ_CHECK(std::isfinite(c.norm_eps) && c.norm_eps >= 0);
  FUZZ_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0);
  FUZZ_CHECK(!c.linear_rope_factor || (std::isfinite(*c.linear_rope_factor) && *c.linear_rope_factor > 0));
  FUZZ_CHECK(!c.sliding_window || *c.sliding_window > 0);
  for (auto id : {c.bos_token_id, c.pad_token_id, c.unk_token_id}) FUZZ_CHECK(!id || (*id >= 0 && *id < c.vocab_size));
  return 0;
}
