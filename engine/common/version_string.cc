// SPDX-License-Identifier: Apache-2.0
#include "absl/strings/str_cat.h"
#include "engine/common/build_info.h"

namespace attribution {

std::string VersionString(absl::string_view program) {
  // abseil's own text read "Debug build (NDEBUG not #defined)" for Release builds: Debian builds abseil without
  // NDEBUG, and the text is abseil's.
#ifdef NDEBUG
  constexpr absl::string_view kBuild = "optimized build";
#else
  constexpr absl::string_view kBuild = "debug build (assertions on)";
#endif
  return absl::StrCat(program, " commit ", BuildCommit(), " (", kBuild, ")\n");
}

}  // namespace attribution
