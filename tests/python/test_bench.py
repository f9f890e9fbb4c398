# SPDX-License-Identifier: Apache-2.0
"""attribution-bench against a fake server on loopback whose Logprobs answers take known times: the
latency percentiles it reports are nearest-rank ones (a closed-form check), and an open loop asked for more
calls than it can send stops at its duration and says how many it sent."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest

from attribution_client._generated.attribution.v1 import attribution_pb2 as pb
from attribution_client._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc


class SteppedLatencies(pb_grpc.AttributionServiceServicer):
    """Logprobs call k (counted from 0) answers after (k % 10 + 1) * step_seconds, or at once when 0."""

    def __init__(self, step_seconds: float) -> None:
        self.step_seconds = step_seconds
        self.calls = 0
        self.lock = threading.Lock()

    def Logprobs(self, request, context):
        with self.lock:
            k = self.calls
            self.calls += 1
        time.sleep((k % 10 + 1) * self.step_seconds)
        # One scored token, as a server answers a text target (the client checks there is one).
        return pb.LogprobsResponse(target=[pb.TokenLogprob(token=pb.Token(id=1, log_prob=-1.0))], total_log_prob=-1.0)


@pytest.fixture
def fake_server():
    servers = []

    def start(step_seconds: float):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        service = SteppedLatencies(step_seconds)
        pb_grpc.add_AttributionServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", service

    yield start
    for server in servers:
        server.stop(grace=None)


def bench(address: str, *flags: str, returncode: int = 0) -> dict:
    binary = os.environ["ATTRIBUTION_BENCH_BINARY"]
    done = subprocess.run([binary, f"--server={address}", "--model=fake", "--mix=logprobs=1", "--json", *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == returncode, done.stderr
    return json.loads(done.stdout)


def test_percentiles_are_nearest_rank(fake_server):
    # 100 calls, ten each answering in 0.1, 0.2, ..., 1.0 s: the nearest-rank p50 is the 50th fastest call
    # (the 0.5 s class), p90 the 90th (0.9 s), p99 the 99th (1.0 s). One rank higher, as the bench once
    # read them, is the next class up: the 100 ms between classes is the margin for the host's noise.
    address, service = fake_server(0.1)
    report = bench(address, "--rate=20", "--duration=5")
    logprobs = report["rpcs"]["logprobs"]
    assert logprobs["calls"] == 100 == service.calls
    assert logprobs["ok"] == 100
    assert 500 <= logprobs["p50_ms"] < 600
    assert 900 <= logprobs["p90_ms"] < 1000
    assert 1000 <= logprobs["p99_ms"] <= logprobs["max_ms"] < 1100


def test_a_rate_above_what_the_client_can_send_stops_at_the_duration(fake_server):
    address, service = fake_server(0.0)
    report = bench(address, "--rate=10000000", "--duration=1")
    assert report["rate"] == 10000000
    # Sending stopped at the end of the second rather than after rate x duration calls.
    assert report["sent_per_second"] < 10000000
    # Every call sent was answered or failed (gRPC refuses some at the client under such a flood).
    assert report["rpcs"]["logprobs"]["calls"] == pytest.approx(report["sent_per_second"] * 1.0, rel=1e-9)
    assert 0 < report["rpcs"]["logprobs"]["ok"] <= service.calls


def test_no_call_answered_shows_no_latency(fake_server):
    address, _ = fake_server(0.0)
    done = subprocess.run([os.environ["ATTRIBUTION_BENCH_BINARY"], f"--server={address}", "--model=fake",
                           "--mix=attribute=1", "--concurrency=1", "--duration=0.5", "--json"],
                          capture_output=True, text=True, timeout=60)
    # Exit 1: a load without one succeeded call measured nothing; its report is still printed.
    assert done.returncode == 1 and "no call succeeded" in done.stderr, done.stderr
    attribute = json.loads(done.stdout)["rpcs"]["attribute"]
    assert attribute["ok"] == 0 and attribute["calls"] > 0  # the fake server does not implement Attribute
    assert attribute["p50_ms"] is None and attribute["p99_ms"] is None and attribute["max_ms"] is None


def test_weights_of_any_finite_size_share_the_calls_and_a_closed_loop_says_what_it_sent(fake_server):
    # Weights of 1e308 summed to inf: every share was 0 and every call went to the last RPC. A closed loop
    # reported 0 calls sent a second, whatever it sent.
    address, _ = fake_server(0.0)
    report = bench(address, "--mix=attribute=1e308,logprobs=1e308", "--concurrency=1", "--duration=0.5")
    calls = report["rpcs"]["attribute"]["calls"] + report["rpcs"]["logprobs"]["calls"]
    assert report["rpcs"]["attribute"]["calls"] > 0 and report["rpcs"]["logprobs"]["calls"] > 0
    assert report["sent_per_second"] == pytest.approx(calls / 0.5, rel=1e-9)


def test_a_hung_server_ends_the_run_a_timeout_after_its_duration(fake_server):
    # Calls took the client library's deadline, 120 s: a server that stopped answering stretched a 6 s run to
    # 122 s. Each call now has --timeout.
    address, _ = fake_server(3.0)
    started = time.monotonic()
    report = bench(address, "--concurrency=1", "--duration=1", "--timeout=1", returncode=1)  # no call succeeded
    assert time.monotonic() - started < 15
    logprobs = report["rpcs"]["logprobs"]
    assert logprobs["ok"] == 0 and logprobs["errors"] == {"DEADLINE_EXCEEDED": logprobs["calls"]}
    assert report["seconds"] < 5


@pytest.mark.parametrize("flags, message", [
    (["--bogus=1"], "unknown flag --bogus"),
    (["--concurrency=abc"], "--concurrency: illegal value \"abc\""),
    (["--ca=/x"], "--ca: given without --tls"),
    (["--background=attribute n_steps=x"], "--background: n_steps: \"x\" is not a number"),
    (["--background=attribute steps=8"], "--background: unknown setting \"steps=8\""),
])
def test_usage_errors_exit_2_naming_the_flag(flags, message):
    """abseil exited 1 on an unknown flag or an unparsable value, where a usage error is 2 in every tool; a bad
    --background value was called an unknown setting."""
    done = subprocess.run([os.environ["ATTRIBUTION_BENCH_BINARY"], "--server=127.0.0.1:1", "--duration=1", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
