// SPDX-License-Identifier: Apache-2.0
// Thread stacks large enough for MKL and gRPC whatever `ulimit -s` says. glibc gives every thread started without
// a size of its own (std::thread, gRPC's threads, libgomp's intra-op team) a stack of RLIMIT_STACK's soft limit: at
// 256 KiB the server answered health and integrated gradients, then died of SIGSEGV in MKL on the next call; at
// 128 KiB on the first connection; the log said nothing (the overflow overran the crash handler too).
//
//   const ThreadStacks stacks = RaiseSmallThreadStacks();  // first thing in main(), before any thread starts
//   ... stacks.Describe() on the listening line ...
#pragma once
#include <cstddef>
#include <string>

namespace attribution::server {

// The stack threads get (main's and every other's), as MKL's deepest kernels need. 8 MiB is the common
// `ulimit -s` default, so servers started as usual see no change.
inline constexpr size_t kThreadStackFloorBytes = size_t{8} << 20;

struct ThreadStacks {
  size_t thread_bytes = 0;      // the default of threads started from now on
  size_t was_thread_bytes = 0;  // before the raise; equal when none was needed
  size_t main_limit_bytes = 0;  // RLIMIT_STACK's soft limit in force (SIZE_MAX: unlimited); below the floor
                                // only where the hard limit is

  // "8 MiB", or "8 MiB (glibc's default was 224 KiB)" where it was raised, for the log.
  std::string Describe() const;
};

// Raises glibc's default stack for threads started from now on to `floor_bytes` where it is smaller, and the soft
// RLIMIT_STACK (which bounds the main thread's growth) toward it as far as the hard limit admits. Only before any
// other thread starts: threads already running keep their stacks.
ThreadStacks RaiseSmallThreadStacks(size_t floor_bytes = kThreadStackFloorBytes);

}  // namespace attribution::server
