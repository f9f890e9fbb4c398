// SPDX-License-Identifier: Apache-2.0
// The map's layout (sentencepiece's normalizer.cc, Normalizer::DecodePrecompiledCharsMap): a uint32
// little-endian trie size, a darts-clone double array of that many bytes (uint32 units), then the
// normalized strings, each ending in '\0'. Normalizer::NormalizePrefix walks the array as darts-clone's
// commonPrefixSearch does and reads a matched rule's replacement at its value in the strings.
#include "engine/tokenizer/precompiled_charsmap.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attribution::engine {
namespace {

constexpr int kNormalizerSpecField = 3;
constexpr int kDenormalizerSpecField = 5;
constexpr int kPrecompiledCharsmapField = 2;  // in NormalizerSpec
// Normalizer::kMaxTrieResultsSize: NormalizePrefix keeps this many prefix matches in an array on the
// stack, then reads as many as the trie reports.
constexpr int kMaxPrefixMatches = 32;

bool ReadVarint(std::string_view data, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < data.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(data[(*pos)++]);
    *value |= uint64_t{byte & 0x7Fu} << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Calls visit(field number, bytes) for each length-delimited field of `message`, skipping the others;
// false when `message` is not wire format (groups, which no SentencePiece model holds, included).
template <typename Visit>
bool ForEachLengthDelimited(std::string_view message, Visit visit) {
  size_t pos = 0;
  while (pos < message.size()) {
    uint64_t key = 0, value = 0;
    if (!ReadVarint(message, &pos, &key)) return false;
    switch (key & 7) {
      case 0:
        if (!ReadVarint(message, &pos, &value)) return false;
        break;
      case 1:
        if (message.size() - pos < 8) return false;
        pos += 8;
        break;
      case 5:
        if (message.size() - pos < 4) return false;
        pos += 4;
        break;
      case 2:
        if (!ReadVarint(message, &pos, &value) || value > message.size() - pos) return false;
        visit(key >> 3, message.substr(pos, value));
        pos += value;
        break;
      default:
        return false;
    }
  }
  return true;
}

// darts-clone's DoubleArrayUnit (third_party/darts_clone/darts.h).
bool HasLeaf(uint32_t unit) { return ((unit >> 8) & 1) != 0; }
uint32_t Value(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t Label(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

// Walks every node a text can reach, depth first. From node p the search reads the units at
// base ^ c for every byte c (base = p ^ offset) and, where p has a leaf, the value at base; a child
// is a unit whose label is its byte. In a sound trie (darts-clone builds a tree) the walks stay in the
// array and never loop, the values lie in the normalized strings, and no path matches more than
// kMaxPrefixMatches rules.
absl::Status CheckTrie(std::string_view trie, size_t normalized_size, std::string_view field) {
  const size_t n = trie.size() / 4;
  auto unit = [&](size_t i) {
    const auto* b = reinterpret_cast<const uint8_t*>(trie.data() + 4 * i);
    return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  };
  auto base_of = [&](size_t p) { return p ^ Offset(unit(p)); };
  auto damaged = [&](const auto&... why) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(field), " is damaged: ", why...));
  };
  if (n == 0 || (base_of(0) | 0xFF) >= n) return damaged("its trie root points past its ", n, " units");

  enum : uint8_t { kUnseen, kOnPath, kDone };
  std::vector<uint8_t> state(n, kUnseen);
  std::vector<uint8_t> matches_below(n, 0);  // the most rules a walk on from the node can match
  struct Frame {
    size_t node;
    uint32_t next_byte;
  };
  std::vector<Frame> path = {{0, 0}};
  state[0] = kOnPath;
  while (!path.empty()) {
    const Frame frame = path.back();
    if (frame.next_byte == 256) {
      state[frame.node] = kDone;
      path.pop_back();
      continue;
    }
    const size_t child = base_of(frame.node) ^ frame.next_byte;
    const uint32_t child_unit = unit(child);
    if (Label(child_unit) != frame.next_byte) {
      ++path.back().next_byte;
      continue;
    }
    if (state[child] == kOnPath) return damaged("its trie loops back to unit ", child);
    if (state[child] == kUnseen) {
      const size_t child_base = base_of(child);
      if ((child_base | 0xFF) >= n) return damaged("trie unit ", child, " points past its ", n, " units");
      if (HasLeaf(child_unit) && Value(unit(child_base)) >= normalized_size) {
        return damaged("trie unit ", child, " maps to offset ", Value(unit(child_base)), ", past its ", normalized_size,
                       " bytes of normalized strings");
      }
      state[child] = kOnPath;
      path.push_back({child, 0});
      continue;  // back to this byte once the child is done
    }
    const int matches = matches_below[child] + (HasLeaf(child_unit) ? 1 : 0);
    if (matches > kMaxPrefixMatches) {
      return damaged("a text can match more than ", kMaxPrefixMatches, " of its rules at once");
    }
    matches_below[frame.node] = std::max<uint8_t>(matches_below[frame.node], matches);
    ++path.back().next_byte;
  }
  return absl::OkStatus();
}

}  // namespace

bool FindPrecompiledCharsmap(std::string_view model_proto, int spec_field, std::string_view* charsmap) {
  *charsmap = {};
  bool well_formed = true;
  const bool top_well_formed = ForEachLengthDelimited(model_proto, [&](uint64_t field, std::string_view spec) {
    if (field != static_cast<uint64_t>(spec_field)) return;
    // A message field written twice is merged, and a bytes field in it is its last value.
    well_formed &= ForEachLengthDelimited(spec, [&](uint64_t spec_member, std::string_view bytes) {
      if (spec_member == kPrecompiledCharsmapField) *charsmap = bytes;
    });
  });
  return top_well_formed && well_formed;
}

absl::Status CheckPrecompiledCharsmap(std::string_view charsmap, std::string_view field) {
  if (charsmap.empty()) return absl::OkStatus();
  auto damaged = [&](const auto&... why) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(field), " is damaged: ", why...));
  };
  if (charsmap.size() < 4) return damaged("its ", charsmap.size(), " bytes cannot hold its 4-byte trie size");
  const auto* b = reinterpret_cast<const uint8_t*>(charsmap.data());
  const uint32_t trie_size = uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  if (trie_size % 4 != 0 || trie_size > charsmap.size() - 4) {
    return damaged("its trie size ", trie_size, " is not a multiple of 4 within its ", charsmap.size() - 4,
                   " bytes after the size");
  }
  const std::string_view normalized = charsmap.substr(4 + trie_size);
  if (normalized.empty() || normalized.back() != '\0') {
    return damaged("its normalized strings (", normalized.size(), " bytes) do not end with a NUL byte");
  }
  return CheckTrie(charsmap.substr(4, trie_size), normalized.size(), field);
}

absl::Status CheckPrecompiledCharsmaps(std::string_view model_proto) {
  for (const auto& [spec_field, name] : {std::pair<int, const char*>{kNormalizerSpecField, "normalizer_spec"},
                                         {kDenormalizerSpecField, "denormalizer_spec"}}) {
    std::string_view charsmap;
    if (!FindPrecompiledCharsmap(model_proto, spec_field, &charsmap)) {
      return absl::InvalidArgumentError("not a SentencePiece model: not protobuf wire format");
    }
    const absl::Status status = CheckPrecompiledCharsmap(charsmap, absl::StrCat(name, ".precompiled_charsmap"));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace attribution::engine
