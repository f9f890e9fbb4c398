// SPDX-License-Identifier: Apache-2.0
// Cancels calls whose client stopped taking their answer. A client that never reads its stream (or a
// large unary answer) and never disconnects would otherwise hold its call, its admission slot and its
// unsent events until its deadline, or forever without one. Each call reports when a write starts and
// completes; a write pending longer than the limit cancels the call (the client sees CANCELLED, the
// server ends the call as for a client cancellation).
//
//   DeliveryWatchdog watchdog(absl::Seconds(120));
//   std::shared_ptr<DeliveryWatch> watch = watchdog.Watch(context);  // when the call starts
//   watch->WriteStarted(); ... watch->WriteDone(); ... watch->CallDone();  // before the reactor is freed
#pragma once
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/time/time.h"

namespace attribution::server {

class DeliveryWatch {
 public:
  explicit DeliveryWatch(grpc::CallbackServerContext* context) : context_(context) {}
  void WriteStarted();
  void WriteDone();
  // The call is over: the context may go away. Must precede the reactor's deletion.
  void CallDone();
  // Cancels the call if a write has been pending since before `stalled_before`.
  void CancelIfStalled(absl::Time stalled_before);
  bool done();
  bool cancelled();  // by CancelIfStalled

 private:
  // Recursive: TryCancel may run the call's reactions, CallDone included, on the calling thread.
  std::recursive_mutex mu_;
  grpc::CallbackServerContext* context_;  // valid until CallDone
  std::optional<absl::Time> pending_since_;
  bool done_ = false;
  bool cancelled_ = false;
};

class DeliveryWatchdog {
 public:
  // limit: how long a write may wait for the client; checked about four times per limit (at least
  // every second).
  explicit DeliveryWatchdog(absl::Duration limit);
  ~DeliveryWatchdog();
  DeliveryWatchdog(const DeliveryWatchdog&) = delete;
  DeliveryWatchdog& operator=(const DeliveryWatchdog&) = delete;

  std::shared_ptr<DeliveryWatch> Watch(grpc::CallbackServerContext* context);

 private:
  void Run();

  const absl::Duration limit_;
  std::mutex mu_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  std::list<std::shared_ptr<DeliveryWatch>> watches_;
  std::thread thread_;
};

}  // namespace attribution::server
