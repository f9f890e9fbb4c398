// SPDX-License-Identifier: Apache-2.0
#include "server/thread_stacks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include <thread>

#include "absl/strings/str_cat.h"

namespace attribution::server {
namespace {

size_t StackOfANewThread() {
  size_t bytes = 0;
  std::thread([&] {
    pthread_attr_t attributes;
    if (::pthread_getattr_np(::pthread_self(), &attributes) != 0) return;
    ::pthread_attr_getstacksize(&attributes, &bytes);
    ::pthread_attr_destroy(&attributes);
  }).join();
  return bytes;
}

// Threads started after the raise get the floor (std::thread sets no size of its own, as gRPC's and libgomp's
// threads do not); a floor below the default changes nothing.
TEST(ThreadStacks, ThreadsStartedAfterTheRaiseGetTheFloor) {
  const size_t before = StackOfANewThread();
  ASSERT_GT(before, 0u);
  const ThreadStacks unchanged = RaiseSmallThreadStacks(before / 2);
  EXPECT_EQ(unchanged.thread_bytes, unchanged.was_thread_bytes);
  EXPECT_EQ(StackOfANewThread(), before);
  EXPECT_THAT(unchanged.Describe(), ::testing::Not(::testing::HasSubstr("was")));

  const size_t floor = (before + (size_t{4} << 20)) & ~((size_t{1} << 20) - 1);
  const ThreadStacks raised = RaiseSmallThreadStacks(floor);
  EXPECT_EQ(raised.was_thread_bytes, before);
  EXPECT_EQ(raised.thread_bytes, floor);
  EXPECT_GE(StackOfANewThread(), floor);
  EXPECT_THAT(raised.Describe(), ::testing::HasSubstr(absl::StrCat(floor >> 20, " MiB (glibc's default was ")));
}

}  // namespace
}  // namespace attribution::server
