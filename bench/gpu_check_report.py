#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""scripts/gpu-check's Python side (standard library only, except `versions`, which asks torch):

  run-info OUT_JSON KEY=VALUE...    the run's settings (VALUE as JSON where it parses, else a string)
  versions OUT_JSON                 the machine and tool versions (nvidia-smi, nvcc, torch, compilers)
  gpu-test-targets CTEST_JSON       the build targets of the gpu-labelled tests (`ctest -N --show-only=json-v1`)
  build-summary BUILD OUT_JSON TARGET...   which targets' binaries the build left
  model-summary MODEL_DIR OUT_JSON  the benchmark model's shape and weight bytes
  ctest-summary LOG OUT_JSON        counts of a `ctest` run; exit 77 when every test skipped, 1 on failures
  parity GTEST_DIR OUT_JSON         GoogleTest's JSON reports of the gpu tests; exit 77 when no case ran
  json-lines LOG OUT_JSON           the "JSON {...}" lines a benchmark printed, as one list
  record OUT_DIR NAME STATUS SECONDS RC   one step's record (OUT_DIR/steps/NAME.json, with results/NAME.note)
  report OUT_DIR                    OUT_DIR/gpu-check.json and gpu-check.md from the steps' records and results

The report's steps, their results and the figures derived from them (steps/s, TFLOP/s, MFU against the
matmul peak measured in the same run, rows/s, decode tokens/s, Captum's seconds over ours) are
documented in README.md ("Checking a GPU node").
"""
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

# Report order (the issue's), titles, and which step's results each figure comes from.
STEPS = [
    ("versions", "versions"),
    ("build", "build (engine, benchmarks, gpu tests, server)"),
    ("ctest_gpu", "ctest -L gpu"),
    ("matmul_peak", "matmul peak"),
    ("model", "random Llama (the benchmarks' model)"),
    ("engine", "our engine, dense"),
    ("engine_nf4", "our engine, nf4"),
    ("quantized_matmul", "one quantized projection: fused kernel vs dequantize + matmul"),
    ("python_reference", "transformers + Captum (the seeds' way)"),
    ("parity", "parity on the device"),
]


def run(command):
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def run_info(out_path, *pairs):
    info = load(out_path, {})
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            info[key] = json.loads(value)
        except ValueError:
            info[key] = value
    write(out_path, info)


def build_summary(build_dir, out_path, *targets):
    built = set()
    for root, _, files in os.walk(build_dir):
        built.update(f for f in files if f in targets and os.access(os.path.join(root, f), os.X_OK))
    write(out_path, {"build_dir": build_dir, "targets": list(targets), "built": [t for t in targets if t in built],
                     "missing": [t for t in targets if t not in built]})


def model_summary(model_dir, out_path):
    config = load(os.path.join(model_dir, "config.json"), {})
    shape = (f"{config.get('model_type')} hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} "
             f"layers, {config.get('num_attention_heads')} heads ({config.get('num_key_value_heads')} kv), "
             f"intermediate {config.get('intermediate_size')}, vocab {config.get('vocab_size')}, {config.get('dtype')}")
    weights = sum(os.path.getsize(p) for p in glob.glob(os.path.join(model_dir, "*.safetensors")))
    write(out_path, {"dir": model_dir, "shape": shape, "bytes": weights, "config": config})


def versions(out_path):
    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
             "python": platform.python_version()}
    gpu = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    facts["gpu"] = gpu if gpu else "none (nvidia-smi not found or failed)"
    nvcc = run(["nvcc", "--version"])
    facts["nvcc"] = next((line for line in (nvcc or "").splitlines() if "release" in line), nvcc or "not found")
    for tool, command in (("cmake", ["cmake", "--version"]), ("cxx", ["c++", "--version"]),
                          ("ninja", ["ninja", "--version"])):
        out = run(command)
        facts[tool] = out.splitlines()[0] if out else "not found"
    with open("/proc/meminfo") as f:
        facts["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    import torch
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                 cxx11_abi=torch.compiled_with_cxx11_abi(), cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        facts["device_name"] = torch.cuda.get_device_name(0)
    write(out_path, facts)


def gpu_test_targets(ctest_json_path):
    tests = load(ctest_json_path, {}).get("tests", [])
    targets = set()
    for test in tests:
        labels = [p["value"] for p in test.get("properties", []) if p["name"] == "LABELS"]
        command = test.get("command", [])
        # Fixture setups (Python scripts) run through the interpreter; only binaries are targets.
        if labels and "gpu" in labels[0] and command and not command[0].endswith(("python", "python3")):
            targets.add(os.path.basename(command[0]))
    print(" ".join(sorted(targets)))


def ctest_summary(log_path, out_path):
    with open(log_path, errors="replace") as f:
        log = f.read()
    total = re.search(r"tests passed, (\d+) tests failed out of (\d+)", log)
    failed, total = (int(total.group(1)), int(total.group(2))) if total else (0, 0)
    skipped = len(re.findall(r"\*\*\*Skipped", log))
    not_run = re.findall(r"^\s+\d+ - (\S+) \((\w+)\)", log, re.M)
    summary = {"total": total, "failed": failed, "skipped": skipped, "passed": total - failed - skipped,
               "not_passed": [f"{name} ({why})" for name, why in not_run]}
    write(out_path, summary)
    if failed or total == 0:
        sys.exit(1)
    if skipped == total:
        sys.exit(77)


def parity(gtest_dir, out_path):
    binaries = {}
    for path in sorted(glob.glob(os.path.join(gtest_dir, "*.json"))):
        report = load(path, {})
        counts = {"passed": 0, "failed": 0, "skipped": 0, "failed_cases": []}
        for suite in report.get("testsuites", []):
            for case in suite.get("testsuite", []):
                name = f"{suite['name']}.{case['name']}"
                if case.get("result") == "SKIPPED":
                    counts["skipped"] += 1
                elif case.get("failures"):
                    counts["failed"] += 1
                    counts["failed_cases"].append(name)
                else:
                    counts["passed"] += 1
        binaries[os.path.splitext(os.path.basename(path))[0]] = counts
    totals = {k: sum(b[k] for b in binaries.values()) for k in ("passed", "failed", "skipped")}
    write(out_path, {"binaries": binaries, **totals})
    if totals["failed"]:
        sys.exit(1)
    if not totals["passed"]:
        sys.exit(77)


def json_lines(log_path, out_path):
    with open(log_path) as f:
        write(out_path, [json.loads(line[5:]) for line in f if line.startswith("JSON ")])


def record(out_dir, name, status, seconds, rc):
    note_path = os.path.join(out_dir, "results", name + ".note")
    note = open(note_path).read().strip() if os.path.exists(note_path) else ""
    write(os.path.join(out_dir, "steps", name + ".json"),
          {"name": name, "status": status, "seconds": float(seconds), "rc": int(rc), "note": note})


# --- the report -------------------------------------------------------------------------------------

def engine_figures(method, forward, peak_tflops):
    """Our engine's jobs (method_bench --json) and model runtime (model_forward_bench --json)."""
    figures = {}
    if method:
        figures["resident_weight_bytes"] = method["model"]["resident_weight_bytes"]
        for key, job in method["jobs"].items():
            seconds = job["seconds"]
            tflops = job["flop"] / seconds / 1e12
            entry = {"name": job["name"], "seconds": seconds, "runs": len(job["seconds_all"]), "rows": job["rows"],
                     "rows_per_second": job["rows"] / seconds, "tflops": tflops,
                     "prompt_tokens": job["prompt_tokens"]}
            if key.startswith("ig") or key == "seed000":
                entry["n_steps"] = job["n_steps"]
                entry["steps_per_second"] = job["n_steps"] / seconds
            if peak_tflops:
                entry["mfu"] = tflops / peak_tflops
            figures[key] = entry
    if forward:
        figures.setdefault("resident_weight_bytes", forward["model"]["resident_weight_bytes"])
        figures["decode"] = {str(d["batch"]): d for d in forward.get("decode", [])}
        figures["forward_tokens_per_second"] = forward["forward"]["tokens_per_second"]
        if peak_tflops:
            figures["forward_mfu"] = forward["forward"]["flop"] / forward["forward"]["seconds"] / 1e12 / peak_tflops
    return figures


