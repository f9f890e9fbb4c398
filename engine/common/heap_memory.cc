// SPDX-License-Identifier: Apache-2.0
#include "engine/common/heap_memory.h"

#include <cstdlib>  // defines __GLIBC__ on glibc

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace attribution {

void KeepLargeBlocksOnTheHeap() {
#ifdef __GLIBC__
  // A block above the threshold that a thread's arena cannot hold (its heaps are 64 MiB) is still
  // mapped on its own: glibc falls back to mmap.
  constexpr int kLargestHeapBlock = 1 << 30;
  constexpr int kNeverTrimOnFree = 0x7fffffff;  // mallopt takes an int
  mallopt(M_MMAP_THRESHOLD, kLargestHeapBlock);
  mallopt(M_TRIM_THRESHOLD, kNeverTrimOnFree);
#endif
}

void ReleaseFreeHeapMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

}  // namespace attribution
