// SPDX-License-Identifier: Apache-2.0
// What the command-line tools print to stdout is their result: a stdout that cannot take it (a full disk,
// /dev/full, a closed descriptor, a reader gone while SIGPIPE is ignored) fails the command, so that
// `attribution-cli ... --json > out.json && use out.json` never goes on with a file cut short. Header-only:
// every tool uses it.
//
//   PrepareStandardOutput();
//   return FinishStandardOutput("attribution-cli", Run(...));
#pragma once

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "engine/common/standard_descriptors.h"

namespace attribution::client {

// Call first: a closed stdout is then an error to report, not the number of the tool's next socket.
inline void PrepareStandardOutput() {
  OccupyClosedStandardDescriptors();
  // A file grown past `ulimit -f` killed the tool with SIGXFSZ and no message; ignored, the write fails with
  // EFBIG and the tool names the file, as it does for a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
}

// The error of the first write to stdout that failed, 0 while none has.
inline int& StandardOutputError() {
  static int error = 0;
  return error;
}

// Whether stdout took everything written to it so far: flushed now, so that an error still buffered shows.
inline bool StandardOutputWritten() {
  // A write that failed since set errno, which nothing has changed when this is called right after the print.
  if (!std::cout.good() || std::ferror(stdout)) {
    if (StandardOutputError() == 0) StandardOutputError() = errno;
    return false;
  }
  errno = 0;
  std::cout.flush();
  const bool written = std::cout.good() && std::fflush(stdout) == 0 && !std::ferror(stdout);
  if (!written && StandardOutputError() == 0) StandardOutputError() = errno;
  return written;
}

// `exit_code`, or 1 with a message when stdout did not take what the tool printed.
inline int FinishStandardOutput(const char* program, int exit_code) {
  if (StandardOutputWritten()) return exit_code;
  const int error = StandardOutputError();
  std::fprintf(stderr, "%s: cannot write the standard output%s%s\n", program, error != 0 ? ": " : "",
               error != 0 ? std::strerror(error) : "");
  return 1;
}

}  // namespace attribution::client
