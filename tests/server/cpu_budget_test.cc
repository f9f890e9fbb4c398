// SPDX-License-Identifier: Apache-2.0
// The CPU budget read from cgroup trees laid out as the kernel mounts them (v1, v2, a container's view), in a
// scratch directory.
#include "server/cpu_budget.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <string>

#include "absl/strings/str_split.h"
#include "tests/testing/temp_dir.h"

namespace attribution::server {
namespace {

using test_support::TempDir;

// Writes `text` to `root`/`path`, making its directories.
void Write(const TempDir& root, const std::string& path, const std::string& text) {
  std::string dir = root.path();
  const std::vector<std::string> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    dir += "/" + parts[i];
    ::mkdir(dir.c_str(), 0755);
  }
  std::ofstream(root.File(path)) << text;
}

TEST(CpuBudget, CgroupV2QuotaIsRoundedUpAndCappedByTheAffinityMask) {
  TempDir root;
  Write(root, "pod/server/cpu.max", "150000 100000\n");
  CpuBudget budget = ReadCpuBudget("0::/pod/server\n", root.path(), 8);
  ASSERT_TRUE(budget.quota_cpus.has_value());
  EXPECT_DOUBLE_EQ(*budget.quota_cpus, 1.5);
  EXPECT_EQ(budget.Usable(), 2);
  EXPECT_EQ(budget.quota_file, root.File("pod/server/cpu.max"));
  EXPECT_EQ(ReadCpuBudget("0::/pod/server\n", root.path(), 1).Usable(), 1);
}

TEST(CpuBudget, AQuotaBelowOneCpuStillRunsOneThread) {
  TempDir root;
  Write(root, "cpu.max", "20000 100000\n");
  EXPECT_EQ(ReadCpuBudget("0::/\n", root.path(), 4).Usable(), 1);
}

TEST(CpuBudget, AParentsTighterQuotaBinds) {
  TempDir root;
  Write(root, "kubepods/cpu.max", "100000 100000\n");
  Write(root, "kubepods/pod1/cpu.max", "max 100000\n");
  Write(root, "kubepods/pod1/c1/cpu.max", "300000 100000\n");
  const CpuBudget budget = ReadCpuBudget("0::/kubepods/pod1/c1\n", root.path(), 16);
  EXPECT_EQ(budget.Usable(), 1);
  EXPECT_EQ(budget.quota_file, root.File("kubepods/cpu.max"));
}

TEST(CpuBudget, NoQuotaLeavesTheAffinityMask) {
  TempDir root;
  Write(root, "cpu.max", "max 100000\n");
  Write(root, "cpu/cpu.cfs_quota_us", "-1\n");
  Write(root, "cpu/cpu.cfs_period_us", "100000\n");
  const CpuBudget budget = ReadCpuBudget("0::/\n4:cpu:/\n", root.path(), 6);
  EXPECT_FALSE(budget.quota_cpus.has_value());
  EXPECT_EQ(budget.Usable(), 6);
  EXPECT_EQ(budget.Describe(), "6 CPUs in the affinity mask");
}

TEST(CpuBudget, CgroupV1CombinedControllersAndAContainersOwnCgroupAtTheMount) {
  TempDir root;
  // Without a cgroup namespace the container sees the host's path, but its cgroup is mounted at the root.
  Write(root, "cpu,cpuacct/cpu.cfs_quota_us", "250000\n");
  Write(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  const CpuBudget budget = ReadCpuBudget("5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", root.path(), 64);
  ASSERT_TRUE(budget.quota_cpus.has_value());
  EXPECT_DOUBLE_EQ(*budget.quota_cpus, 2.5);
  EXPECT_EQ(budget.Usable(), 3);
}

TEST(CpuBudget, UnreadableOrMalformedFilesMeanNoQuota) {
  TempDir root;
  Write(root, "a/cpu.max", "lots\n");
  Write(root, "b/cpu.max", "0 100000\n");
  Write(root, "cpu/c/cpu.cfs_quota_us", "50000\n");  // no period file
  EXPECT_FALSE(ReadCpuBudget("0::/a\n", root.path(), 2).quota_cpus.has_value());
  EXPECT_FALSE(ReadCpuBudget("0::/b\n", root.path(), 2).quota_cpus.has_value());
  EXPECT_FALSE(ReadCpuBudget("2:cpu:/c\n", root.path(), 2).quota_cpus.has_value());
  EXPECT_FALSE(ReadCpuBudget("garbage\n", root.path(), 2).quota_cpus.has_value());
  EXPECT_EQ(ReadCpuBudget("", root.path(), 0).Usable(), 1);
  // A quota past any int is the mask.
  Write(root, "huge/cpu.max", "100000000000000000000 1\n");
  EXPECT_EQ(ReadCpuBudget("0::/huge\n", root.path(), 3).Usable(), 3);
}

}  // namespace
}  // namespace attribution::server
