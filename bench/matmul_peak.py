#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The device's measured matmul peak, the denominator of scripts/gpu-check's MFU: the best TFLOP/s of
an N x N x N matmul over a few repeats of back-to-back products (GPU.md: bf16 8192^3 on an H100 gives
770-800). Prints one JSON line.

Usage: matmul_peak.py [--device cuda] [--dtype bfloat16] [--n 8192] [--repeats 5] [--calls 20]
"""
import argparse
import json
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    a = torch.randn(args.n, args.n, device=args.device, dtype=DTYPES[args.dtype])
    b = torch.randn(args.n, args.n, device=args.device, dtype=DTYPES[args.dtype])
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)  # warm-up: library selection, clocks
    best = 0.0
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(args.calls):
            torch.mm(a, b, out=out)
        synchronize(args.device)
        best = max(best, 2.0 * args.n ** 3 * args.calls / (time.perf_counter() - start) / 1e12)
    print(json.dumps({"device": args.device, "dtype": args.dtype, "n": args.n, "tflops": best,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
