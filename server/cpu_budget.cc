// SPDX-License-Identifier: Apache-2.0
#include "server/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/common/files.h"

namespace attribution::server {
namespace {

// Plain strings: the PyPI libtorch.so exports broken copies of std::filesystem's functions (temp_dir.h).
std::optional<std::string> FirstLine(const std::string& path) {
  absl::StatusOr<std::string> text = engine::ReadFile(path);
  if (!text.ok() || text->empty()) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(absl::string_view(*text).substr(0, text->find('\n'))));
}

// cgroup v2: "max 100000" (none) or "150000 100000".
std::optional<double> QuotaOfV2(const std::string& dir) {
  const std::optional<std::string> line = FirstLine(dir + "/cpu.max");
  if (!line) return std::nullopt;
  const std::vector<std::string> parts = absl::StrSplit(*line, ' ', absl::SkipEmpty());
  double quota = 0, period = 0;
  if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &quota) || !absl::SimpleAtod(parts[1], &period) || quota <= 0 ||
      period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

// cgroup v1: cpu.cfs_quota_us is -1 without a quota.
std::optional<double> QuotaOfV1(const std::string& dir) {
  const std::optional<std::string> quota_text = FirstLine(dir + "/cpu.cfs_quota_us");
  const std::optional<std::string> period_text = FirstLine(dir + "/cpu.cfs_period_us");
  double quota = 0, period = 0;
  if (!quota_text || !period_text || !absl::SimpleAtod(*quota_text, &quota) ||
      !absl::SimpleAtod(*period_text, &period) || quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

// The tightest quota of `path` and its parents under `mount`, and the mount itself: without a cgroup
// namespace a container's /proc/self/cgroup names the host's path while the mount shows its own cgroup.
void TightenAlong(const std::string& mount, const std::string& path, bool v2, CpuBudget& budget) {
  std::string relative(absl::StripSuffix(absl::StripPrefix(path, "/"), "/"));
  while (true) {
    const std::string dir = relative.empty() ? mount : absl::StrCat(mount, "/", relative);
    const std::optional<double> quota = v2 ? QuotaOfV2(dir) : QuotaOfV1(dir);
    if (quota && (!budget.quota_cpus || *quota < *budget.quota_cpus)) {
      budget.quota_cpus = quota;
      budget.quota_file = absl::StrCat(dir, v2 ? "/cpu.max" : "/cpu.cfs_quota_us");
    }
    if (relative.empty()) return;
    const size_t slash = relative.rfind('/');
    relative.resize(slash == std::string::npos ? 0 : slash);
  }
}

}  // namespace

int CpuBudget::Usable() const {
  if (!quota_cpus) return affinity_cpus;
  return std::clamp(static_cast<int>(std::ceil(std::min(*quota_cpus, static_cast<double>(affinity_cpus)) - 1e-9)), 1,
                    affinity_cpus);
}

std::string CpuBudget::Describe() const {
  std::string text = absl::StrCat(affinity_cpus, affinity_cpus == 1 ? " CPU" : " CPUs", " in the affinity mask");
  if (quota_cpus) absl::StrAppend(&text, absl::StrFormat(", a cgroup CPU quota of %.2f (%s)", *quota_cpus, quota_file));
  return text;
}

CpuBudget ReadCpuBudget(const std::string& proc_self_cgroup, const std::string& cgroup_root, int affinity_cpus) {
  CpuBudget budget;
  budget.affinity_cpus = std::max(1, affinity_cpus);
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n', absl::SkipEmpty())) {
    // "hierarchy-id:controllers:path"; cgroup v2 is "0::path".
    const std::vector<absl::string_view> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    const std::string path(fields[2]);
    if (fields[0] == "0" && fields[1].empty()) {
      TightenAlong(cgroup_root, path, /*v2=*/true, budget);
      continue;
    }
    const std::vector<absl::string_view> controllers = absl::StrSplit(fields[1], ',');
    if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
    TightenAlong(absl::StrCat(cgroup_root, "/", fields[1]), path, /*v2=*/false, budget);
    if (fields[1] != "cpu") TightenAlong(cgroup_root + "/cpu", path, /*v2=*/false, budget);
  }
  return budget;
}

CpuBudget ReadCpuBudget() {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  // A mask that does not fit cpu_set_t (over 1024 CPUs) fails: then every CPU counts.
  const int affinity = sched_getaffinity(0, sizeof(mask), &mask) == 0
                           ? CPU_COUNT(&mask)
                           : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return ReadCpuBudget(engine::ReadFile("/proc/self/cgroup").value_or(""), "/sys/fs/cgroup", affinity);
}

}  // namespace attribution::server
