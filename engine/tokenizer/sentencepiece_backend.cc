// SPDX-License-Identifier: Apache-2.0
// Loads libattribution_sentencepiece.so (sentencepiece_module.cc) in isolation and calls it through
// its C interface.
#include "engine/tokenizer/sentencepiece_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "engine/common/files.h"
#include "engine/common/sanitizers.h"
#include "engine/tokenizer/precompiled_charsmap.h"

namespace attribution::engine {
namespace {

// The module's entry points, resolved once per process.
struct Module {
  void* (*load)(const char*, size_t, char*, size_t) = nullptr;
  void (*free_processor)(void*) = nullptr;
  void (*free_buffer)(void*) = nullptr;
  long (*encode)(void*, const char*, size_t, long**) = nullptr;
  char* (*decode)(void*, const int*, size_t, size_t*, char*, size_t) = nullptr;
  int (*id)(void*, int) = nullptr;
  int (*is_control_or_unknown)(void*, int) = nullptr;
  char* (*id_to_piece)(void*, int, size_t*) = nullptr;
  int (*piece_to_id)(void*, const char*, size_t) = nullptr;
  std::string error;  // why it could not be loaded
};

constexpr char kModuleName[] = "libattribution_sentencepiece.so";

// ATTRIBUTION_SENTENCEPIECE_MODULE, else next to the running binary, else where the build put it.
std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("ATTRIBUTION_SENTENCEPIECE_MODULE")) paths.push_back(env);
  if (const std::string dir = ExecutableDir(); !dir.empty()) {
    paths.push_back(absl::StrCat(dir, kModuleName));
    paths.push_back(absl::StrCat(dir, "../lib/", kModuleName));
  }
  paths.push_back(ATTRIBUTION_SENTENCEPIECE_MODULE_PATH);
  return paths;
}

const Module& LoadModule() {
  static Module module;
  static std::once_flag once;
  std::call_once(once, [] {
    // RTLD_DEEPBIND keeps libsentencepiece bound to its bundled protobuf. AddressSanitizer refuses
    // it; the sanitizer jobs' binaries load no other protobuf, so plain RTLD_LOCAL is enough there.
    const int flags = RTLD_NOW | RTLD_LOCAL | (kAddressSanitizer || kThreadSanitizer ? 0 : RTLD_DEEPBIND);
    void* handle = nullptr;
    for (const std::string& path : Candidates()) {
      if (::access(path.c_str(), R_OK) != 0) continue;
      handle = ::dlopen(path.c_str(), flags);
      if (handle != nullptr) break;
      module.error = absl::StrCat("cannot load ", path, ": ", ::dlerror());
    }
    if (handle == nullptr) {
      if (module.error.empty())
        module.error = absl::StrCat(kModuleName, " not found (set ATTRIBUTION_SENTENCEPIECE_MODULE)");
      return;
    }
    auto bind = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::decay_t<decltype(fn)>>(::dlsym(handle, name));
    };
    bind(module.load, "attribution_spm_load_serialized");
    bind(module.free_processor, "attribution_spm_free");
    bind(module.free_buffer, "attribution_spm_free_buffer");
    bind(module.encode, "attribution_spm_encode");
    bind(module.decode, "attribution_spm_decode");
    bind(module.id, "attribution_spm_id");
    bind(module.is_control_or_unknown, "attribution_spm_is_control_or_unknown");
    bind(module.id_to_piece, "attribution_spm_id_to_piece");
    bind(module.piece_to_id, "attribution_spm_piece_to_id");
    if (!module.load || !module.free_processor || !module.free_buffer || !module.encode || !module.decode ||
        !module.id || !module.is_control_or_unknown || !module.id_to_piece || !module.piece_to_id) {
      module.error = absl::StrCat(kModuleName, " lacks an entry point");
      module.load = nullptr;
    }
  });
  return module;
}

}  // namespace

SentencePieceBackend::SentencePieceBackend() = default;

SentencePieceBackend::~SentencePieceBackend() {
  if (processor_ != nullptr) LoadModule().free_processor(processor_);
}

std::unique_ptr<SentencePieceBackend> SentencePieceBackend::Load(const std::string& path, std::string* error) {
  const Module& module = LoadModule();
  if (module.load == nullptr) {
    *error = module.error;
    return nullptr;
  }
  // Read here and checked before libsentencepiece sees them: it loads a damaged precompiled charsmap as
  // it is and crashes the process at the first text it normalizes (or at load, in the model's
  // self-test). The bytes checked are the bytes loaded.
  absl::StatusOr<std::string> model = ReadModelFile(path);
  absl::Status status = model.ok() ? CheckPrecompiledCharsmaps(*model) : model.status();
  if (!status.ok()) {
    *error = std::string(status.message());
    return nullptr;
  }
  char message[1024] = {0};
  void* processor = module.load(model->data(), model->size(), message, sizeof(message));
  if (processor == nullptr) {
    *error = message;
    return nullptr;
  }
  std::unique_ptr<SentencePieceBackend> backend(new SentencePieceBackend());
  backend->processor_ = processor;
  return backend;
}

std::vector<SentencePiece> SentencePieceBackend::Encode(const std::string& text) const {
  const Module& module = LoadModule();
  long* triples = nullptr;
  const long count = module.encode(processor_, text.data(), text.size(), &triples);
  std::vector<SentencePiece> pieces;
  for (long i = 0; i < count; ++i) {
    pieces.push_back({static_cast<int>(triples[3 * i]), static_cast<size_t>(triples[3 * i + 1]),
                      static_cast<size_t>(triples[3 * i + 2])});
  }
  if (triples != nullptr) module.free_buffer(triples);
  return pieces;
}

bool SentencePieceBackend::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  const Module& module = LoadModule();
  char message[1024] = {0};
  size_t length = 0;
  char* decoded = module.decode(processor_, ids.data(), ids.size(), &length, message, sizeof(message));
  if (decoded == nullptr) {
    *error = message;
    return false;
  }
  text->assign(decoded, length);
  module.free_buffer(decoded);
  return true;
}

int SentencePieceBackend::size() const { return LoadModule().id(processor_, 0); }
int SentencePieceBackend::bos_id() const { return LoadModule().id(processor_, 1); }
int SentencePieceBackend::eos_id() const { return LoadModule().id(processor_, 2); }
int SentencePieceBackend::pad_id() const { return LoadModule().id(processor_, 3); }
int SentencePieceBackend::unk_id() const { return LoadModule().id(processor_, 4); }
bool SentencePieceBackend::IsControlOrUnknown(int id) const {
  return LoadModule().is_control_or_unknown(processor_, id) != 0;
}

std::string SentencePieceBackend::IdToPiece(int id) const {
  const Module& module = LoadModule();
  size_t length = 0;
  char* piece = module.id_to_piece(processor_, id, &length);
  std::string out(piece, length);
  module.free_buffer(piece);
  return out;
}

int SentencePieceBackend::PieceToId(const std::string& piece) const {
  return LoadModule().piece_to_id(processor_, piece.data(), piece.size());
}

}  // namespace attribution::engine
