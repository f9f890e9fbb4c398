#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The Python way of bench/model_forward_bench: transformers' model, forward over token ids and
forward + backward to inputs_embeds (parameters frozen, as a careful user would), on the same
weights and shapes. Prints one JSON line: seconds per iteration for each.

Usage: python_forward_reference.py MODEL_DIR BATCH SEQ ITERATIONS
"""
import json
import sys
import time

import torch
import transformers


def timed(fn, iterations):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


def main():
    model_dir, batch, seq, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.requires_grad_(False)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq))

    def forward():
        with torch.inference_mode():
            model(ids)

    def forward_backward():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits
        torch.log_softmax(logits[:, -1].float(), -1)[:, 5].sum().backward()

    print(json.dumps({"forward_s": timed(forward, iterations), "forward_backward_s": timed(forward_backward, iterations),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
