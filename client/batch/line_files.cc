// SPDX-License-Identifier: Apache-2.0
#include "client/batch/line_files.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attribution::client::batch {
namespace {

constexpr size_t kBufferBytes = 1 << 16;
constexpr absl::string_view kErrnoPayload = "attribution.client.batch/errno";

}  // namespace

absl::Status FileError(const std::string& what, const std::string& path, int error) {
  absl::Status status = absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(error)));
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(error)));
  return status;
}

int FileErrorNumber(const absl::Status& status) {
  const auto payload = status.GetPayload(kErrnoPayload);
  int error = 0;
  if (payload.has_value() && absl::SimpleAtoi(std::string(*payload), &error)) return error;
  return 0;
}

absl::StatusOr<FileIdentity> IdentityOfOpenFile(int fd, const std::string& path) {
  struct stat status;
  if (::fstat(fd, &status) != 0) return FileError("cannot stat", path, errno);
  return FileIdentity{.device = static_cast<uint64_t>(status.st_dev),
                      .inode = static_cast<uint64_t>(status.st_ino),
                      .size = static_cast<int64_t>(status.st_size),
                      .modified_ns = static_cast<int64_t>(status.st_mtim.tv_sec) * 1000000000 + status.st_mtim.tv_nsec};
}

absl::StatusOr<LineReader> LineReader::Open(const std::string& path, int* error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (error != nullptr) *error = errno;
    return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  return LineReader(path, fd);
}

