#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Seed 001's job, the seed's way and the service's way, at equal attributions.

The seed explains each statement with Captum's IntegratedGradients over the prompt embeddings: a zero
baseline for every position, the softmax probability of the label token at the last position, 512
Gauss-Legendre steps, internal_batch_size=2, one statement at a time. The service answers the same
attribution (quantity prob, baseline zero, special tokens as features) through attribution-batch, once at
the seed's fixed 512 steps and once with completeness_tolerance 1e-3 (nested orders of Fejér's second
rule, at most 511 points). Captum runs on every k-th statement; each of the service's answers for those is
compared with Captum's: max |ours - Captum| / max |Captum|.

Usage: seed001_job.py SERVER_BINARY BATCH_BINARY MODEL_DIR [ROWS] [CAPTUM_ROWS] [WINDOW]
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import transformers
from batch_bench import write_rows
from captum.attr import IntegratedGradients
from serving import serve
from tolerance_ig import relative_error


def seed_loop(model_dir, statements):
    """Seed 001's cells 17-23 for each statement; returns (attributions, seconds)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    embed = model.get_input_embeddings()

    def softmax_results_embeds(embeds):
        return torch.nn.functional.softmax(model(inputs_embeds=embeds).logits[:, -1], dim=-1)

    attributions = []
    start = time.perf_counter()
    for prompt, answer in statements:
        tokens = tokenizer(prompt, return_tensors="pt").input_ids
        label = tokenizer(prompt + answer).input_ids[tokens.shape[1]]
        input_embs = embed(tokens).detach()
        ig = IntegratedGradients(softmax_results_embeds)
        attr, _ = ig.attribute(input_embs, baselines=torch.zeros_like(input_embs), target=label, n_steps=512,
                               internal_batch_size=2, return_convergence_delta=True)
        attributions.append(attr.sum(-1)[0].detach().numpy())
    return attributions, time.perf_counter() - start


def run_job(batch, port, rows_path, output, window, extra):
    start = time.perf_counter()
    subprocess.run([batch, f"--input={rows_path}", f"--output={output}", f"--server=127.0.0.1:{port}", "--model=m",
                    f"--window={window}", "--quantity=prob", "--baseline=zero", "--include_special_tokens",
                    "--n_steps=512", "--progress=log", "--progress_seconds=1000"] + extra, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    results = {}
    for line in open(output):
        r = json.loads(line)
        assert r["status"] == "ok", r
        results[r["id"]] = np.array(r["attribution"])
    return results, wall


def main():
    server, batch, model_dir = sys.argv[1:4]
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    captum_rows = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    window = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    every = max(1, rows // captum_rows)
    compared = list(range(0, rows, every))[:captum_rows]
    with tempfile.TemporaryDirectory() as work:
        rows_path = os.path.join(work, "rows.jsonl")
        statements = [(q.prompt, " " + q.answer) for q in write_rows(rows_path, rows)]
        process, port = serve(server, model_dir, work)
        try:
            fixed, fixed_wall = run_job(batch, port, rows_path, os.path.join(work, "fixed.jsonl"), window, [])
            adaptive, adaptive_wall = run_job(batch, port, rows_path, os.path.join(work, "adaptive.jsonl"), window,
                                              ["--tolerance=1e-3"])
        finally:
            process.terminate()
            process.wait()
    reference, captum_wall = seed_loop(model_dir, [statements[i] for i in compared])
    captum_rate = len(compared) / captum_wall
    print(f"{rows} statements of the default model's tasks; Captum on {len(compared)} of them (every {every}th); "
          f"window {window}; torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| run | statements/s | wall s | x the seed's loop | rel. error to Captum's 512 steps: median | max |")
    print("|---|---|---|---|---|---|")
    print(f"| seed 001's loop: Captum IntegratedGradients, 512 steps, internal batch 2 | {captum_rate:.3f} | "
          f"{captum_wall:.1f} | 1.0x | - | - |")
    for name, results, wall in (("attribution-batch, 512 steps", fixed, fixed_wall),
                                ("attribution-batch, completeness_tolerance 1e-3", adaptive, adaptive_wall)):
        errors = [relative_error(results[f"q{i}"], r) for i, r in zip(compared, reference)]
        rate = rows / wall
        print(f"| {name} | {rate:.3f} | {wall:.1f} | {rate / captum_rate:.1f}x | {np.median(errors):.1e} | "
              f"{max(errors):.1e} |", flush=True)


if __name__ == "__main__":
    main()
