// SPDX-License-Identifier: Apache-2.0
// gRPC's own log lines, written as the server's are (one JSON object per line, event "grpc"), and
// watched for the one that says its listener gave up.
#pragma once

namespace attribution::server {

// From now on gRPC logs through WriteLogLine. Its listener (gRPC 1.51) stops accepting connections for
// good after accept() fails for another reason than a retry (EMFILE: out of file descriptors), and says
// so only in its log: that line calls Lifecycle::Fail, so that the server drains and exits 1 to be
// restarted instead of living on with a dead port.
void RouteGrpcLogs();

}  // namespace attribution::server
