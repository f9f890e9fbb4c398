// SPDX-License-Identifier: Apache-2.0
// Latency isolation through the real server: a Logprobs call sent while a long integrated-gradients
// request or feature ablation runs is answered before it, the long request's result does not change, and the engine
// keeps its batches short only while the short call is around (the time-limited batch counter).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "client/attribution_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"

namespace attribution {
namespace {

using ::attribution::test_support::IsOk;
using test_support::MetricValue;
using test_support::ServerProcess;
using test_support::WaitForQueuedRows;

// A 200-token prompt's integrated gradients over `n_steps`: many gradient rows on the demo model.
client::AttributeOptions LongAttribution(int n_steps) {
  return {.model = "demo",
          .prompt = std::string(200, 'a') + " is it?",
          .target = " yes",
          .target_tokenization = "separate",
          .n_steps = n_steps};
}

// An Attribute call in flight, answered on the client's thread.
struct InFlight {
  std::atomic<bool> done{false};
  absl::Notification finished;
  absl::StatusOr<client::Attribution> result = absl::UnknownError("not run");
};

void StartAttribute(client::AttributionClient& client, const client::AttributeOptions& options, InFlight& call) {
  client.AttributeAsync(options, [&call](absl::StatusOr<client::Attribution> r) {
    call.result = std::move(r);
    call.done = true;
    call.finished.Notify();
  });
}

// The same rows in other batches: equal to float32 rounding.
void ExpectSameAttribution(const client::Attribution& loaded, const client::Attribution& alone) {
  ASSERT_EQ(loaded.sequence.size(), alone.sequence.size());
  for (size_t i = 0; i < alone.sequence.size(); ++i) {
    EXPECT_NEAR(loaded.sequence[i], alone.sequence[i], 1e-5 * (1 + std::fabs(alone.sequence[i]))) << i;
  }
}

TEST(LatencyIsolation, ShortCallOvertakesLongAttributionWhichStaysTheSame) {
  // A bound the tiny demo model's batches exceed, so that it shows on a 2-core machine.
  // Alone, the long IG's batches must not be time-limited at all: the uncontended bound is set out of
  // reach (on a loaded CI machine the default 0.25 s bounds batches of this IG too).
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir(), "--max_batch_seconds=0.002",
                                      "--max_uncontended_batch_seconds=1000"});
  ASSERT_THAT(server, IsOk());
  auto client = std::move(*client::AttributionClient::Connect({.target = (*server)->address()}));
  const std::string limited = "attribution_engine_time_limited_batches_total{model=\"demo\"}";
  absl::StatusOr<client::Attribution> alone = client->Attribute(LongAttribution(384));
  ASSERT_THAT(alone, IsOk());
  EXPECT_EQ(MetricValue((*server)->metrics_port(), limited), 0);  // alone, batches fill the token budget

  InFlight loaded;
  StartAttribute(*client, LongAttribution(384), loaded);
  ASSERT_TRUE(WaitForQueuedRows((*server)->metrics_port(), "demo"));
  absl::StatusOr<client::Logprobs> quick =
      client->GetLogprobs({.model = "demo", .prompt = "Is it", .target = " yes", .target_tokenization = "separate"});
  const bool overtook = !loaded.done;
  loaded.finished.WaitForNotification();
  ASSERT_THAT(quick, IsOk());
  ASSERT_THAT(loaded.result, IsOk());
  EXPECT_TRUE(overtook);
  EXPECT_GT(MetricValue((*server)->metrics_port(), limited), 0);
  ExpectSameAttribution(*loaded.result, *alone);
}

// A gradient batch pauses between layers to run a short call's rows: the Logprobs call is answered
// from inside a batch of the long request (the engine's pause counter), and the long request's result
// is the one it gets alone.
TEST(LatencyIsolation, ShortCallsRunInsideTheLongAttributionsBatches) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client = std::move(*client::AttributionClient::Connect({.target = (*server)->address()}));
  const std::string paused = "attribution_engine_batches_inside_pauses_total{model=\"demo\"}";
  absl::StatusOr<client::Attribution> alone = client->Attribute(LongAttribution(512));
  ASSERT_THAT(alone, IsOk());
  EXPECT_EQ(MetricValue((*server)->metrics_port(), paused), 0);

  InFlight loaded;
  StartAttribute(*client, LongAttribution(512), loaded);
  ASSERT_TRUE(WaitForQueuedRows((*server)->metrics_port(), "demo"));
  // A call can arrive in the gap between two batches and run on its own; the next ones then land
  // inside a batch (the device is busy with the long request nearly all the time).
  int calls = 0;
  while (!loaded.done && MetricValue((*server)->metrics_port(), paused) == 0) {
    ASSERT_THAT(client->GetLogprobs({.model = "demo", .prompt = "Is it", .target = " yes"}), IsOk());
    ++calls;
  }
  loaded.finished.WaitForNotification();
  ASSERT_THAT(loaded.result, IsOk());
  EXPECT_GT(MetricValue((*server)->metrics_port(), paused), 0) << calls << " Logprobs calls";
  ExpectSameAttribution(*loaded.result, *alone);
}

// A perturbation method's rows are score rows, as a Logprobs call's are, so kinds taking turns does not
// help: the short row must join the long request's batches, however much it pads them. The Logprobs call
// is answered while most of the feature ablation's rows are still queued (before the fix it waited for
// the last of them), and the ablation's result is the one it gets alone.
TEST(LatencyIsolation, ShortCallJoinsTheBatchesOfALongPerturbationOfItsKind) {
  auto server = ServerProcess::Start({"--model=demo=" + test_support::DemoModelDir()});
  ASSERT_THAT(server, IsOk());
  auto client = std::move(*client::AttributionClient::Connect({.target = (*server)->address()}));
  client::AttributeOptions ablation = LongAttribution(0);
  ablation.method = "feature_ablation";
  ablation.prompt = std::string(600, 'a') + " is it?";
  absl::StatusOr<client::Attribution> alone = client->Attribute(ablation);
  ASSERT_THAT(alone, IsOk());
  const double rows = static_cast<double>(alone->stats.rows);

  InFlight loaded;
  StartAttribute(*client, ablation, loaded);
  ASSERT_TRUE(WaitForQueuedRows((*server)->metrics_port(), "demo"));
  // The short call's deadline is the later one, so it is not first in line for that reason.
  auto patient =
      std::move(*client::AttributionClient::Connect({.target = (*server)->address(), .timeout = absl::Seconds(600)}));
  absl::StatusOr<client::Logprobs> quick =
      patient->GetLogprobs({.model = "demo", .prompt = "Is it", .target = " yes", .target_tokenization = "separate"});
  const double left = MetricValue((*server)->metrics_port(), "attribution_engine_queued_rows{model=\"demo\"}");
  loaded.finished.WaitForNotification();
  ASSERT_THAT(quick, IsOk());
  ASSERT_THAT(loaded.result, IsOk());
  EXPECT_GT(left, rows / 2) << "of " << rows << " rows";
  ExpectSameAttribution(*loaded.result, *alone);
}

}  // namespace
}  // namespace attribution
