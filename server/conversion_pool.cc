// SPDX-License-Identifier: Apache-2.0
#include "server/conversion_pool.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "server/log_line.h"

namespace attribution::server {

ConversionPool::ConversionPool(int threads, int nice_increment) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this, nice_increment] { Work(nice_increment); });
}

ConversionPool::~ConversionPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

void ConversionPool::Run(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
  }
  changed_.notify_one();
}

void ConversionPool::Work(int nice_increment) {
  // On Linux a thread's nice value is its own (setpriority on its thread id); raising it needs no privilege.
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  if (setpriority(PRIO_PROCESS, tid, getpriority(PRIO_PROCESS, tid) + nice_increment) != 0) {
    WriteLogLine({{"event", "conversion_priority_unchanged"},
                  {"severity", "WARNING"},
                  {"detail", "large requests convert at the server's own CPU priority"}});
  }
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace attribution::server