def results_of(out_dir, name, peak_tflops, engine):
    path = os.path.join(out_dir, "results", name)
    if name in ("engine", "engine_nf4"):
        return engine_figures(load(path + ".method.json"), load(path + ".forward.json"), peak_tflops)
    result = load(path + ".json")
    if name == "python_reference" and result:
        for job, ours in (("ig_seed", "ig64"), ("seed000", "seed000")):
            if job in result:
                result[job].pop("seq_attr", None)  # the attributions are not the report's
                if ours in engine:
                    result[job]["speedup_of_ours"] = result[job]["seconds"] / engine[ours]["seconds"]
    return result


def fmt_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def rows_for(name, results, run):
    """(measure, value) pairs of a step's row group in the Markdown table."""
    if not results:
        return []
    if name == "versions":
        torch = (f"{results['torch']} (CUDA {results['torch_cuda']}, cxx11 ABI {results['cxx11_abi']}, "
                 f"cuda available {results['cuda_available']})")
        return [("GPU", results["gpu"]), ("torch", torch), ("nvcc", results["nvcc"]), ("compiler", results["cxx"]),
                ("cmake", results["cmake"])]
    if name == "build":
        rows = [("build dir", results.get("build_dir", "?"))]
        if "built" in results:
            rows.append(("targets built", f"{len(results['built'])} of {len(results['targets'])}: "
                         + ", ".join(results["built"])))
            if results.get("missing"):
                rows.append(("targets missing", ", ".join(results["missing"])))
        return rows
    if name == "ctest_gpu":
        return [("tests", f"{results['passed']} passed, {results['failed']} failed, {results['skipped']} skipped "
                          f"of {results['total']}")]
    if name == "matmul_peak":
        return [(f"{results['dtype']} {results['n']}³ on {results['device']}", f"{results['tflops']:.2f} TFLOP/s")]
    if name == "model":
        return [("shape", results["shape"]), ("weights", f"{fmt_bytes(results['bytes'])} in {results['dir']}")]
    if name in ("engine", "engine_nf4"):
        rows = []
        for key, label in (("ig64", "IG 64 steps, 81-token prompt"), ("ig512", "IG 512 steps, 81-token prompt")):
            if key in results:
                j = results[key]
                mfu = f", MFU {100 * j['mfu']:.1f}%" if "mfu" in j else ""
                if j.get("mfu", 0) > 1:  # a peak run too small or too short for this device
                    mfu += " (above the measured matmul peak: the peak is underestimated)"
                rows.append((label, f"{j['seconds']:.3f} s: {j['steps_per_second']:.1f} steps/s, "
                                    f"{j['tflops']:.2f} TFLOP/s{mfu}"))
        if "seed000" in results:
            j = results["seed000"]
            rows.append(("seed 000's job (40 tokens, 15 steps) p50", f"{1e3 * j['seconds']:.1f} ms ({j['runs']} runs)"))
        if "fa" in results:
            j = results["fa"]
            rows.append(("FeatureAblation, 81 tokens", f"{j['rows']} rows in {j['seconds']:.3f} s: "
                                                       f"{j['rows_per_second']:.0f} rows/s"))
        for batch, d in results.get("decode", {}).items():
            tps = d.get("decode_tokens_per_second")
            rate = f"{tps:.0f} tokens/s" if tps is not None else "not measurable (no slower than 1 new token)"
            rows.append((f"greedy decode, batch {batch}", f"{rate} ({d['new_tokens']} new after {d['prompt_tokens']})"))
        if "resident_weight_bytes" in results:
            rows.append(("resident weights", fmt_bytes(results["resident_weight_bytes"])))
        return rows
    if name == "python_reference":
        rows = []
        for job, label in (("ig_seed", f"IG 64 steps, 81 tokens, internal batch {run.get('seed_batch', 2)}"),
                           ("seed000", "seed 000's job p50 (internal batch 3)")):
            if job in results:
                j = results[job]
                speedup = f"; ours is {j['speedup_of_ours']:.1f}x faster" if "speedup_of_ours" in j else ""
                rows.append((label, f"{j['seconds']:.3f} s ({len(j['seconds_all'])} runs){speedup}"))
        return rows
    if name == "quantized_matmul":
        rows = []
        for case in results:
            flop = 2.0 * case["rows"] * case["in"] * case["out"]

            def ms(seconds):
                return f"{1e3 * seconds:.3f} ms ({flop / seconds / 1e12:.1f} TFLOP/s)" if seconds > 0 else "n/a"

            rows.append((f"{case['format']}, {case['rows']} x {case['in']} -> {case['out']}, {case['dtype']}",
                         f"fused {ms(case['fused_s'])}, its input gradient {ms(case['fused_input_gradient_s'])}; "
                         f"dequantize + matmul {ms(case['dequantize_matmul_s'])}; dense {ms(case['dense_s'])}"))
        return rows
    if name == "parity":
        return [(binary, f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
                 + (f" (failed: {', '.join(c['failed_cases'][:5])})" if c["failed_cases"] else ""))
                for binary, c in results.get("binaries", {}).items()]
    return []


