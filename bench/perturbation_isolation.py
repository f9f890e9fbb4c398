#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Logprobs latency beside long perturbation attributions, whose rows are score rows as Logprobs' are.

Starts SERVER_BINARY on the default model, times 20 idle Logprobs calls, then runs a feature ablation of
300 and of 1000 tokens and a 300-sample LIME, each with one Logprobs call every 0.2 s beside it, and prints
the attribution's wall time and the Logprobs calls' median / max latency. Every call has a 300 s deadline,
so the attribution, sent first, has the earlier one.

Usage: perturbation_isolation.py SERVER_BINARY
"""
import os
import statistics
import sys
import tempfile
import threading
import time

import grpc
from attribution_client._generated.attribution.v1 import attribution_pb2 as pb
from attribution_client._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc
from serving import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [(pb.FEATURE_ABLATION, 300), (pb.FEATURE_ABLATION, 1000), (pb.LIME, 300)]


def timed(call, request):
    started = time.time()
    call(request, timeout=300)
    return time.time() - started


def main():
    with tempfile.TemporaryDirectory() as work:
        server, port = serve(sys.argv[1], os.path.join(ROOT, "models/tiny-qa-llama"), work)
        try:
            stub = pb_grpc.AttributionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            logprobs = pb.LogprobsRequest(model="m", prompt=pb.Input(text=b"Question: Is the sky green? Answer:"),
                                          target=pb.Input(text=b" Yes"))
            for _ in range(5):
                stub.Logprobs(logprobs, timeout=30)
            idle = [timed(stub.Logprobs, logprobs) for _ in range(20)]
            for method, tokens in CASES:
                request = pb.AttributeRequest(model="m", method=method, target=pb.Input(token_ids=[5, 6]),
                                              prompt=pb.Input(token_ids=[5 + (i * 7) % 3000 for i in range(tokens)]))
                if method == pb.LIME:
                    request.n_samples = 300
                took = {}
                long_call = threading.Thread(target=lambda: took.setdefault("s", timed(stub.Attribute, request)))
                long_call.start()
                time.sleep(0.5)
                beside = []
                while long_call.is_alive():
                    beside.append(timed(stub.Logprobs, logprobs))
                    time.sleep(0.2)
                long_call.join()
                print(f"{pb.Method.Name(method)} of {tokens} tokens: {took['s']:.1f} s; {len(beside)} Logprobs calls beside "
                      f"it, median {statistics.median(beside) * 1000:.0f} ms, max {max(beside) * 1000:.0f} ms "
                      f"(idle median {statistics.median(idle) * 1000:.0f} ms)", flush=True)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
