// SPDX-License-Identifier: Apache-2.0
// A scratch directory removed with everything in it at scope exit.
//
// Written with POSIX calls on purpose: the PyPI libtorch.so exports its own, broken copies of
// std::filesystem functions (remove_all crashes through a null pointer when interposed), so no
// binary that links LibTorch may call std::filesystem.
#pragma once

#include <string>

namespace attribution::test_support {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Copies the regular files of directory `from` into the new directory `to` (not recursive).
void CopyDirectoryFiles(const std::string& from, const std::string& to);

}  // namespace attribution::test_support
