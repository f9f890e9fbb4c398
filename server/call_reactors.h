// SPDX-License-Identifier: Apache-2.0
// Callback-API reactors shared by the RPCs: a unary call and a server-streaming call, each of which
// forwards client cancellation (and deadline expiry) to a hook that cancels the engine work, and
// reports its end once (log line, metrics, admission slot) through a CallObserver.
#pragma once
#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attribution/v1/attribution.pb.h"
#include "engine/common/monotonic_clock.h"
#include "server/delivery_watchdog.h"
#include "server/grpc_status.h"
#include "server/log_line.h"

namespace attribution::server {

// What one call reports when it ends.
struct CallLog {
  std::string method;
  std::string model;         // as the client named it
  std::string served_model;  // the model that name found, if any: the metrics' label
  std::string peer;
  std::string request_id;                        // the client's x-request-id metadata, if any
  absl::Time received = MonotonicNow();          // received and deadline: engine/common/monotonic_clock.h
  absl::Time deadline = absl::InfiniteFuture();  // the client's
  bool admitted = false;                         // holds a CallGate slot
  bool logged = true;                            // whether its end writes a log line (metrics count it anyway)
  int64_t like_it_not_logged = 0;                // calls like it whose lines were left out before it
  attribution::v1::RunStats stats;
};

// The client's deadline on the monotonic clock (engine/common/monotonic_clock.h), from gRPC's own monotonic
// one: read as a wall-clock time, it was off by any step of the wall clock after it was read (an hour ahead
// failed the call at once), and calls arriving as the clock stepped were refused "deadline has passed".
inline absl::Time MonotonicDeadline(const grpc::ServerContextBase& context) {
  const gpr_timespec deadline = gpr_convert_clock_type(context.raw_deadline(), GPR_CLOCK_MONOTONIC);
  const gpr_timespec left = gpr_time_sub(deadline, gpr_now(GPR_CLOCK_MONOTONIC));
  if (deadline.tv_sec == INT64_MAX || left.tv_sec > int64_t{365} * 24 * 3600) return absl::InfiniteFuture();
  return MonotonicNow() + absl::Seconds(left.tv_sec) + absl::Nanoseconds(left.tv_nsec);
}

// Who the call is and where it came from, for its log line.
inline CallLog StartCallLog(std::string method, const grpc::ServerContextBase* context) {
  CallLog log{.method = std::move(method), .peer = context->peer()};
  log.deadline = MonotonicDeadline(*context);
  const auto& metadata = context->client_metadata();
  if (auto id = metadata.find("x-request-id"); id != metadata.end()) {
    log.request_id.assign(id->second.data(), id->second.size());
  }
  return log;
}

class CallObserver {
 public:
  virtual ~CallObserver() = default;
  virtual void CallEnded(const CallLog& log, const grpc::Status& status) = 0;
  // A unary answer of `bytes` (serialized) handed to gRPC, until gRPC is done with its call (delivered, or
  // the client gone). Its call has ended and left its admission slot; an answer the client does not read
  // stays in memory, so the observer bounds their bytes (clients that never read parked gigabytes).
  virtual void AnswerWaiting(int64_t bytes) = 0;
  virtual void AnswerGone(int64_t bytes) = 0;
  // A unary answer of `bytes` that the delivery watch cancelled: its client stopped reading. The call was logged
  // and counted when it ended (before delivery, to free its slot): this says the client did not get it.
  virtual void AnswerUndelivered(const CallLog& log, int64_t bytes) = 0;
  // A call's reactor made, and gRPC done with it (OnDone: its answer delivered, or the client gone). A call
  // leaves its admission slot (CallEnded) before it hands gRPC its answer: the drain waits for these.
  virtual void CallOpened() = 0;
  virtual void CallClosed() = 0;
  // The call's delivery, watched for a client that stopped reading (nullptr: not watched).
  virtual std::shared_ptr<DeliveryWatch> WatchDelivery(grpc::CallbackServerContext* context) = 0;
};

// Holds the cancel hook of a call: run once when the client cancels, at once if it already has.
class CancelHook {
 public:
  void Set(std::function<void()> cancel) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!cancelled_) {
        cancel_ = std::move(cancel);
        return;
      }
    }
    cancel();
  }
  void Fire() {
    std::function<void()> cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      cancel.swap(cancel_);
    }
    if (cancel) cancel();  // outside the lock: cancelling may complete the call on this thread
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  std::function<void()> cancel_;
};

// gRPC cancels a call whose deadline passed as it cancels one its client gave up, and the engine then ends the
// work CANCELLED: the log line and metrics say which it was. The client's own timer usually ends the call
// first: the server's deadline runs from when it read the headers and gRPC rounds a timeout up (by up to 1% past
// a second), so the client's reset races the server's timer. So a cancellation this close to the deadline is
// the deadline's: without the margin 12 of 12 calls with 15.01 s deadlines were counted CANCELLED.
inline absl::Duration DeadlineMargin(const CallLog& log) {
  return absl::Milliseconds(100) + (log.deadline - log.received) / 50;
}
inline bool CancelledByDeadline(const CallLog& log, absl::Time now) {
  return log.deadline != absl::InfiniteFuture() && now >= log.deadline - DeadlineMargin(log);
}
inline grpc::Status EndStatus(const absl::Status& status, const CallLog& log, absl::Time now = MonotonicNow()) {
  if (status.code() == absl::StatusCode::kCancelled && CancelledByDeadline(log, now)) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline passed before its work finished");
  }
  return ToGrpcStatus(status);
}

