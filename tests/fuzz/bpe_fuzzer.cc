// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes through fixed tokenizers' normalizer, pre-tokenizer and BPE model,
// as the server uses them on user text. The tokenizers are the test tokenizers (byte-level BPE as
// GPT-2 / Llama-3 / Qwen2, Metaspace, byte fallback, SentencePiece) found in $ATTRIBUTION_TEST_TOKENIZERS
// (tools/make_test_tokenizers.py writes them). Input: byte 0 picks the tokenizer, byte 1 the operation
// and flags, the rest is the text (or token ids, two bytes each). Every call must return a status or a
// value, never crash; encodings hold ids in the vocabulary and spans inside the text; decoded text
// made valid UTF-8 passes the UTF-8 check that protobuf string fields need.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/continuation.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using attribution::engine::Encoding;
using attribution::engine::Tokenizer;

std::vector<std::unique_ptr<Tokenizer>> LoadTokenizers() {
  const char* root = std::getenv("ATTRIBUTION_TEST_TOKENIZERS");
  if (root == nullptr) {
    std::fprintf(stderr, "bpe_fuzzer: set ATTRIBUTION_TEST_TOKENIZERS to tools/make_test_tokenizers.py's output\n");
    std::exit(2);
  }
  std::vector<std::unique_ptr<Tokenizer>> tokenizers;
  for (const char* kind :
       {"gpt2", "llama3", "qwen2", "llama2", "metaspace", "sentencepiece", "sentencepiece_special"}) {
    auto tokenizer = Tokenizer::Load(std::string(root) + "/" + kind);
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "bpe_fuzzer: %s\n", std::string(tokenizer.status().message()).c_str());
      std::exit(2);
    }
    tokenizers.push_back(std::move(*tokenizer));
  }
  return tokenizers;
}

void CheckEncoding(const Tokenizer& tokenizer, const Encoding& encoding, size_t text_size) {
  FUZZ_CHECK(encoding.ids.size() == encoding.spans.size());
  for (size_t i = 0; i < encoding.ids.size(); ++i) {
    FUZZ_CHECK(encoding.ids[i] >= 0 && encoding.ids[i] < tokenizer.vocab_size());
    FUZZ_CHECK(encoding.spans[i].begin <= encoding.spans[i].end && encoding.spans[i].end <= text_size);
    if (i > 0) FUZZ_CHECK(encoding.spans[i - 1].begin <= encoding.spans[i].begin);
  }
}

void CheckDecoded(const std::string& bytes) {
  FUZZ_CHECK(attribution::engine::CheckUtf8(attribution::engine::ToValidUtf8(bytes)).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::unique_ptr<Tokenizer>> tokenizers = LoadTokenizers();
  if (size < 2) return 0;
  const Tokenizer& tokenizer = *tokenizers[data[0] % tokenizers.size()];
  const bool add_special = data[1] & 1, skip_special = data[1] & 2;
  const std::string text(reinterpret_cast<const char*>(data + 2), size - 2);
  switch ((data[1] >> 2) % 3) {
    case 0: {  // text -> ids -> text
      auto encoding = tokenizer.Encode(text, add_special);
      if (!encoding.ok()) {
        FUZZ_CHECK(!attribution::engine::CheckUtf8(text).ok());
        return 0;
      }
      CheckEncoding(tokenizer, *encoding, text.size());
      auto decoded = tokenizer.Decode(encoding->ids, skip_special);
      FUZZ_CHECK(decoded.ok());
      CheckDecoded(*decoded);
      break;
    }
    case 1: {  // any ids (two bytes each, spread over the vocabulary and just past it) -> text
      std::vector<int64_t> ids;
      for (size_t i = 2; i + 1 < size; i += 2) {
        const int64_t raw = data[i] | (data[i + 1] << 8);
        ids.push_back(raw % (tokenizer.vocab_size() + 2) - 1);
      }
      if (auto decoded = tokenizer.Decode(ids, skip_special); decoded.ok()) CheckDecoded(*decoded);
      for (int64_t id : ids) CheckDecoded(tokenizer.TokenText(id));
      break;
    }
    case 2: {  // a prompt and its continuation, split at the first '|'
      const size_t bar = text.find('|');
      const std::string prompt = text.substr(0, bar), rest = bar == std::string::npos ? "" : text.substr(bar + 1);
      auto target = attribution::engine::EncodeContinuation(tokenizer, prompt, rest);
      if (target.ok()) CheckEncoding(tokenizer, *target, rest.size());
      auto prompt_ids = tokenizer.Encode(prompt, add_special);
      if (!prompt_ids.ok() || !target.ok()) break;
      auto continuation = attribution::engine::DecodeContinuation(tokenizer, prompt_ids->ids, target->ids);
      FUZZ_CHECK(continuation.spans.size() == target->ids.size());
      CheckDecoded(continuation.text);
      break;
    }
  }
  return 0;
}
