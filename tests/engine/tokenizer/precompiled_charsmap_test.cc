// SPDX-License-Identifier: Apache-2.0
// CheckPrecompiledCharsmap on small hand-built darts-clone tries (the real nmt_nfkc rules are checked in
// tokenizer_test.cc): each damage is one that made libsentencepiece read outside the map.
#include "engine/tokenizer/precompiled_charsmap.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace attribution::engine {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::StatusIs;
using ::testing::HasSubstr;

constexpr uint32_t kUnused = 1u << 31;  // a value unit: matches no byte
constexpr uint32_t kLeaf = 1u << 8;

// A unit with `label` whose children lie at `offset` from it (offsets below 2^21, unscaled).
uint32_t Unit(uint32_t offset, uint32_t label, bool leaf = false) { return offset << 10 | (leaf ? kLeaf : 0) | label; }

// The map of one rule, "a" -> "b": root 0 with its children from 256, "a" at 256 ^ 'a' with its own
// (the leaf's value, at 512) from 512.
std::vector<uint32_t> OneRuleTrie() {
  std::vector<uint32_t> units(768, kUnused);
  units[0] = Unit(256, 0);
  units[256 ^ 'a'] = Unit((256 ^ 'a') ^ 512, 'a', /*leaf=*/true);
  units[512] = kUnused | 0;  // the value: offset 0 in the normalized strings
  return units;
}

std::string Charsmap(const std::vector<uint32_t>& units, const std::string& normalized = std::string("b\0", 2)) {
  std::string blob;
  auto put = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) blob.push_back(static_cast<char>(v >> (8 * i)));
  };
  put(static_cast<uint32_t>(units.size() * 4));
  for (uint32_t unit : units) put(unit);
  return blob + normalized;
}

absl::Status Check(const std::string& charsmap) { return CheckPrecompiledCharsmap(charsmap, "rules"); }

auto Damaged(const char* why) { return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why)); }

TEST(PrecompiledCharsmap, ASoundTrieAndNoMapAreAccepted) {
  EXPECT_THAT(Check(Charsmap(OneRuleTrie())), IsOk());
  EXPECT_THAT(Check(""), IsOk());
}

TEST(PrecompiledCharsmap, ALayoutThatDoesNotAddUpIsRefused) {
  EXPECT_THAT(Check("ab"), Damaged("4-byte trie size"));
  std::string blob = Charsmap(OneRuleTrie());
  blob[0] = 1;  // a trie size not a multiple of 4
  EXPECT_THAT(Check(blob), Damaged("not a multiple of 4"));
  blob = Charsmap(OneRuleTrie());
  blob[3] = 0x7F;  // past the map
  EXPECT_THAT(Check(blob), Damaged("not a multiple of 4 within"));
  EXPECT_THAT(Check(Charsmap(OneRuleTrie(), "b")), Damaged("do not end with a NUL"));
  EXPECT_THAT(Check(Charsmap(OneRuleTrie(), "")), Damaged("do not end with a NUL"));
  EXPECT_THAT(Check(Charsmap({})), Damaged("root points past"));
}

TEST(PrecompiledCharsmap, IndicesPastTheTrieAreRefused) {
  std::vector<uint32_t> units = OneRuleTrie();
  units[0] = Unit(768, 0);  // the root's children would be units 768 to 1023
  EXPECT_THAT(Check(Charsmap(units)), Damaged("root points past its 768 units"));
  units = OneRuleTrie();
  units[256 ^ 'a'] = Unit((256 ^ 'a') ^ 768, 'a', true);  // "a"'s leaf value would be unit 768
  EXPECT_THAT(Check(Charsmap(units)), Damaged("trie unit 353 points past"));
  units = OneRuleTrie();
  units[256 ^ 'a'] = (0xFFFFFFFF & ~kUnused & ~0xFFu) | 'a';  // the largest scaled offset
  EXPECT_THAT(Check(Charsmap(units)), Damaged("points past"));
}

TEST(PrecompiledCharsmap, ALeafValuePastTheNormalizedStringsIsRefused) {
  std::vector<uint32_t> units = OneRuleTrie();
  units[512] = kUnused | 2;  // the strings are "b\0": offset 2 is past them
  EXPECT_THAT(Check(Charsmap(units)), Damaged("maps to offset 2, past its 2 bytes"));
}

// "a" leads back to the root's children: "aaaa..." matches the rule once per byte, which overran
// NormalizePrefix's 32 results on the stack.
TEST(PrecompiledCharsmap, ALoopIsRefused) {
  std::vector<uint32_t> units = OneRuleTrie();
  units[256 ^ 'a'] = Unit((256 ^ 'a') ^ 256, 'a', true);
  units[256] = kUnused | 0;
  EXPECT_THAT(Check(Charsmap(units)), Damaged("loops back to unit 353"));
}

// 33 rules "a", "aa", ... each a prefix of the next: one text matches all of them.
TEST(PrecompiledCharsmap, MoreNestedRulesThanTheNormalizerKeepsAreRefused) {
  auto chain = [](int rules) {
    std::vector<uint32_t> units(256 * (rules + 2), kUnused);
    units[0] = Unit(256, 0);
    for (int depth = 1; depth <= rules; ++depth) {
      const uint32_t node = (256 * depth) ^ 'a', base = 256 * (depth + 1);
      units[node] = Unit(node ^ base, 'a', true);
      units[base] = kUnused | 0;
    }
    return units;
  };
  EXPECT_THAT(Check(Charsmap(chain(32))), IsOk());
  EXPECT_THAT(Check(Charsmap(chain(33))), Damaged("more than 32 of its rules"));
}

TEST(PrecompiledCharsmap, BothMapsOfAModelAreFoundAndChecked) {
  // ModelProto { normalizer_spec (3) { name (1) "n", precompiled_charsmap (2) ... } }
  auto spec = [](int field, const std::string& charsmap) {
    std::string inner = std::string("\x0A\x01n", 3) + "\x12";
    for (size_t n = charsmap.size();; n >>= 7) {
      inner.push_back(static_cast<char>((n & 0x7F) | (n >= 0x80 ? 0x80 : 0)));
      if (n < 0x80) break;
    }
    inner += charsmap;
    std::string outer(1, static_cast<char>(field << 3 | 2));
    for (size_t n = inner.size();; n >>= 7) {
      outer.push_back(static_cast<char>((n & 0x7F) | (n >= 0x80 ? 0x80 : 0)));
      if (n < 0x80) break;
    }
    return outer + inner;
  };
  const std::string sound = Charsmap(OneRuleTrie()), bad = Charsmap(OneRuleTrie(), "b");
  const std::string proto = spec(3, sound);  // `found` views into it
  std::string_view found;
  ASSERT_TRUE(FindPrecompiledCharsmap(proto, 3, &found));
  EXPECT_EQ(found, sound);
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(3, sound) + spec(5, sound)), IsOk());
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(3, bad)), Damaged("normalizer_spec.precompiled_charsmap is damaged"));
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(5, bad)), Damaged("denormalizer_spec.precompiled_charsmap is damaged"));
  // protobuf keeps the last value written
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(3, sound) + spec(3, bad)), Damaged("normalizer_spec"));
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(3, bad) + spec(3, sound)), IsOk());
  EXPECT_THAT(CheckPrecompiledCharsmaps(spec(3, sound).substr(0, 20)), Damaged("not protobuf wire format"));
}

}  // namespace
}  // namespace attribution::engine
