#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""scripts/gpu-check --dry-run on this machine's build: the report is written (Markdown and JSON),
every step is in it with a status, and the steps a CPU can run (the matmul peak, our engine dense and
nf4, one quantized projection, transformers + Captum) ran and measured something. What only a GPU node runs (the build there,
`ctest -L gpu`, parity) may be skipped, never failed.

Usage: gpu_check_dry_run_test.py BUILD_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = ["versions", "build", "ctest_gpu", "matmul_peak", "model", "engine", "engine_nf4", "quantized_matmul",
         "python_reference", "parity"]
STATUSES = {"ok", "failed", "timeout", "skipped"}


def positive(value, what):
    assert isinstance(value, (int, float)) and value > 0, f"{what} = {value!r}, expected a number > 0"


def check_engine(results, name):
    for job in ("ig64", "ig512", "seed000"):
        positive(results[job]["seconds"], f"{name}.{job}.seconds")
        positive(results[job]["steps_per_second"], f"{name}.{job}.steps_per_second")
        positive(results[job]["tflops"], f"{name}.{job}.tflops")
        positive(results[job]["mfu"], f"{name}.{job}.mfu")
    assert results["seed000"]["runs"] >= 3, "seed 000's p50 comes from several runs"
    positive(results["fa"]["rows_per_second"], f"{name}.fa.rows_per_second")
    for batch in ("1", "32"):
        positive(results["decode"][batch]["decode_tokens_per_second"], f"{name}.decode[{batch}]")
    positive(results["resident_weight_bytes"], f"{name}.resident_weight_bytes")


def main():
    build = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = os.path.join(tmp, "out")
        command = [os.path.join(ROOT, "scripts", "gpu-check"), "--dry-run", "--build-dir", build, "--model-dir",
                   os.path.join(tmp, "model"), "/nonexistent", out]
        run = subprocess.run(command, capture_output=True, text=True, timeout=280)
        print(run.stdout[-6000:], run.stderr[-3000:], sep="\n")
        for name in os.listdir(os.path.join(out, "logs")) if run.returncode else []:
            print(f"--- {name}\n" + open(os.path.join(out, "logs", name)).read()[-3000:])
        assert run.returncode == 0, f"gpu-check exited {run.returncode}"

        markdown = open(os.path.join(out, "gpu-check.md")).read()
        assert "| step | status | s | measure | value |" in markdown, markdown
        report = json.load(open(os.path.join(out, "gpu-check.json")))
        assert report["mode"] == "dry-run"
        steps = {s["name"]: s for s in report["steps"]}
        assert list(steps) == STEPS, list(steps)
        for step in steps.values():
            assert step["status"] in STATUSES, step
            assert isinstance(step["seconds"], (int, float)), step
            assert f"| {step['title']} | {step['status']} |" in markdown, step["title"]
        for name in ("versions", "model", "matmul_peak", "engine", "engine_nf4", "quantized_matmul", "python_reference"):
            assert steps[name]["status"] == "ok", steps[name]
        for name in ("build", "ctest_gpu", "parity"):  # a device's steps: skipped on a CPU (or ok)
            assert steps[name]["status"] in ("ok", "skipped"), steps[name]

        positive(steps["matmul_peak"]["results"]["tflops"], "matmul_peak.tflops")
        check_engine(steps["engine"]["results"], "engine")
        check_engine(steps["engine_nf4"]["results"], "engine_nf4")
        # On a CPU only the dense and dequantize-then-matmul columns exist (no fused kernel runs there).
        projections = steps["quantized_matmul"]["results"]
        assert {(p["format"], p["rows"]) for p in projections} == {(f, r) for f in ("int8", "nf4") for r in (1, 32)}
        for p in projections:
            positive(p["dense_s"], "quantized_matmul.dense_s")
            positive(p["dequantize_matmul_s"], "quantized_matmul.dequantize_matmul_s")
            assert p["fused_s"] == 0, p
        reference = steps["python_reference"]["results"]
        for job in ("ig_seed", "seed000"):
            positive(reference[job]["seconds"], f"python_reference.{job}.seconds")
            positive(reference[job]["speedup_of_ours"], f"python_reference.{job}.speedup_of_ours")
        assert steps["ctest_gpu"]["results"]["total"] >= 1, "ctest -L gpu found no test"
        assert "gpu_parity_test" in steps["parity"]["results"]["binaries"], steps["parity"]["results"]
    print("gpu-check dry run: report complete")


if __name__ == "__main__":
    main()
