#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The Python way of bench/method_bench: Captum's LLM attribution over the transformers model on the
same weights, prompt and target. Prints one JSON line with seconds and attributions per job.

Usage: python_captum_attribution.py MODEL_DIR PROMPT_IDS TARGET_IDS JOBS
  PROMPT_IDS / TARGET_IDS: comma-separated ids; JOBS: comma-separated of
  ig_seed (params trainable, internal batch 3, as seed 000), ig_tuned (frozen, internal batch 8),
  fa (FeatureAblation), svs (ShapleyValueSampling, 25 samples), lime / ks (Lime / KernelShap, 200 samples)
"""
import json
import sys
import time

import torch
import transformers
from captum.attr import (FeatureAblation, KernelShap, LayerIntegratedGradients, Lime, LLMAttribution,
                         LLMGradientAttribution, ShapleyValueSampling, TextTokenInput)

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tools")
from captum_reference import IdTokenizer, text  # noqa: E402


def main():
    model_dir, prompt, target, jobs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    prompt = [int(x) for x in prompt.split(",")]
    target = torch.tensor([int(x) for x in target.split(",")])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = IdTokenizer()
    inp = TextTokenInput(text(prompt), tokenizer)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for job in jobs:
        model.requires_grad_(job == "ig_seed")  # the seeds leave the weights trainable
        start = time.perf_counter()
        if job.startswith("ig"):
            lig = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
            r = lig.attribute(inp, target=target, n_steps=64, method="gausslegendre",
                              internal_batch_size=3 if job == "ig_seed" else 8)
        # Perturbation methods run teacher-forced (forward_in_tokens=False): Captum's token-by-token
        # default disagrees with its own teacher-forced scores and with transformers' forward here.
        elif job == "fa":
            r = LLMAttribution(FeatureAblation(model), tokenizer).attribute(inp, target=target, forward_in_tokens=False)
        elif job in ("lime", "ks"):  # Captum's own sampling and default kernels / sklearn models
            torch.manual_seed(0)
            method = Lime(model) if job == "lime" else KernelShap(model)
            r = LLMAttribution(method, tokenizer).attribute(inp, target=target, n_samples=200, forward_in_tokens=False)
        else:
            torch.manual_seed(0)
            r = LLMAttribution(ShapleyValueSampling(model), tokenizer).attribute(inp, target=target, n_samples=25,
                                                                                forward_in_tokens=False)
        out[job] = {"seconds": time.perf_counter() - start, "seq_attr": r.seq_attr.tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
