// SPDX-License-Identifier: Apache-2.0
// Requests the demo model (tests' --model=demo=DemoModelDir()) answers OK, for tests that need a
// well-formed call beside the hostile ones they send.
#pragma once
#include "attribution/v1/attribution.pb.h"

namespace attribution::test_support {

inline v1::LogprobsRequest DemoLogprobsRequest() {
  v1::LogprobsRequest r;
  r.set_model("demo");
  r.mutable_prompt()->set_text("Once upon a time");
  r.mutable_target()->set_text(" there");
  // The demo tokenizer (no pre-tokenizer, as Llama 2's tokenizer.json) merges "time" and " there" across
  // the word boundary, so the continuation of this prompt is refused; the target alone is a fine input.
  r.set_target_tokenization(v1::SEPARATE);
  return r;
}

}  // namespace attribution::test_support
