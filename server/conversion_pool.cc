// SPDX-License-Identifier: Apache-2.0
#include "server/conversion_pool.h"

namespace attribution::server {

ConversionPool::ConversionPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

ConversionPool::~ConversionPool() { Stop(); }

void ConversionPool::Run(int rank, std::function<void()> job, std::function<void()> drop) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      jobs_[rank].emplace_back(std::move(job), std::move(drop));
      changed_.notify_one();
      return;
    }
  }
  drop();
}

void ConversionPool::Stop() {
  std::map<int, std::deque<Job>, std::greater<int>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(jobs_);
  }
  changed_.notify_all();
  // Outside the lock: ending a call may run gRPC's reactions here.
  for (auto& [rank, jobs] : dropped) {
    for (auto& [job, drop] : jobs) drop();
  }
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
      std::deque<Job>& first = jobs_.begin()->second;
      job = std::move(first.front().first);
      first.pop_front();
      if (first.empty()) jobs_.erase(jobs_.begin());
    }
    job();
  }
}

}  // namespace attribution::server
