// SPDX-License-Identifier: Apache-2.0
// The CPUs the server may keep busy: its affinity mask, lowered to its cgroup's CPU quota. A pod's
// `limits.cpu` is a quota, not a mask: LibTorch sizes its intra-op pool from the node's cores, and threads
// past the quota spend it in spin waits and are then stopped for the rest of each period (a 1-CPU quota on
// 2 cores: 149-203 throttled periods in 20 s of integrated gradients against 10-19 with one thread, and 7-10%
// fewer answers).
//
//   CpuBudget budget = ReadCpuBudget();
//   if (budget.quota_cpus) Log(..., budget.Describe());
#pragma once
#include <optional>
#include <string>

namespace attribution::server {

struct CpuBudget {
  int affinity_cpus = 1;
  std::optional<double> quota_cpus;  // quota / period of the tightest cgroup on the way to the root; none: unlimited
  std::string quota_file;            // where quota_cpus was read

  // The quota rounded up, within the mask (at least 1), as the JVM and Go size their pools to a quota: a 1.5-CPU
  // quota keeps 2 threads busy three quarters of the time.
  int Usable() const;
  std::string Describe() const;
};

// `proc_self_cgroup` is /proc/self/cgroup's text; `cgroup_root` where the hierarchies are mounted. Reads cgroup
// v2's cpu.max and v1's cpu.cfs_quota_us / cpu.cfs_period_us of the process's cgroup and each parent that is
// visible (a container sees its own cgroup at the mount's root). Unreadable files mean no quota.
CpuBudget ReadCpuBudget(const std::string& proc_self_cgroup, const std::string& cgroup_root, int affinity_cpus);
// The running process's.
CpuBudget ReadCpuBudget();

}  // namespace attribution::server
