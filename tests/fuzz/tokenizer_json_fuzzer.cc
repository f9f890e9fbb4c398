// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes as a tokenizer directory, loaded as the server loads one
// (Tokenizer::Load). The bytes before the first NUL are tokenizer.json, the rest (when there is a NUL)
// tokenizer_config.json. Loading must return a status and never crash; a tokenizer that loads must
// encode and decode a few fixed texts, give ids inside its vocabulary, and answer every id query.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using attribution::engine::Tokenizer;

void Exercise(const Tokenizer& tokenizer) {
  const int64_t vocab = tokenizer.vocab_size();
  FUZZ_CHECK(vocab >= 0);
  for (const char* text : {"", "Hello world", " two  spaces\tand\nlines ", "caf\xC3\xA9 \xE2\x98\x83 \xF0\x9F\x98\x80",
                           "<s></s><|endoftext|><unk>"}) {
    for (bool special : {false, true}) {
      auto encoding = tokenizer.Encode(text, special);
      if (!encoding.ok()) continue;
      FUZZ_CHECK(encoding->ids.size() == encoding->spans.size());
      for (size_t i = 0; i < encoding->ids.size(); ++i) {
        FUZZ_CHECK(encoding->ids[i] >= 0 && encoding->ids[i] < vocab);
        FUZZ_CHECK(encoding->spans[i].begin <= encoding->spans[i].end && encoding->spans[i].end <= std::strlen(text));
      }
      (void)tokenizer.Decode(encoding->ids, /*skip_special_tokens=*/!special);
    }
  }
  // Ids at the edges and in the middle of the vocabulary, and outside it.
  std::vector<int64_t> ids = {-1, 0, 1, vocab / 2, vocab - 2, vocab - 1, vocab};
  for (int64_t id : ids) {
    (void)tokenizer.TokenText(id);
    (void)tokenizer.Decode({id}, /*skip_special_tokens=*/false);
    (void)tokenizer.IsSpecial(id);
  }
  (void)tokenizer.Decode(ids, /*skip_special_tokens=*/true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t json_size = nul ? static_cast<size_t>(nul - data) : size;
  attribution::fuzz::WriteScratchFile("tokenizer.json", data, json_size);
  const std::string config_path = attribution::fuzz::ScratchDir() + "/tokenizer_config.json";
  if (nul) {
    attribution::fuzz::WriteScratchFile("tokenizer_config.json", nul + 1, size - json_size - 1);
  } else {
    unlink(config_path.c_str());
  }
  auto tokenizer = Tokenizer::Load(attribution::fuzz::ScratchDir());
  if (!tokenizer.ok()) {
    FUZZ_CHECK(tokenizer.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  Exercise(**tokenizer);
  return 0;
}
