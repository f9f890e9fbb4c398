#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""How long a new connection takes to become ready (TCP + HTTP/2 SETTINGS exchange) on the real
server, idle and while attribution-bench keeps it busy: the time a client's connect timeout must
cover. Prints a Markdown table.

Usage: handshake_latency.py SERVER_BINARY BENCH_BINARY [--connections N] [--load "ATTRIBUTION-BENCH FLAGS"]
"""
import argparse
import os
import shlex
import statistics
import subprocess
import tempfile
import time

import grpc


def handshakes(address, count):
    seconds = []
    for _ in range(count):
        # A channel of its own each time (a distinct arg keeps gRPC from sharing the subchannel).
        channel = grpc.insecure_channel(address, options=[("handshake_latency.nonce", len(seconds))])
        started = time.perf_counter()
        grpc.channel_ready_future(channel).result(timeout=60)
        seconds.append(time.perf_counter() - started)
        channel.close()
        time.sleep(0.05)
    return seconds


def row(label, seconds):
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    over = sum(m > 100 for m in ms)
    return f"| {label} | {len(ms)} | {statistics.median(ms):.2f} | {p99:.2f} | {ms[-1]:.2f} | {over} |"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("bench")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--load", default="--mix=attribute=1 --n_steps=512 --concurrency=2",
                        help="attribution-bench flags of the load that keeps the server busy")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="handshake_latency.")
    ports = os.path.join(work, "ports")
    server = subprocess.Popen([args.server, "--listen=127.0.0.1:0", "--metrics_listen=", f"--port_file={ports}"],
                              stderr=subprocess.DEVNULL)
    load = None
    try:
        while not (os.path.exists(ports) and open(ports).read().split()):
            time.sleep(0.05)
        address = f"127.0.0.1:{open(ports).read().split()[0]}"
        idle = handshakes(address, args.connections)
        load = subprocess.Popen([args.bench, f"--server={address}", "--duration=3600", *shlex.split(args.load)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        busy = handshakes(address, args.connections)
        print("| server | connections | p50 ms | p99 ms | max ms | over 100 ms |")
        print("|---|---:|---:|---:|---:|---:|")
        print(row("idle", idle))
        print(row(f"busy: {args.load}", busy))
    finally:
        for process in (load, server):
            if process is not None:
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
