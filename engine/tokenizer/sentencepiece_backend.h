// SPDX-License-Identifier: Apache-2.0
// A thin wrapper over libsentencepiece with no abseil in its interface: Debian's sentencepiece header
// declares its own absl::string_view, which clashes with real abseil, so only sentencepiece_backend.cc
// may include it.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace attribution::engine {

struct SentencePiece {
  int id;
  size_t begin, end;  // byte span in the encoded text
};

// Immutable after Load; thread-safe.
class SentencePieceBackend {
 public:
  // Returns null and sets `error` when `path` is not a SentencePiece model.
  static std::unique_ptr<SentencePieceBackend> Load(const std::string& path, std::string* error);
  ~SentencePieceBackend();

  std::vector<SentencePiece> Encode(const std::string& text) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;
  int size() const;
  int bos_id() const;
  int eos_id() const;
  int pad_id() const;
  int unk_id() const;
  bool IsControlOrUnknown(int id) const;
  std::string IdToPiece(int id) const;

 private:
  SentencePieceBackend();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace attribution::engine