LineReader::LineReader(LineReader&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      buffer_(std::move(other.buffer_)),
      buffer_begin_(other.buffer_begin_),
      offset_(other.offset_),
      number_(other.number_),
      end_(other.end_) {}

LineReader::~LineReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<bool> LineReader::Next(Line& line) {
  size_t searched = buffer_begin_;
  size_t newline = std::string::npos;
  size_t nul = std::string::npos;  // the line's first NUL byte, once seen
  int64_t skipped = 0;             // bytes of the line after its NUL, read and not kept
  for (;;) {
    newline = buffer_.find('\n', searched);
    if (nul == std::string::npos) {  // within this line only: a search to the buffer's end made reading 5x slower
      const size_t until = newline == std::string::npos ? buffer_.size() : newline;
      const void* found = std::memchr(buffer_.data() + searched, '\0', until - searched);
      if (found != nullptr) nul = static_cast<size_t>(static_cast<const char*>(found) - buffer_.data());
    }
    if (newline != std::string::npos || end_) break;
    // Past a NUL the line is damaged, whatever follows: what follows is skipped, so a tail of zeros is read in
    // a buffer's memory, not its own size.
    if (nul != std::string::npos) {
      skipped += static_cast<int64_t>(buffer_.size() - nul - 1);
      buffer_.resize(nul + 1);
    }
    // Keep only the unread part, then read more behind it: the buffer grows only as long as one line.
    buffer_.erase(0, buffer_begin_);
    if (nul != std::string::npos) nul -= buffer_begin_;
    buffer_begin_ = 0;
    searched = buffer_.size();
    buffer_.resize(searched + kBufferBytes);
    ssize_t n;
    do {
      n = ::read(fd_, buffer_.data() + searched, kBufferBytes);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      const int error = errno;
      buffer_.resize(searched);
      return absl::NotFoundError(absl::StrCat("cannot read ", path_, ": ", std::strerror(error)));
    }
    buffer_.resize(searched + static_cast<size_t>(n));
    end_ = n == 0;
  }
  if (buffer_begin_ == buffer_.size()) return false;
  const size_t end = newline == std::string::npos ? buffer_.size() : newline;
  line.text.assign(buffer_, buffer_begin_, (nul == std::string::npos ? end : nul) - buffer_begin_);
  line.offset = offset_;
  line.number = ++number_;
  line.complete = newline != std::string::npos;
  line.holds_nul = nul != std::string::npos;
  line.length = static_cast<int64_t>(end - buffer_begin_) + skipped;
  const size_t consumed = end - buffer_begin_ + (line.complete ? 1 : 0);
  buffer_begin_ += consumed;
  offset_ += static_cast<int64_t>(consumed) + skipped;
  return true;
}

absl::Status NulByteError(const std::string& where) {
  return absl::DataLossError(absl::StrCat(where,
                                          ": the line holds a NUL byte, which no result line does: the file is "
                                          "damaged there (the zero-filled tail a crash of the machine leaves?)"));
}

absl::Status WriteAllBytes(int fd, absl::string_view bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return FileError("cannot write", path, n < 0 ? errno : ENOSPC);
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status CopyFileBytes(int from_fd, const std::string& from, int64_t offset, int64_t length, int to_fd,
                           const std::string& to) {
  std::string buffer(static_cast<size_t>(std::min<int64_t>(length, kBufferBytes * 16)), '\0');
  while (length > 0) {
    const ssize_t n = ::pread(from_fd, buffer.data(), std::min<size_t>(buffer.size(), length), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FileError("cannot read", from, errno);
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(from, " changed while read: it ends before byte ", offset + length));
    }
    if (absl::Status written = WriteAllBytes(to_fd, {buffer.data(), static_cast<size_t>(n)}, to); !written.ok()) {
      return written;
    }
    offset += n;
    length -= n;
  }
  return absl::OkStatus();
}

// A directory (or a device) at the path cannot be renamed over: found at the end, it lost the table or pages
// of a whole job's rows. EISDIR, as opening it for writing says.
absl::Status CheckReplaceable(const std::string& path) {
  struct stat status;
  if (::stat(path.c_str(), &status) != 0 || S_ISREG(status.st_mode)) return absl::OkStatus();
  return FileError("cannot replace", path, S_ISDIR(status.st_mode) ? EISDIR : EINVAL);
}

namespace {

// The process's umask, read without changing it (umask(2) sets it: another thread creating a file meanwhile
// would get the wrong mode).
mode_t CurrentUmask() {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  unsigned int mask = 022;
  if (status != nullptr) {
    char line[256];
    while (std::fgets(line, sizeof line, status) != nullptr) {
      if (std::sscanf(line, "Umask: %o", &mask) == 1) break;
    }
    std::fclose(status);
  }
  return static_cast<mode_t>(mask);
}

// Gives the temporary that will be renamed over `path` the mode and group of the file there (an operator's
// `chmod 600` on results kept private; the replacement came out 0644), or, for a new file, the mode open(2)
// gives under the umask (0666 & ~umask, as the results file itself). A group the user is no member of stays
// the user's own (fchown refuses it).
absl::Status TakeModeAndGroupOfReplaced(int fd, const std::string& path, const std::string& temporary) {
  struct stat replaced;
  mode_t mode = 0666 & ~CurrentUmask();
  if (::stat(path.c_str(), &replaced) == 0) {
    mode = replaced.st_mode & 07777;
    if (::fchown(fd, static_cast<uid_t>(-1), replaced.st_gid) != 0) {
      if (errno != EPERM) return FileError("cannot write", temporary, errno);
      mode &= ~static_cast<mode_t>(0070);  // the user's own group is not the one the file was shared with
    }
  }
  // EPERM: the fixed temporary is a colleague's, left by a job of theirs killed in the folder the group shares;
  // it keeps the mode they gave it.
  if (::fchmod(fd, mode) != 0 && errno != EPERM) return FileError("cannot write", temporary, errno);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(const std::string& given) {
  const std::string path = RealFilePath(given);
  if (absl::Status replaceable = CheckReplaceable(path); !replaceable.ok()) return replaceable;
  std::string temporary = path + ".XXXXXX.tmp";
  const int fd = ::mkstemps(temporary.data(), 4);
  if (fd < 0) return FileError("cannot create", temporary, errno);
  if (absl::Status moded = TakeModeAndGroupOfReplaced(fd, path, temporary); !moded.ok()) {
    ::close(fd);
    ::unlink(temporary.c_str());
    return moded;
  }
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(temporary), fd));
}

namespace {

// Opens the fixed temporary `temporary` for writing as a file of its own: not through a symbolic link (its target
// was overwritten, then renamed into place), not a FIFO (opening it waited for a reader forever), not another
// file's second name (a hard link: emptying it emptied that file). What it holds is the caller's to truncate.
absl::StatusOr<int> OpenOwnTemporary(const std::string& temporary) {
  const auto not_its_own = [&temporary] {
    return absl::FailedPreconditionError(absl::StrCat(
        temporary,
        ": not a file of its own (a link, a directory, a device, a pipe, or another file's second name); remove it: "
        "this command writes its temporary file there, then renames it"));
  };
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
  // A symbolic link (ELOOP), a directory (EISDIR), a FIFO without a reader (ENXIO).
  if (fd < 0 && (errno == ELOOP || errno == EISDIR || errno == ENXIO)) return not_its_own();
  if (fd < 0) return FileError("cannot create", temporary, errno);
  if (struct stat info; ::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || info.st_nlink > 1) {
    ::close(fd);
    return not_its_own();
  }
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    const int error = errno;
    ::close(fd);
    return FileError("cannot write", temporary, error);
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::CreateWhileLocked(const std::string& given) {
  const std::string path = RealFilePath(given);
  if (absl::Status replaceable = CheckReplaceable(path); !replaceable.ok()) return replaceable;
  std::string temporary = path + ".tmp";
  absl::StatusOr<int> fd = OpenOwnTemporary(temporary);
  if (!fd.ok()) return fd.status();
  if (::ftruncate(*fd, 0) != 0) {  // what a writer killed before its Commit left
    const int error = errno;
    ::close(*fd);
    return FileError("cannot write", temporary, error);
  }
  if (absl::Status moded = TakeModeAndGroupOfReplaced(*fd, path, temporary); !moded.ok()) {
    ::close(*fd);
    return moded;
  }
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(temporary), *fd));
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::CreateAlone(const std::string& given) {
  const std::string path = RealFilePath(given);
  if (absl::Status replaceable = CheckReplaceable(path); !replaceable.ok()) return replaceable;
  const std::string temporary = path + ".tmp";
  // The lock is the open file's: one opened just before another writer renamed it over `path` is that file
  // now, so the lock counts only while `temporary` still names the file locked.
  for (;;) {
    absl::StatusOr<int> own = OpenOwnTemporary(temporary);
    if (!own.ok()) return own.status();
    const int fd = *own;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      ::close(fd);
      if (error != EWOULDBLOCK) return FileError("cannot lock", temporary, error);
      return absl::FailedPreconditionError(absl::StrCat(path, ": another job is writing this file now (through ",
                                                        temporary, "): let it finish, or write to another file"));
    }
    struct stat opened, named;
    if (::fstat(fd, &opened) == 0 && ::stat(temporary.c_str(), &named) == 0 && opened.st_dev == named.st_dev &&
        opened.st_ino == named.st_ino) {
      // What a writer killed before its Commit left is overwritten.
      if (::ftruncate(fd, 0) != 0) {
        const int error = errno;
        ::close(fd);
        return FileError("cannot write", temporary, error);
      }
      if (absl::Status moded = TakeModeAndGroupOfReplaced(fd, path, temporary); !moded.ok()) {
        ::close(fd);
        return moded;
      }
      return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, temporary, fd));
    }
    ::close(fd);
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ < 0) return;
  // Removed before it is closed: CreateAlone's lock is held until the name is gone.
  ::unlink(temporary_.c_str());
  ::close(fd_);
}

