// SPDX-License-Identifier: Apache-2.0
// Memory goes back after a burst: three large integrated-gradients requests at once take the server's
// resident memory far above its idle size; once they are answered and the engine is idle, that
// growth is returned to the system (before the engine trimmed the heap, 57% of it stayed: 913 MB idle
// from 496 MB after warm-up and a 1.23 GB peak).
#include <gtest/gtest.h>

#include <thread>

#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using ::attribution::test_support::ProcessStatusMegabytes;

TEST(Memory, AnIdleServerReturnsWhatABurstTook) {
  auto server = test_support::ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  // A generous deadline: the test measures memory, and beside other tests on 2 cores the burst can
  // take minutes.
  auto client =
      std::move(*client::AttributionClient::Connect({.target = (*server)->address(), .timeout = absl::Minutes(10)}));
  client::AttributeOptions small{.model = "demo",
                                 .prompt = "warm up the server",
                                 .target = " yes",
                                 .target_tokenization = "separate",
                                 .n_steps = 64};
  // Warm-up as the burst will run: three calls at once, so the server's threads (and their allocator
  // arenas) exist before the baseline is taken.
  std::vector<std::thread> warm_up;
  for (int i = 0; i < 3; ++i) warm_up.emplace_back([&] { EXPECT_THAT(client->Attribute(small), IsOk()); });
  for (std::thread& t : warm_up) t.join();
  const double warm = ProcessStatusMegabytes((*server)->pid(), "VmRSS");

  std::string words;
  for (int i = 0; i < 600; ++i) words += "word ";
  client::AttributeOptions large = small;
  large.prompt = words;
  large.n_steps = 128;
  std::vector<std::thread> burst;
  for (int i = 0; i < 3; ++i) burst.emplace_back([&] { EXPECT_THAT(client->Attribute(large), IsOk()); });
  for (std::thread& t : burst) t.join();
  const double peak = ProcessStatusMegabytes((*server)->pid(), "VmHWM");
  // The engine trims after its queue has been empty for a moment, so the answers arrive first; wait
  // for both bars below (waiting only for the weaker one once stopped between a tensor's unmap and the
  // trim, at 11% above warm-up). Its last trim is 12.6 s into the idle stretch: with three trims in
  // the first 0.6 s, a CI run beside other tests kept 450 MB from 402 MB, freed after the last trim.
  double idle = ProcessStatusMegabytes((*server)->pid(), "VmRSS");
  const auto holds_burst_memory = [&] { return idle - warm > 0.25 * (peak - warm) || idle > 1.10 * warm; };
  for (int i = 0; i < 300 && holds_burst_memory(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling another process's memory
    idle = ProcessStatusMegabytes((*server)->pid(), "VmRSS");
  }
  std::cout << "[ memory   ] after warm-up " << warm << " MB, peak " << peak << " MB, idle after the burst " << idle
            << " MB\n";
  // The burst did take memory (since rows stopped carrying [S, hidden] embeddings and batches stay
  // within max_uncontended_batch_seconds it grows the server by about 80-220 MB, 700 MB before).
  ASSERT_GT(peak - warm, 50);
  // At most a quarter of the burst's growth stays, and idle is within 10% of after warm-up. Measured
  // beside the rest of the suite: 399 MB idle from 395 MB (peak 474 MB); before batches were bounded
  // by max_uncontended_batch_seconds, 432 MB from 392 MB (peak 608 MB).
  EXPECT_LE(idle - warm, 0.25 * (peak - warm));
  EXPECT_LE(idle, 1.10 * warm);
}

}  // namespace
}  // namespace attribution
