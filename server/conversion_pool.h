// SPDX-License-Identifier: Apache-2.0
// Converts large requests off gRPC's handler threads. A request of megabytes of valid text (64 component pairs
// of 15 KB) takes seconds of CPU to tokenize; on a handler thread it held one of gRPC's few callback threads,
// and the calls behind it waited for one: two clients sending such requests pushed a concurrent Logprobs from
// p50 7 ms to 5,275 ms while the server used one of its 2 cores (bench/RESULTS.md, round 14).
//
// Its threads run at the server's CPU priority: a thread inherits its creator's nice value, and a job submits
// work and ends calls, which may start threads (gRPC's, the engine's) that would keep a lower one for good.
// Measured, a lower priority gained a concurrent Logprobs 1.5 ms at p50.
//
// Thread-safe.
//
//   ConversionPool pool(/*threads=*/2);
//   pool.Run(rank, [...] { convert the request, submit its work; }, [...] { end the call UNAVAILABLE; });
//   pool.Stop();  // at the end of a drain, before the models go
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace attribution::server {

// Requests whose serialized size is below this convert on the handler thread: a thread hop would cost them
// more than their conversion (tokenizing 64 KiB takes about 20 ms here).
inline constexpr size_t kInlineConversionBytes = size_t{64} << 10;

class ConversionPool {
 public:
  explicit ConversionPool(int threads);
  ~ConversionPool();  // Stop()
  ConversionPool(const ConversionPool&) = delete;
  ConversionPool& operator=(const ConversionPool&) = delete;

  // Queues `job`, taken by the first free thread: the highest `rank` first (the request's priority: a HIGH
  // request waited behind every LOW one queued before it), in order within a rank; never blocks. `drop` runs
  // instead of it, on the caller's thread, when the pool has stopped (now or before the job's turn). Each ends
  // its call.
  void Run(int rank, std::function<void()> job, std::function<void()> drop);
  // Drops the jobs not begun and waits for those running: what they use (the models, the metrics, gRPC's server)
  // must outlive this call, not the pool. A running job that reads in steps asks stopping() between them.
  void Stop();
  bool stopping() const { return stopping_.load(); }

 private:
  void Work();

  std::mutex mu_;
  std::condition_variable changed_;
  using Job = std::pair<std::function<void()>, std::function<void()>>;  // (job, drop)
  std::map<int, std::deque<Job>, std::greater<int>> jobs_;              // guarded by mu_: by rank, highest first
  std::atomic<bool> stopping_ = false;  // set under mu_, which the threads wait with; stopping() reads it lock-free
  std::vector<std::thread> threads_;
};

}  // namespace attribution::server