absl::Status AtomicFileWriter::Write(absl::string_view bytes) {
  size_ += static_cast<int64_t>(bytes.size());
  return WriteAllBytes(fd_, bytes, temporary_);
}

absl::Status AtomicFileWriter::Copy(int from_fd, const std::string& from, int64_t offset, int64_t length) {
  size_ += length;
  return CopyFileBytes(from_fd, from, offset, length, fd_, temporary_);
}

absl::Status AtomicFileWriter::Commit() {
  const int fd = std::exchange(fd_, -1);
  // Without the sync a crash of the machine can leave the renamed file empty (ext4 and XFS order the rename
  // before the data otherwise). Closed after the rename: CreateAlone's lock covers the temporary until then.
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::unlink(temporary_.c_str());
    ::close(fd);
    return FileError("cannot write", temporary_, error);
  }
  if (std::rename(temporary_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    ::unlink(temporary_.c_str());
    ::close(fd);
    return FileError("cannot rename over", path_, error);
  }
  // Synced and renamed: the file is in place, whatever close says.
  ::close(fd);
  return absl::OkStatus();
}

namespace {

// Writes `bytes` into what `path` names as it is: a FIFO or a device (`--html /dev/stdout`, a pipe a viewer
// reads) takes bytes as they come and cannot be renamed over; a shell's redirection writes there the same way.
absl::Status WriteToStream(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return FileError("cannot write", path, errno);
  absl::Status written = WriteAllBytes(fd, bytes, path);
  if (::close(fd) != 0 && written.ok() && errno != EINTR) written = FileError("cannot write", path, errno);
  return written;
}

}  // namespace

std::string RealFilePath(const std::string& given) {
  std::string path = given;
  for (int hops = 0; hops < 40; ++hops) {  // as the kernel's limit of links in a path (ELOOP)
    struct stat info;
    if (::lstat(path.c_str(), &info) != 0 || !S_ISLNK(info.st_mode)) break;
    std::string target(PATH_MAX, '\0');
    const ssize_t size = ::readlink(path.c_str(), target.data(), target.size());
    if (size < 0) break;
    target.resize(static_cast<size_t>(size));
    const size_t slash = path.find_last_of('/');
    path = target.starts_with('/') || slash == std::string::npos ? target : path.substr(0, slash + 1) + target;
  }
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  char resolved[PATH_MAX];
  if (::realpath(folder.c_str(), resolved) == nullptr) return path;
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  return std::string(resolved) == "/" ? "/" + name : absl::StrCat(resolved, "/", name);
}

absl::Status WriteAtomically(const std::string& path, const std::string& bytes) {
  if (struct stat target; ::stat(path.c_str(), &target) == 0 && !S_ISREG(target.st_mode) && !S_ISDIR(target.st_mode)) {
    return WriteToStream(path, bytes);
  }
  // A temporary of this writer's own: writers of one path, such as two jobs sharing an --html folder, each
  // rename a whole file instead of writing into, or renaming away, each other's.
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(path);
  if (!out.ok()) return out.status();
  if (absl::Status written = (*out)->Write(bytes); !written.ok()) return written;
  return (*out)->Commit();
}

}  // namespace attribution::client::batch
