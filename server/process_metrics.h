// SPDX-License-Identifier: Apache-2.0
// The process_* metrics other Prometheus clients export (CPU seconds, resident and virtual memory, open and
// allowed file descriptors, threads, start time), read from /proc at each scrape: dashboards and alerts
// written for any service (memory against the pod limit, descriptors against the limit gRPC's listener dies
// at, restarts by start time) work on this one unchanged.
#pragma once
#include <prometheus/metric_family.h>

#include <vector>

namespace attribution::server {

// Empty where /proc cannot be read (not Linux).
std::vector<prometheus::MetricFamily> ProcessMetricFamilies();

}  // namespace attribution::server
