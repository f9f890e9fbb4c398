// SPDX-License-Identifier: Apache-2.0
#include "server/log_line.h"

#include <cstdio>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attribution::server {

const char* LogSeverity(const nlohmann::json& line) {
  if (const auto code = line.find("code"); code != line.end() && code->is_string()) {
    const std::string& name = code->get_ref<const std::string&>();
    if (name == "INTERNAL" || name == "UNKNOWN" || name == "DATA_LOSS") return "ERROR";
    if (name == "RESOURCE_EXHAUSTED" || name == "DEADLINE_EXCEEDED" || name == "UNAVAILABLE") return "WARNING";
    return "INFO";
  }
  const std::string event = line.value("event", "");
  if (event == "startup_failed" || event == "internal_error") return "ERROR";
  if (event == "model_warning") return "WARNING";
  return "INFO";
}

void WriteLogLine(nlohmann::json line) {
  line["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  if (!line.contains("severity")) line["severity"] = LogSeverity(line);
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);  // one call: lines from many threads do not interleave
}

bool LogLineBudget::Take(absl::Time now, int64_t& left_out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now - second_began_ >= absl::Seconds(1)) {
    second_began_ = now;
    taken_ = 0;
  }
  if (taken_ >= lines_per_second_) {
    ++refused_;
    return false;
  }
  ++taken_;
  left_out = std::exchange(refused_, 0);
  return true;
}

}  // namespace attribution::server
