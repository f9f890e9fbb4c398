// SPDX-License-Identifier: Apache-2.0
// glibc malloc settings for a process that allocates and frees tensors of megabytes many times a second.
#pragma once

namespace attribution {

// glibc maps each block above its mmap threshold (128 KiB at first, rising with the blocks freed) afresh
// and unmaps it on free, and hands a freed heap top of a few megabytes back to the system: each new
// activation tensor of a batch then costs the page faults that zero it, about 8% of a gradient batch's
// time on a 2-core CPU (bench/RESULTS.md). This serves blocks up to 1 GiB from the heap and keeps freed
// memory there for the next batch; ReleaseFreeHeapMemory hands it back once the work stops. Call it
// before the first tensor; calling it again changes nothing. Off glibc it does nothing.
void KeepLargeBlocksOnTheHeap();

// Returns the heap's free pages to the system (an idle server would otherwise stay at its peak).
void ReleaseFreeHeapMemory();

}  // namespace attribution
