// SPDX-License-Identifier: Apache-2.0
// The command line of attribution-batch and attribution-cli, read before abseil parses it: which flags
// it names, and its usage errors. abseil's ParseCommandLine exits with status 1 on a usage error, where
// both tools promise 2, and says whether a flag was given only through a private accessor. Header-only:
// both binaries use it.
//
//   const CommandLine line = ScanCommandLine(argc, argv, [](absl::string_view file) { return ...; });
//   if (!line.error.empty()) { std::fprintf(stderr, "attribution-batch: %s\n", line.error.c_str()); return 2; }
//   std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
//   if (line.given.contains("method")) ...
#pragma once

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace attribution::client {

struct CommandLine {
  std::set<std::string> given;  // the flags argv names, whatever their value (a bool's --noNAME as NAME)
  std::string error;            // the first usage error, "" when there is none
};

// Whether abseil's parser reads `name` itself as a request for usage text (--help, --helpfull, ...): these
// are no registered flags, and take a value only after "=".
inline bool IsAbseilUsageFlag(absl::string_view name) {
  for (absl::string_view usage :
       {"help", "helpfull", "helpshort", "helppackage", "helpmatch", "helpon", "version", "only_check_args"}) {
    if (name == usage) return true;
  }
  return false;
}

// Reads argv as abseil's parser does: "--" ends the flags; "-NAME" is "--NAME"; a value follows "=" or,
// for a flag that is not a bool, comes as the next argument; "--noNAME" clears a bool. Values of the
// flags defined in the files `own_file` accepts (the program's, as its --help lists them) are checked by
// parsing them into the flag (ParseCommandLine then parses the same text again). abseil's own flags (--flagfile,
// --helpfull, ...) are left to it, as are the flags of a --flagfile (abseil still exits 1 on those), and unknown flags
// named by --undefok.
inline CommandLine ScanCommandLine(int argc, char** argv, const std::function<bool(absl::string_view)>& own_file) {
  CommandLine line;
  std::vector<std::string> unknown;
  std::set<std::string, std::less<>> undefok;
  for (int i = 1; i < argc && line.error.empty(); ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;  // a positional argument, or "-"
    absl::string_view spec = arg.substr(absl::StartsWith(arg, "--") ? 2 : 1);
    const size_t equals = spec.find('=');
    const bool has_value = equals != absl::string_view::npos;
    const std::string name(spec.substr(0, equals));
    absl::string_view value = has_value ? spec.substr(equals + 1) : absl::string_view();
    if (IsAbseilUsageFlag(name)) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        if (has_value) line.error = absl::StrCat("--", name, ": the negative form of a bool flag takes no value");
        line.given.insert(name.substr(2));
        continue;
      }
    }
    if (flag == nullptr) {
      unknown.push_back(name);
      continue;
    }
    if (!has_value && !flag->IsOfType<bool>()) {
      if (i + 1 == argc) {
        line.error = absl::StrCat("--", name, ": give a value (--", name, "=VALUE)");
        break;
      }
      value = argv[++i];
    }
    if (name == "undefok") {
      for (absl::string_view n : absl::StrSplit(value, ',', absl::SkipEmpty())) undefok.emplace(n);
    }
    line.given.insert(name);
    if (!own_file(flag->Filename()) || (!has_value && flag->IsOfType<bool>())) continue;
    if (std::string error; !flag->ParseFrom(value, &error)) {
      line.error = absl::StrCat("--", name, ": illegal value \"", value, "\" (", flag->Help(), ")");
    }
  }
  for (const std::string& name : unknown) {
    if (line.error.empty() && !undefok.contains(name)) {
      line.error = absl::StrCat("unknown flag --", name, " (see --help)");
    }
  }
  return line;
}

}  // namespace attribution::client
