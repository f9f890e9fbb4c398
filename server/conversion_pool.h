// SPDX-License-Identifier: Apache-2.0
// Converts large requests off gRPC's handler threads. A request of megabytes of valid text (64 component pairs
// of 15 KB) takes seconds of CPU to tokenize; on a handler thread it held one of gRPC's few callback threads,
// and calls behind it waited for one: two clients sending such requests pushed a concurrent Logprobs from
// p50 7 ms to 685 ms while the server used 0.85 of 2 cores. The pool's threads run below the server's CPU
// priority (a nice increment), so the engine's executor and the small calls take the cores first.
//
//   ConversionPool pool(/*threads=*/1);
//   pool.Run([...] { convert the request, submit its work; });
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace attribution::server {

// Requests whose serialized size is below this convert on the handler thread: a thread hop would cost them
// more than their conversion (tokenizing 64 KiB takes about 20 ms here).
inline constexpr size_t kInlineConversionBytes = size_t{64} << 10;

class ConversionPool {
 public:
  explicit ConversionPool(int threads, int nice_increment = 10);
  ~ConversionPool();  // runs the jobs already queued, then joins
  ConversionPool(const ConversionPool&) = delete;
  ConversionPool& operator=(const ConversionPool&) = delete;

  // Queued in order; never blocks. A job ends its call whatever happens (it owns the call until then).
  void Run(std::function<void()> job);

 private:
  void Work(int nice_increment);

  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace attribution::server
