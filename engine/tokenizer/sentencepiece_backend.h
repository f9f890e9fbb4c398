// SPDX-License-Identifier: Apache-2.0
// libsentencepiece, loaded in isolation: Debian's library bundles and exports protobuf 3.14, which
// clashes with the system libprotobuf that gRPC uses (whichever loads first takes the other's calls:
// a crash at load or a failed version check). It lives in a module (sentencepiece_module.cc) opened
// with RTLD_LOCAL | RTLD_DEEPBIND and is called through a C interface; its header (which also declares
// its own absl::string_view) is included nowhere else.
#pragma once

#include <memory>
#include <string>
#include <vector>

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
  int PieceToId(const std::string& piece) const;  // -1 when the model has no such piece

 private:
  SentencePieceBackend();
  SentencePieceBackend(const SentencePieceBackend&) = delete;
  SentencePieceBackend& operator=(const SentencePieceBackend&) = delete;
  void* processor_ = nullptr;  // owned by the module
};

}  // namespace attribution::engine
