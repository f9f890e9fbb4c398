// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_log.h"

#include <grpc/support/log.h>

#include <functional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

// `text` with each run of `unit`-sized pieces that `in_token` accepts after `marker` (lower case; matched in any
// case) replaced by `mask`.
std::string RedactAfter(const std::string& text, const std::string& marker, size_t unit,
                        const std::function<bool(absl::string_view)>& in_token, const std::string& mask) {
  const std::string lower = absl::AsciiStrToLower(text);
  std::string out;
  size_t copied = 0;
  for (size_t at = lower.find(marker); at != std::string::npos; at = lower.find(marker, at)) {
    const size_t begin = at + marker.size();
    size_t end = begin;
    while (end + unit <= text.size() && in_token(absl::string_view(text).substr(end, unit))) end += unit;
    out.append(text, copied, begin - copied);
    if (end > begin) out += mask;
    copied = end;
    at = end;
  }
  out.append(text, copied, std::string::npos);
  return out;
}

// Each token after "Bearer " as <redacted>: as text ("authorization: Bearer s3cret", the HPACK parser's trace) and
// as the hex of a byte dump ("42 65 61 72 65 72 20 73 33 ...", the tcp trace's). GRPC_TRACE wrote every client's
// bearer token into the log, 4 lines a call, accepted and refused tokens alike.
std::string WithoutBearerTokens(const std::string& text) {
  const std::string redacted = RedactAfter(
      text, "bearer ", 1, [](absl::string_view c) { return c[0] > ' ' && c[0] != '\'' && c[0] != '"'; }, "<redacted>");
  // Printable bytes other than the space, each as "XX ".
  return RedactAfter(
      redacted, "42 65 61 72 65 72 20 ", 3,
      [](absl::string_view hex) {
        int byte = 0;
        return hex[2] == ' ' && absl::SimpleHexAtoi(hex.substr(0, 2), &byte) && byte > 0x20 && byte < 0x7f;
      },
      "<redacted> ");
}

void WriteGrpcLogLine(gpr_log_func_args* args) {
  const absl::string_view file = args->file != nullptr ? args->file : "";
  const std::string message = WithoutBearerTokens(args->message != nullptr ? args->message : "");
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
