#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The Python way of bench/method_bench: Captum's LLM attribution over the transformers model on the
same weights, prompt and target. Prints one JSON line with seconds and attributions per job.

Usage: python_captum_attribution.py MODEL_DIR PROMPT_IDS TARGET_IDS JOBS
                                    [--device cpu] [--dtype float32] [--steps 64] [--seed_batch 3] [--repeats 1]
  PROMPT_IDS / TARGET_IDS: comma-separated ids, or synthetic:N for bench/synthetic_job.h's N ids;
  JOBS: comma-separated of
  ig_seed (params trainable, internal batch --seed_batch: 3 as seed 000, 2 as seed 001), ig_tuned (frozen,
  internal batch 8), both --steps steps; fa (FeatureAblation), svs (ShapleyValueSampling, 25 samples),
  lime / ks (Lime / KernelShap, 200 samples); seed000: seed 000's job as the notebook runs it
  (IntegratedGradients over the prompt embeddings, params trainable, 15 steps, internal batch 3) on
  bench/synthetic_job.h's Seed000Request (its own 40-token prompt; p(target) - p(foil) from the pad
  embedding), ignoring PROMPT_IDS / TARGET_IDS.
Each job runs --repeats times (JOB:N: N times); "seconds" is the median (the upper one of an even count, as in
method_bench), "seconds_all" every run (the device is synchronised before each clock read).
"""
import argparse
import json
import sys
import time

import torch
import transformers
from captum.attr import (FeatureAblation, IntegratedGradients, KernelShap, LayerIntegratedGradients, Lime,
                         LLMAttribution, LLMGradientAttribution, ShapleyValueSampling, TextTokenInput)

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tools")
from captum_reference import IdTokenizer, text  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_prompt(vocab, n):
    """bench/synthetic_job.h's SyntheticRequest prompt: bos, then ids spread over the vocabulary."""
    return [1 if i == 0 else 3 + (i * 7919) % (vocab - 3) for i in range(n)]


def synthetic_target(vocab, n):
    return [3 + (i * 104729) % (vocab - 3) for i in range(n)]


def parse_ids(arg, vocab, synthetic):
    if arg.startswith("synthetic:"):
        return synthetic(vocab, int(arg.split(":", 1)[1]))
    return [int(x) for x in arg.split(",")]


def seed000(model, device):
    """Seed 000's notebook: IntegratedGradients over a function of the prompt embeddings."""
    vocab = model.config.vocab_size
    prompt = torch.tensor([synthetic_prompt(vocab, 40)], device=device)
    target, foil = synthetic_target(vocab, 2)
    embed = model.get_input_embeddings()

    def no_minus_yes(embeds):
        probs = torch.softmax(model(inputs_embeds=embeds).logits[:, -1].float(), -1)
        return probs[:, target] - probs[:, foil]

    inputs = embed(prompt).detach()
    baselines = embed(torch.zeros_like(prompt)).detach()
    attr = IntegratedGradients(no_minus_yes).attribute(inputs, baselines=baselines, n_steps=15,
                                                       internal_batch_size=3)
    return attr.sum(-1)[0]


def run_job(job, model, tokenizer, inp, target, args):
    if job.startswith("ig"):
        lig = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
        return lig.attribute(inp, target=target, n_steps=args.steps, method="gausslegendre",
                             internal_batch_size=args.seed_batch if job == "ig_seed" else 8).seq_attr
    if job == "seed000":
        return seed000(model, args.device)
    # Perturbation methods run teacher-forced (forward_in_tokens=False): Captum's token-by-token
    # default disagrees with its own teacher-forced scores and with transformers' forward here.
    if job == "fa":
        return LLMAttribution(FeatureAblation(model), tokenizer).attribute(inp, target=target,
                                                                           forward_in_tokens=False).seq_attr
    torch.manual_seed(0)
    if job in ("lime", "ks"):  # Captum's own sampling and default kernels / sklearn models
        method = Lime(model) if job == "lime" else KernelShap(model)
        return LLMAttribution(method, tokenizer).attribute(inp, target=target, n_samples=200,
                                                           forward_in_tokens=False).seq_attr
    return LLMAttribution(ShapleyValueSampling(model), tokenizer).attribute(inp, target=target, n_samples=25,
                                                                           forward_in_tokens=False).seq_attr


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("prompt")
    parser.add_argument("target")
    parser.add_argument("jobs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed_batch", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=DTYPES[args.dtype])
    model = model.to(args.device).eval()
    vocab = model.config.vocab_size
    prompt = parse_ids(args.prompt, vocab, synthetic_prompt)
    target = torch.tensor(parse_ids(args.target, vocab, synthetic_target))
    tokenizer = IdTokenizer()
    inp = TextTokenInput(text(prompt), tokenizer)
    out = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
           "device": args.device, "dtype": args.dtype}
    for item in args.jobs.split(","):
        job, _, repeats = item.partition(":")
        model.requires_grad_(job in ("ig_seed", "seed000"))  # the seeds leave the weights trainable
        seconds = []
        for _ in range(max(1, int(repeats or args.repeats))):
            synchronize(args.device)
            start = time.perf_counter()
            attr = run_job(job, model, tokenizer, inp, target, args)
            synchronize(args.device)
            seconds.append(time.perf_counter() - start)
        out[job] = {"seconds": sorted(seconds)[len(seconds) // 2], "seconds_all": seconds,
                    "seq_attr": attr.float().tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
