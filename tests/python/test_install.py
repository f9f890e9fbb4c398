# SPDX-License-Identifier: Apache-2.0
"""The package installs from the repository into a fresh virtual environment with PyPI dependencies
only (grpcio-tools generating the stubs at build time), and imports there."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from conftest import REPO


def test_installs_into_a_fresh_venv(tmp_path: pathlib.Path):
    # A copy of what the build reads, so that concurrent builds never share build/ folders.
    source = tmp_path / "repo"
    shutil.copytree(REPO / "client" / "python", source / "client" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copytree(REPO / "proto", source / "proto")
    # Nothing of the calling environment (ctest puts a build of the package on PYTHONPATH).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(source / "client" / "python")], check=True,
                   timeout=1200, env=env)
    probe = ("import attribution_client as ac, attribution_client._generated.attribution.v1.attribution_pb2 as pb;"
             "print(ac.__version__, ac.PROTO_PACKAGE, pb.DESCRIPTOR.package);"
             "c = ac.AttributionClient('127.0.0.1:1', max_attempts=1); c.close()")
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout
    assert out.split() == ["1.0.0", "attribution.v1", "attribution.v1"]
    # Generated at build time, never committed.
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "client/python"], capture_output=True, text=True).stdout
    assert "_pb2" not in tracked