// Every path ends a call once. A second end would make gRPC finish the call twice and free it twice,
// corrupting the heap far from the cause: it is dropped and logged instead.
inline void LogSecondEnd(const CallLog& log, const absl::Status& status) {
  WriteLogLine({{"event", "internal_error"},
                {"detail", "a call was ended twice; the second end is dropped"},
                {"rpc", log.method},
                {"second_status", status.ToString()}});
}

// Deletes itself when gRPC is done with it. Complete() must be the caller's last use of the object.
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(CallObserver* observer, std::string method, grpc::CallbackServerContext* context)
      : observer_(observer), watch_(observer->WatchDelivery(context)), log_(StartCallLog(std::move(method), context)) {
    observer_->CallOpened();
  }
  CallLog& log() { return log_; }
  void OnCancelDo(std::function<void()> cancel) { cancel_.Set(std::move(cancel)); }
  // `answer_bytes`: the serialized size of the response it sends (0 with an error).
  void Complete(const absl::Status& status, int64_t answer_bytes = 0) {
    if (completed_.exchange(true)) return LogSecondEnd(log_, status);
    const grpc::Status grpc_status = EndStatus(status, log_);
    observer_->CallEnded(log_, grpc_status);
    answer_bytes_ = answer_bytes;
    observer_->AnswerWaiting(answer_bytes_);
    if (watch_) watch_->WriteStarted();
    Finish(grpc_status);
  }
  void OnCancel() override { cancel_.Fire(); }
  void OnDone() override {
    if (watch_) watch_->CallDone();
    if (completed_ && watch_ && watch_->cancelled()) observer_->AnswerUndelivered(log_, answer_bytes_);
    if (completed_) observer_->AnswerGone(answer_bytes_);
    observer_->CallClosed();
    delete this;
  }

 private:
  CallObserver* const observer_;
  const std::shared_ptr<DeliveryWatch> watch_;
  CallLog log_;
  CancelHook cancel_;
  std::atomic<bool> completed_{false};
  int64_t answer_bytes_ = 0;
};

// A server stream: events are written one at a time in order; a `replaceable` event (progress) that
// is still unsent is replaced by the next replaceable one, so a slow reader never queues up progress.
// Deletes itself when gRPC is done with it.
template <typename Event>
class StreamCall final : public grpc::ServerWriteReactor<Event> {
 public:
  StreamCall(CallObserver* observer, std::string method, grpc::CallbackServerContext* context)
      : observer_(observer), watch_(observer->WatchDelivery(context)), log_(StartCallLog(std::move(method), context)) {
    observer_->CallOpened();
  }
  CallLog& log() { return log_; }
  void OnCancelDo(std::function<void()> cancel) { cancel_.Set(std::move(cancel)); }

  void Send(Event event, bool replaceable = false) {
    Step step;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ending_) return;
      if (replaceable && !queue_.empty() && queue_.back().second) {
        queue_.back().first = std::move(event);
      } else {
        queue_.emplace_back(std::move(event), replaceable);
      }
      step = NextStepLocked();
    }
    if (step != Step::kNothing) Take(step);
  }

  // Ends the stream after the queued events (and `last`, when given); the caller's last use.
  void Complete(const absl::Status& status, std::optional<Event> last = std::nullopt) {
    Step step;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ending_) return LogSecondEnd(log_, status);
      if (last && status.ok()) queue_.emplace_back(std::move(*last), false);
      ending_ = true;
      status_ = EndStatus(status, log_);
      // Decided under the lock that set ending_: once it is released, a write completing on a gRPC
      // thread may finish the call, and gRPC may then free it.
      step = NextStepLocked();
    }
    if (step != Step::kNothing) Take(step);
  }

  void OnWriteDone(bool ok) override {
    if (watch_) watch_->WriteDone();
    Step step;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) queue_.clear();  // the client is gone; nothing more can be written
      step = NextStepLocked();
    }
    if (step != Step::kNothing) Take(step);
  }
  void OnCancel() override { cancel_.Fire(); }
  void OnDone() override {
    if (watch_) watch_->CallDone();
    observer_->CallClosed();
    delete this;
  }

 private:
  // The next write, or the finish once everything is written. The step belongs to the thread that took
  // it (writing_ and finished_ are set here), and every caller takes it in the critical section of its
  // own change: a thread that released the lock with nothing to do must not touch the call again, since
  // another thread may finish it and gRPC free it at any moment after that.
  enum class Step { kNothing, kWrite, kFinish };
  Step NextStepLocked() {
    if (writing_ || finished_) return Step::kNothing;
    if (!queue_.empty()) {
      current_ = std::move(queue_.front().first);
      queue_.pop_front();
      writing_ = true;
      return Step::kWrite;
    }
    if (!ending_) return Step::kNothing;
    finished_ = true;
    return Step::kFinish;
  }

  // Outside the lock, since gRPC may run reactions inline. A write keeps the call open until its
  // OnWriteDone; the finish is this object's last use. Not called for kNothing: even a member call that
  // does nothing reads a call another thread may have freed.
  void Take(Step step) {
    if (step == Step::kWrite) {
      if (watch_) watch_->WriteStarted();
      this->StartWrite(&current_);
    } else {
      if (watch_ && watch_->cancelled()) status_ = grpc::Status(grpc::StatusCode::CANCELLED, kStoppedReading);
      observer_->CallEnded(log_, status_);
      if (watch_) watch_->WriteStarted();
      this->Finish(status_);
    }
  }

  static constexpr char kStoppedReading[] = "cancelled by the server: the client stopped reading its answer";
  CallObserver* const observer_;
  const std::shared_ptr<DeliveryWatch> watch_;
  CallLog log_;
  CancelHook cancel_;
  std::mutex mu_;
  std::deque<std::pair<Event, bool>> queue_;  // (event, replaceable)
  Event current_;                             // the event being written
  bool writing_ = false;
  bool ending_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace attribution::server
