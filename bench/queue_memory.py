#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Peak resident memory of a server while many long integrated-gradient requests are queued.

Starts the server binary on a hidden-512 Llama (tools/make_llama.py, with the default model's
tokenizer), fires concurrent Attribute calls of S steps over P-token prompts through attribution-cli,
and samples the server's peak resident memory (VmHWM) until it settles; the calls are then abandoned:
what is measured is what the queue holds, not how long the work takes. It does so twice, on a fresh
server each time: with one call (the model, and the activations of the batches the executor runs) and
with N calls. The queue's share is the difference: what N - 1 more queued calls hold. Prints one row.

Usage: queue_memory.py SERVER_BINARY CLI_BINARY [--requests 64] [--steps 512] [--prompt-tokens 64]
                       [--model-dir /tmp/llama-512x8] [--settle 20] [--label NAME]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


def make_model(model_dir):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools/make_llama.py"), model_dir], check=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "models/tiny-qa-llama", name), model_dir)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("cli")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--model-dir", default="/tmp/llama-512x8")
    parser.add_argument("--settle", type=float, default=20, help="seconds without a new peak before stopping")
    parser.add_argument("--label", default="", help="the table's first column (default: the server path)")
    args = parser.parse_args()
    make_model(args.model_dir)

    one = peak_kib(args, 1)
    many = peak_kib(args, args.requests)
    print(f"| {args.label or args.server} | {args.requests} | {args.steps} | {args.prompt_tokens} | {one / 1024:.0f} | "
          f"{many / 1024:.0f} | {(many - one) / 1024:.0f} | {(many - one) / 1024 / (args.requests - 1):.1f} |")


def peak_kib(args, requests):
    """The server's peak resident memory (KiB) with `requests` calls in flight."""
    work = tempfile.mkdtemp()
    port_file = os.path.join(work, "ports")
    server = subprocess.Popen([args.server, f"--model=m={args.model_dir}", "--listen=127.0.0.1:0", "--metrics_listen=",
                               f"--port_file={port_file}", f"--max_steps={args.steps}"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    clients = []
    try:
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if server.poll() is not None:
                raise RuntimeError("server exited: " + open(os.path.join(work, "server.log")).read())
            time.sleep(0.2)
        port = open(port_file).read().split()[0]
        # Distinct prompts of about P tokens each (single-letter words: one SentencePiece token each, mostly).
        for r in range(requests):
            words = [chr(ord("a") + (r * 7 + i * 3) % 26) for i in range(args.prompt_tokens - 1)]
            clients.append(subprocess.Popen(
                [args.cli, "attribute", f"--server=127.0.0.1:{port}", "--prompt=" + " ".join(words), "--target= x",
                 "--target_tokenization=separate", f"--n_steps={args.steps}", "--json"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        peak, last_rise = 0, time.time()
        while time.time() - last_rise < args.settle:
            hwm = status_kib(server.pid, "VmHWM")
            if hwm > peak:
                peak, last_rise = hwm, time.time()
            time.sleep(0.2)
        return peak
    finally:
        for c in clients:
            c.kill()
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print("| server | requests | steps | prompt tokens | peak, 1 call (MiB) | peak, N calls (MiB) | queue's share (MiB) "
          "| per queued call (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    main()
