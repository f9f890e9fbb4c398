// SPDX-License-Identifier: Apache-2.0
#include "engine/scheduler/intra_op_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

namespace attribution::engine {
namespace {

struct Setters {
  // Both are exported by the libraries the torch wheel links (libgomp, and MKL inside libtorch_cpu);
  // linking them directly would tie the build to one OpenMP runtime and one BLAS.
  void (*openmp)(int) = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  int (*mkl)(int) = reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
};

}  // namespace

void SetThreadIntraOpThreads(int threads) {
  static const Setters setters;
  if (setters.openmp != nullptr) setters.openmp(threads);
  if (setters.mkl != nullptr) setters.mkl(threads);
}

int LimitProcessIntraOpThreads(int max_threads) {
  if (max_threads >= 1 && at::get_num_threads() > max_threads) at::set_num_threads(max_threads);
  return at::get_num_threads();
}

}  // namespace attribution::engine
