// SPDX-License-Identifier: Apache-2.0
// Whether this process sees a CUDA device; tests labelled gpu skip without one.
#pragma once

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

namespace attribution::test_support {

inline bool HasCudaDevice() { return at::globalContext().hasCUDA() && at::detail::getCUDAHooks().deviceCount() > 0; }

}  // namespace attribution::test_support
