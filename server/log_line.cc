// SPDX-License-Identifier: Apache-2.0
#include "server/log_line.h"

#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attribution::server {

void WriteLogLine(nlohmann::json line) {
  line["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);  // one call: lines from many threads do not interleave
}

}  // namespace attribution::server
