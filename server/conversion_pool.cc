// SPDX-License-Identifier: Apache-2.0
#include "server/conversion_pool.h"

namespace attribution::server {

ConversionPool::ConversionPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

ConversionPool::~ConversionPool() { Stop(); }

void ConversionPool::Run(std::function<void()> job, std::function<void()> drop) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      jobs_.emplace_back(std::move(job), std::move(drop));
      changed_.notify_one();
      return;
    }
  }
  drop();
}

void ConversionPool::Stop() {
  std::deque<std::pair<std::function<void()>, std::function<void()>>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(jobs_);
  }
  changed_.notify_all();
  for (auto& [job, drop] : dropped) drop();  // outside the lock: ending a call may run gRPC's reactions here
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void ConversionPool::Work() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      changed_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front().first);
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace attribution::server
