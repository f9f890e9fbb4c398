// SPDX-License-Identifier: Apache-2.0
// Encoding one long word: the time a request's text costs its handler thread before any model work. A
// tokenizer without a pre-tokenizer (Llama 2's tokenizer.json) or a text without spaces makes a whole
// prompt one BPE word, so the merge loop's complexity in the word's length is what a hostile request meets.
// With --text, the time to encode that file's text instead (e.g. a prompt against a tokenizer of 100,000
// added tokens, which are looked for at every byte).
//
//   tokenizer_bench --tokenizer=DIR [--sizes=1000,10000,100000,200000] [--iterations=3] [--text=FILE]
// DIR: a model directory with tokenizer.json (e.g. build/test_tokenizers/llama2, which the tests write).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "engine/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (std::optional<int> exit =
          attribution::bench::CheckFlags(argc, argv, {"iterations", "sizes", "text", "tokenizer"}))
    return *exit;
  using attribution::bench::Flag;
  const std::string dir = Flag(argc, argv, "tokenizer", "build/test_tokenizers/llama2");
  const auto load_start = std::chrono::steady_clock::now();
  auto tokenizer = attribution::engine::Tokenizer::Load(dir);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  const std::chrono::duration<double> load_seconds = std::chrono::steady_clock::now() - load_start;
  int iterations = 3;
  std::vector<int64_t> sizes;
  for (absl::string_view s : absl::StrSplit(Flag(argc, argv, "sizes", "1000,10000,100000,200000"), ',')) {
    int64_t size = 0;
    if (!absl::SimpleAtoi(s, &size) || size < 1) {
      std::fprintf(stderr, "tokenizer_bench: --sizes: \"%s\" is not a positive byte count\n", std::string(s).c_str());
      return 2;
    }
    sizes.push_back(size);
  }
  if (!absl::SimpleAtoi(Flag(argc, argv, "iterations", "3"), &iterations) || iterations < 1) {
    std::fprintf(stderr, "tokenizer_bench: --iterations must be a positive integer\n");
    return 2;
  }
  if (const std::string path = Flag(argc, argv, "text", ""); !path.empty()) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "tokenizer_bench: --text: cannot read \"%s\"\n", path.c_str());
      return 2;
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t tokens = 0;
    const double seconds = attribution::bench::SecondsPerCall(
        [&] {
          auto encoding = (*tokenizer)->Encode(text, /*add_special_tokens=*/false);
          tokens = encoding.ok() ? encoding->ids.size() : 0;
        },
        iterations);
    std::printf("| text bytes | tokens | ms per encode | ms to load the tokenizer |\n|---:|---:|---:|---:|\n");
    std::printf("| %zu | %zu | %.3f | %.1f |\n", text.size(), tokens, 1e3 * seconds, 1e3 * load_seconds.count());
    return 0;
  }
  // English letters without spaces: every pair of neighbours has merges to apply, as in real words.
  const std::string letters = "thequickbrownfoxjumpsoverthelazydogandthenitwasover";
  std::printf("| word bytes | tokens | ms per encode | us per byte |\n|---:|---:|---:|---:|\n");
  for (int64_t size : sizes) {
    std::string word;
    while (static_cast<int64_t>(word.size()) < size) word += letters;
    word.resize(size);
    size_t tokens = 0;
    const double seconds = attribution::bench::SecondsPerCall(
        [&] {
          auto encoding = (*tokenizer)->Encode(word, /*add_special_tokens=*/false);
          tokens = encoding.ok() ? encoding->ids.size() : 0;
        },
        iterations);
    std::printf("| %lld | %zu | %.3f | %.3f |\n", static_cast<long long>(size), tokens, 1e3 * seconds,
                1e6 * seconds / static_cast<double>(size));
  }
  return 0;
}
