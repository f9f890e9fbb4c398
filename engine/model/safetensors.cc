// SPDX-License-Identifier: Apache-2.0
#include "engine/model/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/bounded_json.h"
#include "engine/common/files.h"
#include "engine/common/status_macros.h"

namespace attribution::engine {
namespace {

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "U8") return at::kByte;  // bitsandbytes' packed 4-bit codes and quant states
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", dtype, "\" is not supported for weights (supported: F32, F16, BF16, U8)"));
}

// `size` bytes at `offset`, or DATA_LOSS naming `what` (the file, a tensor in it) when the file ends before them.
absl::Status ReadAt(int fd, const std::string& what, void* out, uint64_t size, uint64_t offset) {
  for (uint64_t done = 0; done < size;) {
    const ssize_t n = ::pread(fd, static_cast<char*>(out) + done, std::min<uint64_t>(size - done, uint64_t{1} << 30),
                              static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::DataLossError(absl::StrCat(what, ": cannot read: ", std::strerror(errno)));
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(what, ": the file ends before it (cut short while the model loads?)"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ElementSize(at::ScalarType dtype) { return static_cast<int64_t>(c10::elementSize(dtype)); }

// Owns one read-only mmap of a whole file.
class SafetensorsFile::Mapping {
 public:
  Mapping(const uint8_t* data, size_t size, int fd) : data_(data), size_(size), fd_(fd) {}
  ~Mapping() {
    if (size_ > 0) munmap(const_cast<uint8_t*>(data_), size_);
    ::close(fd_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  int fd() const { return fd_; }

 private:
  const uint8_t* data_;
  size_t size_;
  int fd_;  // Read's: a read past a file cut short since returns 0, where the mapping raised SIGBUS
};

SafetensorsFile::SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping)
    : path_(std::move(path)), mapping_(std::move(mapping)) {}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO would wait for a writer forever; it is refused below (not a regular file).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::NotFoundError(absl::StrCat(path, ": cannot stat: ", std::strerror(error)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return NotARegularFile(path, st.st_mode);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(error)));
  }
  auto mapping = std::make_shared<Mapping>(static_cast<const uint8_t*>(data), size, fd);
  // The header is read, not mapped: a file cut short while the model loads ended the process with SIGBUS as the
  // JSON parser touched a page past its new end (README: exit status 1 naming the file).
  uint8_t length[8];
  RETURN_IF_ERROR(ReadAt(fd, absl::StrCat(path, ": header length"), length, sizeof(length), 0));
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length[i];
  if (header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (8 + header_bytes > size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_bytes, " runs past the end of the ", size, "-byte file"));
  }
  std::string header(header_bytes, '\0');
  RETURN_IF_ERROR(ReadAt(fd, absl::StrCat(path, ": header"), header.data(), header_bytes, 8));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, std::move(mapping)));
  RETURN_IF_ERROR(file->ParseHeader(header));
  return file;
}

absl::Status SafetensorsFile::ParseHeader(const std::string& text) {
  const uint64_t header_bytes = text.size();
  // JSON parsers keep the last of duplicated keys silently; a tensor named twice means the file was
  // not written by a safetensors writer, and either entry could be the intended one.
  std::set<std::string> names;
  std::optional<std::string> duplicate;
  auto find_duplicates = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !duplicate &&
        !names.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  ASSIGN_OR_RETURN(nlohmann::json header, ParseBoundedJson(text, path_ + ": header", find_duplicates));
  if (duplicate) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header names \"", *duplicate, "\" more than once"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header is not a JSON object"));
  }
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_size = mapping_->size() - data_start;
  for (const auto& [name, entry] : header.items()) {
    const std::string where = absl::StrCat(path_, ": tensor \"", name, "\": ");
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(path_, ": __metadata__ is not an object"));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path_, ": __metadata__ value of \"", key, "\" is not a string"));
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets")) {
      return absl::InvalidArgumentError(absl::StrCat(where, "entry needs \"dtype\", \"shape\" and \"data_offsets\""));
    }
    if (!entry["dtype"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "dtype is not a string"));
    }
    TensorRecord record;
    record.name = name;
    auto dtype = ParseDtype(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(where, dtype.status().message()));
    record.dtype = *dtype;
    const auto& shape = entry["shape"];
    if (!shape.is_array()) return absl::InvalidArgumentError(absl::StrCat(where, "shape is not a list"));
    uint64_t elements = 1;
    for (const auto& dim : shape) {
      if (!dim.is_number_unsigned()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "shape ", shape.dump(), " has a dimension that is not a non-negative integer"));
      }
      const uint64_t d = dim.get<uint64_t>();
      // A dimension past int64 would read as negative in the tensor's shape, even beside a 0.
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && elements > std::numeric_limits<uint64_t>::max() / 8 / d)) {
        return absl::InvalidArgumentError(absl::StrCat(where, "shape ", shape.dump(), " overflows"));
      }
      elements *= d;
      record.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "data_offsets must be two non-negative integers [begin, end]"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "data_offsets [", begin, ", ", end, "] has begin after end"));
    }
    if (end > data_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, "data_offsets end ", end, " lies past the data section of ",
                                                     data_size, " bytes (file truncated?)"));
    }
    const uint64_t expected = elements * static_cast<uint64_t>(ElementSize(record.dtype));
    if (end - begin != expected) {
      return absl::InvalidArgumentError(absl::StrCat(where, "holds ", end - begin, " bytes but shape ", shape.dump(),
                                                     " of ", entry["dtype"].get<std::string>(), " needs ", expected));
    }
    record.begin = data_start + begin;
    record.end = data_start + end;
    tensors_.emplace(name, std::move(record));
  }
  // The format requires the byte buffer to be covered exactly: no overlaps, no holes.
  std::vector<const TensorRecord*> by_offset;
  for (const auto& [name, record] : tensors_) by_offset.push_back(&record);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorRecord* a, const TensorRecord* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = data_start;
  for (const TensorRecord* record : by_offset) {
    if (record->begin < cursor) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor \"", record->name, "\" overlaps the tensor before it"));
    }
    if (record->begin > cursor) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", record->name, "\" starts at byte ",
                                                     record->begin - data_start, " leaving a hole"));
    }
    cursor = record->end;
  }
  if (cursor != mapping_->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", mapping_->size() - cursor, " trailing bytes after the last tensor"));
  }
  return absl::OkStatus();
}

const TensorRecord* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<at::Tensor> SafetensorsFile::Read(const TensorRecord& record) const {
  at::Tensor tensor = at::empty(record.shape, at::TensorOptions().dtype(record.dtype).device(at::kCPU));
  RETURN_IF_ERROR(ReadAt(mapping_->fd(), absl::StrCat(path_, ": tensor \"", record.name, "\""), tensor.data_ptr(),
                         record.end - record.begin, record.begin));
  return tensor;
}

at::Tensor SafetensorsFile::View(const TensorRecord& record) const {
  auto keep_alive = mapping_;
  void* data = const_cast<uint8_t*>(mapping_->data() + record.begin);
  return at::from_blob(
      data, record.shape, [keep_alive](void*) mutable { keep_alive.reset(); },
      at::TensorOptions().dtype(record.dtype).device(at::kCPU));
}

}  // namespace attribution::engine
