// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_log.h"

#include <grpc/support/log.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "engine/common/monotonic_clock.h"
#include "server/lifecycle.h"
#include "server/log_line.h"

namespace attribution::server {
namespace {

// gpr's "D" / "I" / "E" spelled as collectors read severities.
const char* SeverityName(gpr_log_severity severity) {
  switch (severity) {
    case GPR_LOG_SEVERITY_DEBUG:
      return "DEBUG";
    case GPR_LOG_SEVERITY_INFO:
      return "INFO";
    case GPR_LOG_SEVERITY_ERROR:
      return "ERROR";
  }
  return "ERROR";
}

void WriteGrpcLogLine(gpr_log_func_args* args) {
  const absl::string_view file = args->file != nullptr ? args->file : "";
  const std::string message = args->message != nullptr ? args->message : "";
  // gRPC writes a line for each connection whose TLS handshake fails: a client sending junk to the port wrote
  // 38,152 ERROR lines (8.5 MB) in 5 s. Those are rationed, and are the client's mistake (plaintext, an unknown
  // certificate), not the server's; gRPC's other lines (a listener's failure, GRPC_TRACE's) all pass.
  static LogLineBudget handshake_lines(20);
  const bool handshake = absl::StrContains(message, "Handshake failed");
  int64_t left_out = 0;
  if (!handshake || handshake_lines.Take(MonotonicNow(), left_out)) {
    nlohmann::json line = {{"event", "grpc"},
                           {"severity", handshake ? "WARNING" : SeverityName(args->severity)},
                           {"source", absl::StrCat(file.substr(file.find_last_of('/') + 1), ":", args->line)},
                           {"detail", message}};
    if (left_out > 0) line["like_it_not_logged"] = left_out;
    WriteLogLine(std::move(line));
  }
  // tcp_server_posix.cc's on_read(): every accept() error but EAGAIN/ECONNABORTED/EINTR ends the listener.
  if (absl::StartsWith(message, "Failed accept4")) {
    Lifecycle::Fail(absl::StrCat("gRPC stopped accepting connections (", message,
                                 "); its port stays dead until the server restarts"));
  }
}

}  // namespace

void RouteGrpcLogs() { gpr_set_log_function(&WriteGrpcLogLine); }

}  // namespace attribution::server
