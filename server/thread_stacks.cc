// SPDX-License-Identifier: Apache-2.0
#include "server/thread_stacks.h"

#include <pthread.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace attribution::server {
namespace {

std::string Bytes(size_t bytes) {
  if (bytes == SIZE_MAX) return "unlimited";
  if (bytes % (size_t{1} << 20) == 0) return absl::StrCat(bytes >> 20, " MiB");
  return absl::StrCat(bytes >> 10, " KiB");
}

size_t AsSize(rlim_t limit) { return limit == RLIM_INFINITY ? SIZE_MAX : static_cast<size_t>(limit); }

size_t DefaultThreadStackBytes() {
  pthread_attr_t attributes;
  size_t bytes = 0;
  if (::pthread_getattr_default_np(&attributes) != 0) return 0;
  ::pthread_attr_getstacksize(&attributes, &bytes);
  ::pthread_attr_destroy(&attributes);
  return bytes;
}

}  // namespace

std::string ThreadStacks::Describe() const {
  std::string text = Bytes(thread_bytes);
  // glibc's default comes from RLIMIT_STACK, or is 2 MiB (x86-64) where that is unlimited.
  if (was_thread_bytes != thread_bytes) absl::StrAppend(&text, " (glibc's default was ", Bytes(was_thread_bytes), ")");
  if (main_limit_bytes < thread_bytes) {
    absl::StrAppend(&text, "; the main thread's ", Bytes(main_limit_bytes), " (RLIMIT_STACK's hard limit)");
  }
  return text;
}

ThreadStacks RaiseSmallThreadStacks(size_t floor_bytes) {
  ThreadStacks stacks;
  stacks.was_thread_bytes = stacks.thread_bytes = DefaultThreadStackBytes();
  if (stacks.thread_bytes < floor_bytes) {
    pthread_attr_t attributes;
    if (::pthread_attr_init(&attributes) == 0) {
      if (::pthread_attr_setstacksize(&attributes, floor_bytes) == 0 &&
          ::pthread_setattr_default_np(&attributes) == 0) {
        stacks.thread_bytes = DefaultThreadStackBytes();
      }
      ::pthread_attr_destroy(&attributes);
    }
  }
  rlimit limit{};
  if (::getrlimit(RLIMIT_STACK, &limit) == 0) {
    if (AsSize(limit.rlim_cur) < floor_bytes) {
      rlimit raised = limit;
      raised.rlim_cur = std::min<rlim_t>(floor_bytes, limit.rlim_max);
      if (::setrlimit(RLIMIT_STACK, &raised) == 0) limit = raised;
    }
    stacks.main_limit_bytes = AsSize(limit.rlim_cur);
  }
  return stacks;
}

}  // namespace attribution::server
