// SPDX-License-Identifier: Apache-2.0
// consumer TARGET PROMPT TARGET_TEXT (consumer.cc); exit 1 with the status on a failure.
#include <iostream>

extern "C" int RunConsumer(const char* target, const char* prompt, const char* target_text);

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: consumer TARGET PROMPT TARGET_TEXT\n";
    return 2;
  }
  return RunConsumer(argv[1], argv[2], argv[3]);
}
