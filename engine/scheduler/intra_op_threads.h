// SPDX-License-Identifier: Apache-2.0
// The calling thread's intra-op thread count, set for one batch at a time. OpenMP and MKL both keep it
// per thread, so an engine's executor thread can run a batch on fewer threads without touching other
// threads. at::set_num_threads is not made for this: besides those two settings it resizes the
// process's pthreadpool and clears oneDNN's primitive cache on every call.
//
//   SetThreadIntraOpThreads(1);  // this thread's next parallel regions and MKL calls use one thread
#pragma once

namespace attribution::engine {

// Looks the setters up in the libraries LibTorch loaded (OpenMP's omp_set_num_threads, MKL's
// MKL_Set_Num_Threads_Local); a runtime without one (another BLAS, no OpenMP) keeps that part as is.
void SetThreadIntraOpThreads(int threads);

// Lowers the process's intra-op thread count (LibTorch's pool, and the OpenMP and MKL defaults of threads
// started later) to `max_threads` when it is higher, and answers the count in force. Before any engine
// starts: it resizes pools the batches use.
int LimitProcessIntraOpThreads(int max_threads);

}  // namespace attribution::engine
