// SPDX-License-Identifier: Apache-2.0
// Which build a binary is: an operator paged about one replica asks which commit it runs.
#pragma once
#include <string>

#include "absl/strings/string_view.h"

namespace attribution {

// `git describe --always --dirty` of the source tree at build time ("unknown" without git, or
// -DATTRIBUTION_BUILD_COMMIT's value).
const char* BuildCommit();

// --version's text: "PROGRAM commit C (Release build)\n".
std::string VersionString(absl::string_view program);

}  // namespace attribution
