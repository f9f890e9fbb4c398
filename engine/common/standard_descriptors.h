// SPDX-License-Identifier: Apache-2.0
// A program started with a standard descriptor closed (`cmd >&-`, a supervisor that closes stdin) hands
// that number to the next file or socket it opens: what it then prints to stdout or logs to stderr goes
// into a gRPC connection or an eventfd. Header-only: the server and every client tool call it first.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace attribution {

// Puts /dev/null, opened read-only, at each of descriptors 0, 1 and 2 that is closed: reads find nothing,
// and writes fail (EBADF) as writes to a closed descriptor do, which the tools report.
inline void OccupyClosedStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int null = ::open("/dev/null", O_RDONLY);  // the lowest free number: `fd`, since those below are open
    if (null >= 0 && null != fd) {
      ::dup2(null, fd);
      ::close(null);
    }
  }
}

}  // namespace attribution
