# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the Python client's end-to-end tests: the real server binary on the committed default
model (models/tiny-qa-llama), and the C++ CLI (attribution-cli --json) as the reference client.

ctest (tests/CMakeLists.txt) passes the binaries' paths in ATTRIBUTION_SERVER_BINARY and
ATTRIBUTION_CLI_BINARY and puts the freshly built package first on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "tiny-qa-llama"
PROMPT = "Ann lives in York. The kettle is red. The box is huge. Q: Is the kettle warm? A:"


def _binary(variable: str, relative: str) -> str:
    path = os.environ.get(variable) or str(REPO / "build" / relative)
    if not os.path.exists(path):
        pytest.fail(f"{path} does not exist (set {variable} or build it)")
    return path


class Server:
    """One attribution-server process on a free loopback port; stop() sends SIGTERM and waits."""

    def __init__(self, extra_args: Optional[List[str]] = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="attribution-py-")
        port_file = pathlib.Path(self.dir.name) / "port"
        self.log = open(pathlib.Path(self.dir.name) / "server.log", "w+")
        self.process = subprocess.Popen(
            [_binary("ATTRIBUTION_SERVER_BINARY", "server/attribution-server"), f"--model=default={DEFAULT_MODEL}",
             "--listen=127.0.0.1:0", "--metrics_listen=", f"--port_file={port_file}", *(extra_args or [])],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the server did not start:\n{self.log.read()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self.address = f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        """SIGSTOP, returning once every thread has stopped: the kernel stops threads one by one, so right
        after kill() a thread can still answer a call. Resume with process.send_signal(SIGCONT)."""
        self.process.send_signal(signal.SIGSTOP)
        status = os.waitpid(self.process.pid, os.WUNTRACED)[1]
        if not os.WIFSTOPPED(status):
            self.process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            raise RuntimeError(f"the server exited ({self.process.returncode}) instead of stopping")

    def log_lines(self, until: Callable[[List[dict]], bool], seconds: float = 10) -> Tuple[str, List[dict]]:
        """The log's text and its JSON lines, once `until(lines)` holds or after `seconds`: each call's line
        is written as the call ends, which can be after the client has its answer."""
        deadline = time.monotonic() + seconds
        while True:
            with open(self.log.name) as f:
                text = f.read()
            # Whole lines only: the server may be writing one, and a line cut short there does not parse.
            text = text[:text.rfind("\n") + 1]
            lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            if until(lines) or time.monotonic() > deadline:
                return text, lines
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        self.dir.cleanup()


def cli(address: str, command: str, *flags: str) -> str:
    """attribution-cli's standard output for one command against `address`."""
    result = subprocess.run([_binary("ATTRIBUTION_CLI_BINARY", "client/attribution-cli"), command,
                             f"--server={address}", "--color=false", *flags],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"attribution-cli {command} failed: {result.stderr}"
    return result.stdout


def cli_json(address: str, command: str, *flags: str) -> dict:
    return json.loads(cli(address, command, "--json", *flags))


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()
