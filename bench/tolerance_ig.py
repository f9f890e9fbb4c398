#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Tolerance-driven integrated gradients against Captum's fixed 512 steps.

For each model and prompt: Captum's IntegratedGradients (Gauss-Legendre, 512 steps, the pad token's
embedding as baseline, over the prompt embeddings, log-prob of the target) is the reference. The server
(attribution-cli, over gRPC) answers the same attribution with n_steps=512; with a completeness
tolerance and no rule (Fejér's second rule, nested orders 7, 15, 31, ... points within 512); with the tolerance and
--rule=gausslegendre (orders 8, 16, 32, ... within 512 points in all); and at fixed Gauss-Legendre orders
8, 12, 16, 24, ... to find the smallest that is within 1e-3 of Captum. Prints, per case, the rows each
needed, their wall time and their largest error relative to Captum's largest attribution.

Usage: tolerance_ig.py SERVER_BINARY CLI_BINARY [--tolerance 1e-3] [--model NAME=DIR ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from captum.attr import IntegratedGradients
from serving import serve

SCANNED_ORDERS = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "Question: Is the sky green? Answer:",
    "Question: Can a fish climb a tree? Answer:",
    "The opposite of hot is",
    "Question: Is fire cold? Answer:",
]


def captum_reference(model_dir, prompt_ids, target_ids, steps):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.requires_grad_(False)
    embed = model.get_input_embeddings()
    prompt, target = torch.tensor([prompt_ids]), torch.tensor(target_ids)
    p, t = len(prompt_ids), len(target_ids)

    def target_log_prob(prompt_embeds):  # [n, P, hidden] -> [n]
        n = prompt_embeds.shape[0]
        x = torch.cat([prompt_embeds, embed(target)[None].expand(n, -1, -1)], 1)
        log_probs = torch.log_softmax(model(inputs_embeds=x).logits[:, p - 1:p - 1 + t].float(), -1)
        return log_probs.gather(-1, target[None, :, None].expand(n, -1, 1)).sum((1, 2))

    ig = IntegratedGradients(target_log_prob)
    attr = ig.attribute(embed(prompt), baselines=embed(torch.zeros_like(prompt)), n_steps=steps,
                        method="gausslegendre", internal_batch_size=64)
    return attr.sum(-1)[0].tolist()


def attribute(cli, port, prompt, extra):
    started = time.time()
    out = subprocess.run([cli, "attribute", f"--server=127.0.0.1:{port}", f"--prompt={prompt}", "--target= yes",
                          "--target_tokenization=separate", "--include_special_tokens", "--baseline=0", "--json"] + extra,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out), time.time() - started


def relative_error(ours, reference):
    scale = max(abs(v) for v in reference)
    return max(abs(a - b) for a, b in zip(ours, reference)) / scale


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("cli")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=DIR (default: the default model and a random hidden-512 Llama)")
    args = parser.parse_args()
    models = [m.split("=", 1) for m in args.model] or [["default (tiny-qa-llama)", os.path.join(ROOT, "models/tiny-qa-llama")],
                                                       ["random llama 512x8", "/tmp/llama-512x8"]]
    print(f"| model | prompt tokens | fixed 512: rows | s | rel. error | tolerance {args.tolerance:g}: points | rows | s "
          f"| rel. error | rows saved | with gausslegendre: order | rows | rel. error | smallest order within 1e-3 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, model_dir in models:
        with tempfile.TemporaryDirectory() as work:
            server, port = serve(args.server, model_dir, work)
            try:
                for prompt in PROMPTS:
                    fixed, fixed_s = attribute(args.cli, port, prompt, ["--n_steps=512"])
                    adaptive, adaptive_s = attribute(args.cli, port, prompt, [f"--tolerance={args.tolerance}", "--n_steps=512"])
                    legendre, _ = attribute(args.cli, port, prompt,
                                            [f"--tolerance={args.tolerance}", "--n_steps=512", "--rule=gausslegendre"])
                    prompt_ids = [t["id"] for t in fixed["prompt_tokens"]]
                    target_ids = [t["id"] for t in fixed["target_tokens"]]
                    reference = captum_reference(model_dir, prompt_ids, target_ids, 512)
                    enough = next((n for n in SCANNED_ORDERS if relative_error(
                        attribute(args.cli, port, prompt, [f"--n_steps={n}"])[0]["sequence_attribution"], reference) <= 1e-3),
                        None)
                    print(f"| {name} | {len(prompt_ids)} | {fixed['stats']['rows']} | {fixed_s:.2f} | "
                          f"{relative_error(fixed['sequence_attribution'], reference):.1e} | "
                          f"{adaptive.get('integration_steps')}{'' if adaptive.get('tolerance_met') else ' (not met)'} | "
                          f"{adaptive['stats']['rows']} | {adaptive_s:.2f} | "
                          f"{relative_error(adaptive['sequence_attribution'], reference):.1e} | "
                          f"{fixed['stats']['rows'] / adaptive['stats']['rows']:.1f}x | "
                          f"{legendre.get('integration_steps')}{'' if legendre.get('tolerance_met') else ' (not met)'} | "
                          f"{legendre['stats']['rows']} | "
                          f"{relative_error(legendre['sequence_attribution'], reference):.1e} | {enough or '> 384'} |",
                          flush=True)
            finally:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main())
