#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""How long a cancelled integrated-gradients call keeps the device after the client cancels: a
saliency call (gradient rows, which cannot run inside another gradient batch's pauses) is sent the
moment the long call is cancelled, and its latency is compared with its latency on an idle server.
Prints a Markdown table.

Usage (the test environment's Python, which has the client package):
  cancel_lag.py SERVER_BINARY [SERVER_BINARY ...] [--repeats N] [--model DIR]
"""
import argparse
import os
import random
import statistics
import tempfile
import threading
import time

import attribution_client as ac
from serving import serve

PROMPT = "Ann lives in York. The kettle is red. The box is huge. Q: Is the kettle warm? A:"
# About 500 tokens: one row of it is a long stretch of gradient work that no batch bound can split.
LONG_PROMPT = " ".join(["The kettle is red and the box is huge."] * 45) + " Q: Is the kettle warm? A:"


def probe(client):
    started = time.perf_counter()
    client.attribute(prompt=PROMPT, target=" No", method="saliency")
    return time.perf_counter() - started


def lags(client, prompt, n_steps, repeats):
    seconds = []
    for _ in range(repeats):
        stream = client.attribute_stream(prompt=prompt, target=" No", n_steps=n_steps, timeout=600)
        progressed = threading.Event()

        def read():
            try:
                for event in stream:
                    if event.rows_done > 0:
                        progressed.set()
            except ac.Cancelled:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        progressed.wait(timeout=600)
        time.sleep(random.uniform(0.0, 0.5))  # cancel anywhere inside a batch
        stream.cancel()
        seconds.append(probe(client))
        reader.join()
        time.sleep(0.5)
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("servers", nargs="+")
    parser.add_argument("--repeats", type=int, default=10)
    default_model = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tiny-qa-llama")
    parser.add_argument("--model", default=default_model, help="model directory (default: the default model)")
    args = parser.parse_args()
    random.seed(0)
    print("| server | cancelled call | probe idle ms (median) | probe after cancel ms: median | p90 | max |")
    print("|---|---|---:|---:|---:|---:|")
    for binary in args.servers:
        work = tempfile.mkdtemp(prefix="cancel_lag.")
        server, port = serve(binary, args.model, work)
        address = f"127.0.0.1:{port}"
        try:
            with ac.AttributionClient(address) as client:
                idle = statistics.median(probe(client) for _ in range(10))
                for label, prompt, n_steps in [("IG 1024 steps, 24 tokens", PROMPT, 1024),
                                               ("IG 64 steps, ~500 tokens", LONG_PROMPT, 64)]:
                    ms = sorted(s * 1000 for s in lags(client, prompt, n_steps, args.repeats))
                    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
                    print(f"| {binary} | {label} | {idle * 1000:.1f} | {statistics.median(ms):.1f} | {p90:.1f} | "
                          f"{ms[-1]:.1f} |", flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
