// SPDX-License-Identifier: Apache-2.0
#include "server/model_digest.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/common/files.h"
#include "engine/model/weight_files.h"

namespace attribution::server {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

struct ContextDeleter {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

std::string Hex(const unsigned char* digest, unsigned int size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ModelFiles(const std::string& dir) {
  std::set<std::string> files;
  for (const char* name :
       {"config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}) {
    if (engine::FileExists(dir + "/" + name)) files.insert(name);
  }
  // special_tokens_map.json where the tokenizer reads it, a tokenizer.model's folder (an "eos_token" there changed
  // answers, and two replicas that tokenized apart reported one digest); beside a tokenizer.json it is unread,
  // and hashing it changed the digest of most checkpoints for nothing.
  if (!files.contains("tokenizer.json") && engine::FileExists(dir + "/special_tokens_map.json")) {
    files.insert("special_tokens_map.json");
  }
  // As the weight store reads them.
  absl::StatusOr<engine::WeightFiles> weights = engine::FindWeightFiles(dir);
  if (!weights.ok()) return weights.status();
  if (!weights->index.empty()) files.insert(weights->index);
  files.insert(weights->shards.begin(), weights->shards.end());
  return std::vector<std::string>(files.begin(), files.end());  // std::set: byte order, as Python's sorted()
}

absl::StatusOr<std::string> ModelFilesIdentity(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> files = ModelFiles(dir);
  if (!files.ok()) return files.status();
  std::string identity;
  for (const std::string& name : *files) {
    const std::string path = dir + "/" + name;
    struct stat info;
    if (::stat(path.c_str(), &info) != 0) return Errno("cannot stat", path);
    // The change time too: a copy that sets the modification time back (cp -p, rsync -t --inplace) hid a rewrite
    // of the same size; no call sets the change time back.
    absl::StrAppend(&identity, name, " ", info.st_dev, " ", info.st_ino, " ", info.st_size, " ", info.st_mtim.tv_sec,
                    ".", info.st_mtim.tv_nsec, " ", info.st_ctim.tv_sec, ".", info.st_ctim.tv_nsec, "\n");
  }
  return identity;
}

absl::StatusOr<std::string> ModelFilesDigest(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> files = ModelFiles(dir);
  if (!files.ok()) return files.status();
  std::unique_ptr<EVP_MD_CTX, ContextDeleter> context(EVP_MD_CTX_new());
  if (context == nullptr || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("cannot start a SHA-256 digest (OpenSSL)");
  }
  std::vector<char> buffer(4 << 20);
  for (const std::string& name : *files) {
    const std::string path = dir + "/" + name;
    // O_NONBLOCK: a named pipe in the model's folder blocked the open forever (startup hung, logging nothing).
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return Errno("cannot open", path);
    struct stat info;
    if (::fstat(fd, &info) != 0) {
      const absl::Status status = Errno("cannot stat", path);
      ::close(fd);
      return status;
    }
    if (!S_ISREG(info.st_mode)) {
      ::close(fd);
      return engine::NotARegularFile(path, info.st_mode);
    }
    const std::string header = absl::StrCat(name, "\n", static_cast<int64_t>(info.st_size), "\n");
    EVP_DigestUpdate(context.get(), header.data(), header.size());
    int64_t read_total = 0;
    for (;;) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const absl::Status status = Errno("cannot read", path);
        ::close(fd);
        return status;
      }
      if (n == 0) break;
      EVP_DigestUpdate(context.get(), buffer.data(), static_cast<size_t>(n));
      read_total += n;
    }
    ::close(fd);
    if (read_total != static_cast<int64_t>(info.st_size)) {
      return absl::DataLossError(absl::StrCat(path, " changed while it was read (", read_total, " bytes, ",
                                              static_cast<int64_t>(info.st_size), " at the start)"));
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(context.get(), digest, &size) != 1) return absl::InternalError("SHA-256 failed (OpenSSL)");
  return Hex(digest, size);
}

std::string LoadedModelDigest(const std::string& weights_digest, const std::string& dtype,
                              const std::string& quantization, int64_t block_size, bool double_quantization) {
  const std::string text =
      absl::StrCat("weights_digest=", weights_digest, "\ndtype=", dtype, "\nquantization=", quantization,
                   "\nblock_size=", block_size, "\ndouble_quantization=", double_quantization ? 1 : 0, "\n");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha256(), nullptr);
  return Hex(digest, size);
}

}  // namespace attribution::server
