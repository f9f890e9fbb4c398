#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Logprobs latency beside clients sending requests of megabytes of valid text.

Starts SERVER_BINARY on the default model, times Logprobs calls of 8 tokens (one every 50 ms) for 10 s idle,
then for 15 s while two client processes send AttributeComponents requests of 64 equal-length pairs of 15 KB
(2 MB each) back to back, and prints the Logprobs calls' p50 / p90 and each component request's wall time.
Two cases: a wrong answer other than the answer (each request would answer 12 MB, over the 4 MiB limit) and
the same token (refused for it). Server CPU is read from /proc.

Usage: large_request_isolation.py SERVER_BINARY
"""
import multiprocessing
import os
import random
import sys
import tempfile
import time

import grpc
from attribution_client._generated.attribution.v1 import attribution_pb2 as pb
from attribution_client._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc
from serving import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["apple", "house", "river", "green", "stone", "light", "music", "table"]
FLOOD_SECONDS = 15


def stub(port):
    options = [("grpc.max_send_message_length", 8 << 20), ("grpc.max_receive_message_length", 8 << 20)]
    return pb_grpc.AttributionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))


def text(rng, size):
    words, length = [], 0
    while length < size:
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words).encode()


def flood(port, wrong_answer, stop_at, walls):
    rng = random.Random(6)
    request = pb.AttributeComponentsRequest(
        model="m", answer=pb.Input(token_ids=[5]), wrong_answer=pb.Input(token_ids=[wrong_answer]),
        pairs=[pb.PromptPair(clean=pb.Input(text=t), corrupted=pb.Input(text=t))
               for t in (text(rng, 15000) for _ in range(64))])
    service = stub(port)
    while time.time() < stop_at:
        started = time.time()
        try:
            service.AttributeComponents(request, timeout=60)
        except grpc.RpcError:
            pass  # refused, as both cases are: the wall time is what counts
        walls.put(time.time() - started)


def probe(port, seconds):
    service = stub(port)
    request = pb.LogprobsRequest(model="m", prompt=pb.Input(token_ids=list(range(11, 19))),
                                 target=pb.Input(token_ids=[5]))
    latencies, end = [], time.time() + seconds
    while time.time() < end:
        started = time.time()
        service.Logprobs(request, timeout=60)
        latencies.append(time.time() - started)
        time.sleep(0.05)
    return sorted(latencies)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(sorted_seconds, share):
    return f"{sorted_seconds[int(len(sorted_seconds) * share)] * 1000:.1f}"


def main():
    print("| case | Logprobs p50 / p90 ms (idle) | server cores | component requests | wall each, s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        server, port = serve(sys.argv[1], os.path.join(ROOT, "models/tiny-qa-llama"), work)
        try:
            for case, wrong_answer in (("a response of 12 MB", 6), ("wrong answer = answer", 5)):
                idle = probe(port, 10)
                walls = multiprocessing.Queue()
                stop_at = time.time() + FLOOD_SECONDS + 2
                clients = [multiprocessing.Process(target=flood, args=(port, wrong_answer, stop_at, walls))
                           for _ in range(2)]
                for client in clients:
                    client.start()
                time.sleep(2)
                cpu, started = cpu_seconds(server.pid), time.time()
                beside = probe(port, FLOOD_SECONDS)
                cores = (cpu_seconds(server.pid) - cpu) / (time.time() - started)
                for client in clients:
                    client.join()
                each = sorted(walls.get() for _ in range(walls.qsize()))
                print(f"| {case} | {ms(beside, 0.5)} / {ms(beside, 0.9)} ({ms(idle, 0.5)} / {ms(idle, 0.9)}) "
                      f"| {cores:.2f} | {len(each)} | {each[0]:.3f}–{each[-1]:.3f} |", flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
