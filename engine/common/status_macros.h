// SPDX-License-Identifier: Apache-2.0
// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian's abseil (20220623) ships neither, so we keep these few
// lines here. Usage:
//   RETURN_IF_ERROR(file.Validate());
//   ASSIGN_OR_RETURN(auto model, CausalLM::Load(dir, options));
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ATTR_STATUS_CONCAT_INNER(a, b) a##b
#define ATTR_STATUS_CONCAT(a, b) ATTR_STATUS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status attr_status_ = (expr);        \
    if (!attr_status_.ok()) return attr_status_; \
  } while (false)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ATTR_ASSIGN_OR_RETURN_IMPL(ATTR_STATUS_CONCAT(attr_statusor_, __LINE__), lhs, rexpr)

#define ATTR_ASSIGN_OR_RETURN_IMPL(statusor, lhs, rexpr)   \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
