#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The monitoring stack against the real server: Debian's prometheus runs deploy/compose/prometheus.yml
(promtool checks it first; only the target is pointed at a server started here on the default model),
attribution-bench puts load on the server (and a few bad calls make error series), and every query of
every panel of deploy/grafana/dashboards/attribution.json must return data from that Prometheus.

The GPU-memory panel's allocator series exist only for models on CUDA devices: on a CPU-only server
that one query may be empty, as long as the panel's other query (resident weights) has data.

Usage: monitoring_check.py SERVER_BINARY CLI_BINARY BENCH_BINARY
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CPU_ONLY_SERIES = "attribution_device_memory_bytes"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"monitoring_check: timed out waiting for {what}")


def query(prometheus, expr):
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise SystemExit(f"monitoring_check: query failed: {expr}: {body}")
    return body["data"]["result"]


def main():
    server_binary, cli, bench = sys.argv[1:4]
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"monitoring_check: {tool} not found (scripts/setup installs Debian's prometheus)")
    compose_config = os.path.join(ROOT, "deploy/compose/prometheus.yml")
    subprocess.run(["promtool", "check", "config", compose_config], check=True)

    work = tempfile.mkdtemp(prefix="monitoring_check.")
    processes = []
    try:
        ports_file = os.path.join(work, "ports")
        server_log = open(os.path.join(work, "server.log"), "w")
        processes.append(subprocess.Popen([server_binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                           f"--port_file={ports_file}"], stderr=server_log))
        wait_for(lambda: os.path.exists(ports_file) and len(open(ports_file).read().split()) == 2, 120, "the server")
        grpc_port, metrics_port = open(ports_file).read().split()

        config = yaml.safe_load(open(compose_config))
        config["global"]["scrape_interval"] = "1s"
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        prometheus = free_port()
        processes.append(subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{prometheus}"], stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "prometheus.log"), "w")))
        wait_for(lambda: any(r["value"][1] == "1" for r in query(prometheus, "up")), 60, "Prometheus to scrape the server")

        # Load for the rate() windows, and calls that fail (unknown model: NOT_FOUND) for the error panel.
        load = subprocess.Popen([bench, f"--server=127.0.0.1:{grpc_port}", "--concurrency=4", "--duration=25",
                                 "--mix=attribute=1,logprobs=2,generate=1"], stdout=subprocess.DEVNULL)
        processes.append(load)
        for _ in range(3):
            subprocess.run([cli, "logprobs", f"--server=127.0.0.1:{grpc_port}", "--model=no-such-model",
                            "--prompt=x", "--target=y"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(15)

        dashboard = json.load(open(os.path.join(ROOT, "deploy/grafana/dashboards/attribution.json")))
        failures = []
        print(f"{'panel':<40} {'series':>6}  query")
        for panel in dashboard["panels"]:
            returned = []
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "20s")
                series = query(prometheus, expr)
                returned.append((target["expr"], len(series)))
                print(f"{panel['title'][:40]:<40} {len(series):>6}  {expr}")
            for expr, count in returned:
                allowed_empty = CPU_ONLY_SERIES in expr and any(c > 0 for _, c in returned)
                if count == 0 and not allowed_empty:
                    failures.append(f"panel \"{panel['title']}\": no data for {expr}")
        load.wait(timeout=60)
        for failure in failures:
            print("FAIL:", failure)
        print(f"monitoring_check: {len(dashboard['panels'])} panels, "
              f"{sum(len(p['targets']) for p in dashboard['panels'])} queries, {len(failures)} without data")
        return 1 if failures else 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
