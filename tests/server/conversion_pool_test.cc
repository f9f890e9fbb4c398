// SPDX-License-Identifier: Apache-2.0
// The pool that converts large requests off gRPC's handler threads: its threads run below the server's CPU
// priority, take jobs in order, and run what is queued before the pool goes away.
#include "server/conversion_pool.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "absl/synchronization/notification.h"

namespace attribution::server {
namespace {

int NiceOfThisThread() { return getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid))); }

TEST(ConversionPool, ItsThreadsRunBelowTheServersPriority) {
  const int server_nice = NiceOfThisThread();
  int job_nice = server_nice;
  absl::Notification done;
  ConversionPool pool(/*threads=*/1, /*nice_increment=*/5);
  pool.Run([&] {
    job_nice = NiceOfThisThread();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(job_nice, std::min(server_nice + 5, 19));
  EXPECT_EQ(NiceOfThisThread(), server_nice);  // the caller's own priority is left alone
}

TEST(ConversionPool, OneThreadTakesJobsInOrderAndRunsTheQueuedOnesBeforeItGoes) {
  std::vector<int> order;
  {
    absl::Notification release;
    ConversionPool pool(/*threads=*/1);
    pool.Run([&] { release.WaitForNotification(); });
    for (int i = 0; i < 5; ++i) pool.Run([&order, i] { order.push_back(i); });
    release.Notify();
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(ConversionPool, AJobWaitsOnlyWhileEveryThreadIsBusy) {
  absl::Notification release, second_ran;
  ConversionPool pool(/*threads=*/2);
  pool.Run([&] { release.WaitForNotification(); });
  pool.Run([&] { second_ran.Notify(); });
  // Hangs (and the test times out) if one long conversion held the other thread's job.
  second_ran.WaitForNotification();
  release.Notify();
}

}  // namespace
}  // namespace attribution::server
