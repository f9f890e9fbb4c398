// SPDX-License-Identifier: Apache-2.0
#include "server/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "engine/common/files.h"

namespace attribution::server {
namespace {

std::string ReadWhole(const char* path) { return engine::ReadFile(path).value_or(""); }

prometheus::MetricFamily OneValue(const char* name, const char* help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily family{.name = name, .help = help, .type = type};
  prometheus::ClientMetric& metric = family.metric.emplace_back();
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return family;
}

// Seconds since the epoch at which the machine booted (/proc/stat's btime).
std::optional<double> BootTime() {
  for (absl::string_view line : absl::StrSplit(ReadWhole("/proc/stat"), '\n')) {
    double seconds = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtod(line, &seconds)) return seconds;
  }
  return std::nullopt;
}

int OpenDescriptors() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count - 1;  // the directory's own descriptor
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessMetricFamilies() {
  // /proc/self/stat: "pid (comm) state ..." where comm may hold spaces and parentheses: fields count from the last ')'.
  const std::string stat = ReadWhole("/proc/self/stat");
  const size_t comm_end = stat.rfind(')');
  if (comm_end == std::string::npos) return {};
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(comm_end + 2), ' ', absl::SkipEmpty());
  // proc(5) numbers from pid = 1: state is field 3, i.e. fields[0]; field N is fields[N - 3].
  auto field = [&](int n) {
    double value = 0;
    return static_cast<size_t>(n - 3) < fields.size() && absl::SimpleAtod(fields[n - 3], &value) ? value : 0.0;
  };
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_bytes = static_cast<double>(::sysconf(_SC_PAGESIZE));
  std::vector<prometheus::MetricFamily> families;
  using prometheus::MetricType;
  families.push_back(OneValue("process_cpu_seconds_total", "User and system CPU time spent, seconds",
                              MetricType::Counter, (field(14) + field(15)) / ticks));
  families.push_back(
      OneValue("process_resident_memory_bytes", "Resident memory", MetricType::Gauge, field(24) * page_bytes));
  families.push_back(OneValue("process_virtual_memory_bytes", "Virtual memory", MetricType::Gauge, field(23)));
  families.push_back(OneValue("process_threads", "Threads", MetricType::Gauge, field(20)));
  families.push_back(OneValue("process_open_fds", "Open file descriptors", MetricType::Gauge, OpenDescriptors()));
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    families.push_back(OneValue("process_max_fds", "The open file descriptors limit (soft)", MetricType::Gauge,
                                static_cast<double>(files.rlim_cur)));
  }
  if (const std::optional<double> boot = BootTime()) {
    families.push_back(OneValue("process_start_time_seconds", "Start time since the epoch, seconds", MetricType::Gauge,
                                *boot + field(22) / ticks));
  }
  return families;
}

}  // namespace attribution::server
