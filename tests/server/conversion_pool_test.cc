// SPDX-License-Identifier: Apache-2.0
// The pool that converts large requests off gRPC's handler threads: jobs are taken in order by the first free
// thread, and Stop drops the jobs not begun (their calls end) and waits for the running ones.
#include "server/conversion_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"

namespace attribution::server {
namespace {

void NeverDropped() { ADD_FAILURE() << "a job was dropped"; }

TEST(ConversionPool, OneThreadTakesJobsInOrder) {
  std::vector<int> order;
  absl::Notification release, last_ran;
  ConversionPool pool(/*threads=*/1);
  pool.Run(/*rank=*/0, [&] { release.WaitForNotification(); }, NeverDropped);
  for (int i = 0; i < 5; ++i) {
    pool.Run(
        /*rank=*/0,
        [&order, &last_ran, i] {
          order.push_back(i);
          if (i == 4) last_ran.Notify();
        },
        NeverDropped);
  }
  release.Notify();
  last_ran.WaitForNotification();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

// A HIGH request waited for every LOW one queued before it (4.5 s behind eight 2 MB requests).
TEST(ConversionPool, AHigherRankGoesFirstAndOrderHoldsWithinARank) {
  std::vector<int> order;
  absl::Notification release, last_ran;
  ConversionPool pool(/*threads=*/1);
  pool.Run(/*rank=*/0, [&] { release.WaitForNotification(); }, NeverDropped);
  for (const auto& [rank, id] : std::vector<std::pair<int, int>>{{0, 1}, {1, 2}, {0, 3}, {2, 4}, {1, 5}}) {
    pool.Run(
        rank, [&order, id = id] { order.push_back(id); }, NeverDropped);
  }
  pool.Run(/*rank=*/0, [&] { last_ran.Notify(); }, NeverDropped);
  release.Notify();
  last_ran.WaitForNotification();
  EXPECT_EQ(order, (std::vector<int>{4, 2, 5, 1, 3}));
}

TEST(ConversionPool, AJobWaitsOnlyWhileEveryThreadIsBusy) {
  absl::Notification release, second_ran;
  ConversionPool pool(/*threads=*/2);
  pool.Run(/*rank=*/0, [&] { release.WaitForNotification(); }, NeverDropped);
  pool.Run(/*rank=*/0, [&] { second_ran.Notify(); }, NeverDropped);
  // Hangs (and the test times out) if one long conversion held the other thread's job.
  second_ran.WaitForNotification();
  release.Notify();
}

// At the end of a drain: the calls waiting end at once, the conversion running finishes before the models go;
// a job that comes later is dropped as it comes.
TEST(ConversionPool, StopDropsTheJobsNotBegunAndWaitsForTheRunningOne) {
  absl::Notification running, release;
  std::atomic<bool> finished = false, saw_stopping = false;
  std::atomic<int> dropped = 0, ran_after = 0;
  ConversionPool pool(/*threads=*/1);
  pool.Run(
      /*rank=*/0,
      [&] {
        running.Notify();
        release.WaitForNotification();
        saw_stopping = pool.stopping();  // a job reading in steps stops at the next one
        finished = true;
      },
      NeverDropped);
  for (int i = 0; i < 3; ++i) pool.Run(/*rank=*/0, [&] { ++ran_after; }, [&] { ++dropped; });
  running.WaitForNotification();
  std::thread stopper([&] { pool.Stop(); });
  while (dropped < 3) std::this_thread::yield();
  EXPECT_FALSE(finished);
  release.Notify();
  stopper.join();
  EXPECT_TRUE(finished);  // Stop returned after the running job
  EXPECT_TRUE(saw_stopping);
  EXPECT_EQ(ran_after, 0);
  pool.Run(/*rank=*/0, [&] { ++ran_after; }, [&] { ++dropped; });
  EXPECT_EQ(dropped, 4);
  EXPECT_EQ(ran_after, 0);
}

}  // namespace
}  // namespace attribution::server
