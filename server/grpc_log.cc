// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_log.h"

#include <grpc/support/log.h>

#include <algorithm>
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

// Where "bearer" starts in `text` as a byte dump writes it, two hex digits and a space a byte, in any case
// ("42 65 61 72 65 72"); npos when it is not there.
size_t BearerInHex(const std::string& lower) {
  static constexpr char kBearer[] = "bearer";
  for (size_t at = 0; at + 17 <= lower.size(); ++at) {
    bool found = true;
    for (size_t k = 0; k < 6 && found; ++k) {
      int byte = 0;
      found = absl::SimpleHexAtoi(absl::string_view(lower).substr(at + 3 * k, 2), &byte) &&
              absl::ascii_tolower(static_cast<unsigned char>(byte)) == kBearer[k] &&
              (k == 5 || lower[at + 3 * k + 2] == ' ');
    }
    if (found) return at;
  }
  return std::string::npos;
}

// The line up to the first "bearer", as text or as hex, in any case, and <redacted> for the rest: GRPC_TRACE wrote
// every client's bearer token into the log (the HPACK parser's "authorization: Bearer s3cret", the tcp trace's byte
// dumps), 4 lines a call, accepted and refused tokens alike. The server takes the scheme in any case, spaces around
// the token and any printable character in it, so nothing after the scheme is kept.
std::string WithoutBearerTokens(const std::string& text) {
  const std::string lower = absl::AsciiStrToLower(text);
  const size_t cut = std::min(lower.find("bearer"), BearerInHex(lower));
  if (cut == std::string::npos) return text;
  return text.substr(0, cut) + "<redacted: a bearer token and the rest of the line>";
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
