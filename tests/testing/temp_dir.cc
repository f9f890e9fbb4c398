// SPDX-License-Identifier: Apache-2.0
#include "tests/testing/temp_dir.h"

#include <dirent.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace attribution::test_support {

TempDir::TempDir() {
  std::string pattern = "/tmp/attribution_test_XXXXXX";
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr) << "mkdtemp failed";
  path_ = pattern;
}

TempDir::~TempDir() {
  nftw(
      path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

void CopyDirectoryFiles(const std::string& from, const std::string& to) {
  ASSERT_EQ(mkdir(to.c_str(), 0755), 0) << to;
  DIR* dir = opendir(from.c_str());
  ASSERT_NE(dir, nullptr) << from;
  while (dirent* entry = readdir(dir)) {
    const std::string source = from + "/" + entry->d_name;
    struct stat st {};
    if (stat(source.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    std::ifstream in(source, std::ios::binary);
    std::ofstream out(to + "/" + entry->d_name, std::ios::binary);
    out << in.rdbuf();
  }
  closedir(dir);
}

}  // namespace attribution::test_support
