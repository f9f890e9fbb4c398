# SPDX-License-Identifier: Apache-2.0
"""The C++ client as another team's CMake project takes it: `cmake --install BUILD --component attribution_client`,
then find_package(AttributionClient) and attribution::client in a project of its own
(tests/install/cpp_client_consumer), built and run against the real server. Its token ids are checked against
transformers' tokenizer and its log-probability against transformers' model; two modules of one process use its
shared library."""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
import torch
import transformers

from conftest import DEFAULT_MODEL, PROMPT, REPO

TARGET = " Yes"


def _run(*command: str, cwd: pathlib.Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    cmake = os.environ.get("ATTRIBUTION_CMAKE", "cmake")
    build = os.environ.get("ATTRIBUTION_BUILD_DIR", str(REPO / "build"))
    work = tmp_path_factory.mktemp("cpp-client")
    prefix = work / "prefix"
    _run(cmake, "--install", build, "--component", "attribution_client", "--prefix", str(prefix), cwd=work)
    # Nothing of ours but the installed tree: no source folder, no build folder on its include path.
    assert sorted(p.name for p in (prefix / "include").rglob("*.h")) == ["attribution_client.h"]
    project = work / "build"
    _run(cmake, "-S", str(REPO / "tests" / "install" / "cpp_client_consumer"), "-B", str(project),
         f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release", cwd=work)
    _run(cmake, "--build", str(project), cwd=work)
    return project / "consumer"


def test_an_installed_client_builds_into_another_project_and_answers_as_references_do(consumer, server):
    lines = dict(line.split(" ", 1) for line in _run(str(consumer), server.address, PROMPT, TARGET,
                                                     cwd=consumer.parent).splitlines())
    assert lines["models"] == "default"
    ids = [int(i) for i in lines["prompt_ids"].split()]
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    assert ids == tokenizer(PROMPT).input_ids
    # The target as it follows the prompt (the server's default tokenization).
    whole = tokenizer(PROMPT + TARGET).input_ids
    assert whole[:len(ids)] == ids
    target = whole[len(ids):]
    model = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids + target])).logits[0].log_softmax(-1)
    expected = sum(float(logits[len(ids) - 1 + t, token]) for t, token in enumerate(target))
    assert float(lines["total_log_prob"]) == pytest.approx(expected, abs=1e-4)


def test_two_modules_of_one_process_use_the_shared_client(consumer, server):
    """Two plugins each linking the static client aborted the process at the second's load (protobuf registered
    attribution.proto twice); each linking attribution::client_shared, both answer."""
    project = consumer.parent
    plugins = [str(project / f"libplugin_{name}.so") for name in ("a", "b")]
    output = _run(str(project / "two_plugins"), *plugins, server.address, PROMPT, TARGET, cwd=project)
    totals = [float(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("total_log_prob ")]
    single = dict(line.split(" ", 1) for line in _run(str(consumer), server.address, PROMPT, TARGET,
                                                      cwd=project).splitlines())
    assert totals == [pytest.approx(float(single["total_log_prob"]), abs=1e-6)] * 2
    libraries = sorted(p.name for p in (consumer.parent.parent / "prefix").rglob("libattribution_client*"))
    assert libraries == ["libattribution_client.a", "libattribution_client.so"]


def test_an_installed_client_names_a_server_it_cannot_reach(consumer):
    result = subprocess.run([str(consumer), "127.0.0.1:1", PROMPT, TARGET], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "127.0.0.1:1" in result.stderr
