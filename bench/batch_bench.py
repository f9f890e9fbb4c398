#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Rows per second of a data-set job: attribution-batch against one server on the default model at
in-flight windows 1, 8, 32 and 128, and the seed's way (a Python loop of Captum's LayerIntegratedGradients
over the transformers model, one row at a time) on the first rows of the same data set. Prints a
Markdown table.

Usage: batch_bench.py SERVER_BINARY BATCH_BINARY MODEL_DIR [ROWS] [N_STEPS] [CAPTUM_ROWS]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from captum.attr import LayerIntegratedGradients

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from default_model_tasks import held_out_questions  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_rows(path, count):
    questions = held_out_questions((count + 2) // 3)[:count]
    with open(path, "w") as f:
        for i, q in enumerate(questions):
            f.write(json.dumps({"id": f"q{i}", "prompt": q.prompt, "target": " " + q.answer}) + "\n")
    return questions


def captum_rows_per_second(model_dir, questions, n_steps):
    """Seed 001's loop: for each row, LayerIntegratedGradients on the embedding layer, zero baseline,
    the target's probability, internal batch 2 as the seed's notebooks run it."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start = time.perf_counter()
    for q in questions:
        prompt = tokenizer(q.prompt, return_tensors="pt").input_ids
        target = tokenizer(q.prompt + " " + q.answer, return_tensors="pt").input_ids[0, prompt.size(1):]
        ids = torch.cat([prompt[0], target]).unsqueeze(0)

        def prob(input_ids):
            log_probs = torch.log_softmax(model(input_ids).logits[:, prompt.size(1) - 1:-1].float(), -1)
            return log_probs.gather(-1, input_ids[:, prompt.size(1):].unsqueeze(-1)).sum((1, 2)).exp()

        lig = LayerIntegratedGradients(prob, model.get_input_embeddings())
        lig.attribute(ids, baselines=torch.zeros_like(ids), n_steps=n_steps, internal_batch_size=2)
    return len(questions) / (time.perf_counter() - start)


def main():
    server, batch, model_dir = sys.argv[1:4]
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    n_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 16
    captum_rows = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    work = tempfile.mkdtemp()
    rows_path = os.path.join(work, "rows.jsonl")
    questions = write_rows(rows_path, rows)
    port = free_port()
    process = subprocess.Popen([server, f"--model=default={model_dir}", f"--listen=127.0.0.1:{port}",
                                "--metrics_listen="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if subprocess.run([os.path.join(os.path.dirname(batch), "attribution-cli"), "health",
                               f"--server=127.0.0.1:{port}"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        print(f"{rows} rows, integrated gradients {n_steps} steps (Gauss-Legendre, default baseline), one server, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
        print("| run | rows/s | wall s |\n|---|---|---|")
        for window in (1, 8, 32, 128):
            output = os.path.join(work, f"out-{window}.jsonl")
            start = time.perf_counter()
            subprocess.run([batch, f"--input={rows_path}", f"--output={output}", f"--server=127.0.0.1:{port}",
                            f"--window={window}", f"--n_steps={n_steps}", "--progress=log", "--progress_seconds=1000"],
                           check=True, capture_output=True)
            wall = time.perf_counter() - start
            print(f"| attribution-batch --window={window} | {rows / wall:.1f} | {wall:.1f} |", flush=True)
    finally:
        process.terminate()
        process.wait()
    rate = captum_rows_per_second(model_dir, questions[:captum_rows], n_steps)
    print(f"| Python loop of Captum LayerIntegratedGradients (first {captum_rows} rows) | {rate:.1f} | "
          f"{captum_rows / rate:.1f} |")


if __name__ == "__main__":
    main()