def report(out_dir):
    run = load(os.path.join(out_dir, "run.json"), {})
    peak = (load(os.path.join(out_dir, "results", "matmul_peak.json")) or {}).get("tflops")
    engine = engine_figures(load(os.path.join(out_dir, "results", "engine.method.json")), None, peak)
    steps = []
    for name, title in STEPS:
        step = load(os.path.join(out_dir, "steps", name + ".json")) or {
            "name": name, "status": "skipped", "seconds": 0.0, "rc": None, "note": "not run"}
        step["title"] = title
        step["results"] = results_of(out_dir, name, peak, engine)
        steps.append(step)
    versions_facts = next(s["results"] for s in steps if s["name"] == "versions") or {}
    document = {"mode": "dry-run" if run.get("dry_run") else "gpu", "run": run, "versions": versions_facts,
                "steps": steps}
    write(os.path.join(out_dir, "gpu-check.json"), document)

    lines = [f"# GPU check, {versions_facts.get('date', '?')}"
             + (" (dry run: CPU, a tiny model, fp32; the numbers say nothing of a GPU)" if run.get("dry_run") else ""),
             "",
             f"* Machine: {versions_facts.get('hostname', '?')}, {versions_facts.get('cpus', '?')} CPUs, "
             f"{versions_facts.get('memory_gib', '?')} GiB; GPU: {versions_facts.get('gpu', '?')}",
             f"* Versions: torch {versions_facts.get('torch', '?')} (CUDA {versions_facts.get('torch_cuda', '?')}, "
             f"cxx11 ABI {versions_facts.get('cxx11_abi', '?')}), Python {versions_facts.get('python', '?')}, "
             f"{versions_facts.get('nvcc', 'nvcc ?')}, {versions_facts.get('cxx', '?')}",
             f"* Model: {run.get('model_note', '?')}; device {run.get('device', '?')}, dense dtype "
             f"{run.get('dtype', '?')}",
             f"* Total: {run.get('total_seconds', 0):.0f} s of a {run.get('budget', '?')} s budget; "
             f"commit {run.get('commit', '?')}",
             "",
             "| step | status | s | measure | value |",
             "| --- | --- | ---: | --- | --- |"]
    for step in steps:
        rows = rows_for(step["name"], step["results"], run) or [("", "")]
        if step["note"]:
            rows.append(("note", step["note"]))
        for i, (measure, value) in enumerate(rows):
            head = (f"{step['title']} | {step['status']} | {step['seconds']:.0f}" if i == 0 else " | | ")
            lines.append(f"| {head} | {measure} | {str(value).replace('|', '/')} |")
    with open(os.path.join(out_dir, "gpu-check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


COMMANDS = {"run-info": run_info, "versions": versions, "build-summary": build_summary,
            "model-summary": model_summary, "gpu-test-targets": gpu_test_targets, "ctest-summary": ctest_summary,
            "parity": parity, "json-lines": json_lines, "record": record, "report": report}


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command not in COMMANDS:
        sys.exit(f"unknown command {command}")
    COMMANDS[command](*args)


if __name__ == "__main__":
    main()
