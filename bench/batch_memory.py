#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Peak resident memory of attribution-batch on a large results file: a resume, a merge of 4 shards and a
--parquet conversion.

Starts the server on the demo model, runs a one-row integrated-gradients job with --matrix for a real result
line (about 36 KB), and writes a job of N rows (the same prompt and target, ids r0...) whose results file holds
that line once per row, MEGABYTES in all. Then, each under /usr/bin/time -v (maximum resident set size):
  resume   the job rerun on its results file, in which a row in the middle ended UNAVAILABLE: the job drops it
           on opening (a rewrite of the file), runs it again and rewrites the file in input order;
  merge    `attribution-batch merge` of the file cut into 4 shards of consecutive rows;
  parquet  the job rerun on its complete results file with --parquet (nothing to run; the table written).
Prints one table row per case.

With --input_rows N, the input side instead: a CSV (some prompts quoted across lines) and a JSONL file of N rows
of about 100 bytes each (ids r0...), and for each, under /usr/bin/time -v:
  shard    the job's shard 0 of --shards (each shard's pod reads and checks the whole file, then runs its rows),
           run to the end; its results checked to be the shard's rows in input order;
  whole    the whole file as one job, stopped after --seconds: its VmHWM (/proc/PID/status) then, and the rows
           written by then.

Usage: batch_memory.py BATCH_BINARY SERVER_BINARY MODEL_DIR [--megabytes 150] [--port 47150] [--label NAME]
       batch_memory.py BATCH_BINARY SERVER_BINARY MODEL_DIR --input_rows 1000000 [--shards 1000] [--seconds 30]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

PROMPT = ("The cup on the kitchen table is red and it was filled with hot tea a minute ago by my grandmother. "
          "Q: Is the cup warm to the touch right now? A:")
TARGET = " Yes, it is warm because the tea is hot."
JOB = ["--method=integrated_gradients", "--matrix", "--progress=log"]


def peak_rss_mib(command, log):
    """Runs `command` under /usr/bin/time -v; its exit status and maximum resident set size in MiB."""
    with open(log, "w") as out:
        status = subprocess.call(["/usr/bin/time", "-v"] + command, stdout=out, stderr=subprocess.STDOUT)
    text = open(log).read()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if status != 0 or not match:
        sys.exit(f"{' '.join(command)} failed ({status}):\n{text[-3000:]}")
    return status, int(match.group(1)) / 1024


def write_inputs(work, rows):
    """A CSV and a JSONL file of `rows` rows (one in 1000 of the CSV's prompts quoted across two lines)."""
    colours = ["red", "blue", "gold", "green"]
    csv_path, jsonl_path = os.path.join(work, "input.csv"), os.path.join(work, "input.jsonl")
    with open(csv_path, "w") as csv, open(jsonl_path, "w") as jsonl:
        csv.write("id,prompt,target\n")
        for r in range(rows):
            prompt = f"Question {r}: the cup on the table is {colours[r % 4]}. Q: Is it warm to the touch? A:"
            target = " Yes" if r % 2 == 0 else " No"
            quoted = '"' + prompt.replace(": the", ":\nthe") + '"' if r % 1000 == 0 else prompt
            csv.write(f"r{r},{quoted},{target}\n")
            jsonl.write('{"id": "r%d", "prompt": %s, "target": %s}\n' % (r, quote(prompt), quote(target)))
    return csv_path, jsonl_path


def peak_rss_after(command, log, seconds):
    """Runs `command` for `seconds` (or until it ends); its VmHWM in MiB then. Stops it with SIGKILL."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + seconds
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        peak = None
        if process.poll() is None:
            with open(f"/proc/{process.pid}/status") as status:
                peak = int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) / 1024
            process.kill()
        process.wait()
    if peak is None:
        sys.exit(f"{' '.join(command)} ended ({process.returncode}) before {seconds} s:\n{open(log).read()[-3000:]}")
    return peak


def input_side(args, address, work):
    csv_path, jsonl_path = write_inputs(work, args.input_rows)
    print("| label | input | MB | rows | shard 0 of N: peak MiB | wall s | whole file after S s: VmHWM MiB |"
          " rows written |")
    for path in (csv_path, jsonl_path):
        job = [args.batch, f"--input={path}", f"--server={address}", "--method=saliency", "--progress=log"]
        shard = os.path.join(work, "shard.jsonl")
        start = time.time()
        _, shard_mib = peak_rss_mib(job + [f"--output={shard}", f"--shard_count={args.shards}", "--shard_index=0"],
                                    os.path.join(work, "shard.log"))
        wall = time.time() - start
        ids = [json.loads(line)["id"] for line in open(shard)]
        assert ids == [f"r{r}" for r in range(0, args.input_rows, args.shards)], "the shard's rows differ"
        whole = os.path.join(work, "whole.jsonl")
        whole_mib = peak_rss_after(job + [f"--output={whole}"], os.path.join(work, "whole.log"), args.seconds)
        written = sum(1 for _ in open(whole)) if os.path.exists(whole) else 0
        print(f"| {args.label} | {os.path.basename(path)} | {os.path.getsize(path) / 1e6:.0f} | {args.input_rows} | "
              f"{shard_mib:.0f} (N = {args.shards}) | {wall:.1f} | {whole_mib:.0f} (S = {args.seconds}) | {written} |")
        os.remove(shard)
        if os.path.exists(whole):
            os.remove(whole)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("batch")
    parser.add_argument("server")
    parser.add_argument("model_dir")
    parser.add_argument("--megabytes", type=float, default=150)
    parser.add_argument("--port", type=int, default=47150)
    parser.add_argument("--label", default="")
    parser.add_argument("--input_rows", type=int, default=0, help="measure the input side on files of this many rows")
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="batch_memory_")
    address = f"127.0.0.1:{args.port}"
    server = subprocess.Popen([args.server, f"--listen={address}", f"--metrics_listen=127.0.0.1:{args.port + 1}",
                               f"--model=demo={args.model_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        one_input, one_output = os.path.join(work, "one.jsonl"), os.path.join(work, "one_out.jsonl")
        with open(one_input, "w") as f:
            f.write('{"id": "r0", "prompt": %s, "target": %s}\n' % (quote(PROMPT), quote(TARGET)))
        for _ in range(100):  # the server loads its model first
            if subprocess.call([args.batch, f"--input={one_input}", f"--output={one_output}", f"--server={address}"]
                               + JOB, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
                break
            time.sleep(0.3)
        line = open(one_output).readline().rstrip("\n")
        assert '"id":"r0"' in line, line
        if args.input_rows:
            input_side(args, address, work)
            return
        rows = int(args.megabytes * 1e6 / (len(line) + 1))
        job_input, results = os.path.join(work, "rows.jsonl"), os.path.join(work, "results.jsonl")
        with open(job_input, "w") as f:
            for r in range(rows):
                f.write('{"id": "r%d", "prompt": %s, "target": %s}\n' % (r, quote(PROMPT), quote(TARGET)))
        lines = [line.replace('"id":"r0"', f'"id":"r{r}"', 1) for r in range(rows)]
        with open(results, "w") as f:
            f.writelines(text + "\n" for text in lines)
        size_mb = os.path.getsize(results) / 1e6
        job = [args.batch, f"--input={job_input}", f"--server={address}"] + JOB

        # resume: a row in the middle left for a rerun
        resume = os.path.join(work, "resume.jsonl")
        middle = rows // 2
        unavailable = re.sub(r'"status":"ok"', '"error":{"code":"UNAVAILABLE","message":"connection refused"},'
                             '"status":"error"', lines[middle], count=1)
        with open(resume, "w") as f:
            f.writelines(text + "\n" for text in lines[:middle] + [unavailable] + lines[middle + 1:])
        _, resume_mib = peak_rss_mib(job + [f"--output={resume}"], os.path.join(work, "resume.log"))
        # The row run again has its own timings; every other line is as it was, all in input order.
        resumed = open(resume).read().splitlines()
        assert resumed[:middle] + resumed[middle + 1:] == lines[:middle] + lines[middle + 1:], "lines differ"
        assert f'"id":"r{middle}"' in resumed[middle], "the row run again is out of place"

        # merge of 4 shards of consecutive rows
        shards = []
        for s in range(4):
            shards.append(os.path.join(work, f"shard{s}.jsonl"))
            with open(shards[-1], "w") as f:
                f.writelines(text + "\n" for text in lines[s * rows // 4:(s + 1) * rows // 4])
        merged = os.path.join(work, "merged.jsonl")
        _, merge_mib = peak_rss_mib([args.batch, "merge", f"--input={job_input}", f"--output={merged}"] + shards,
                                    os.path.join(work, "merge.log"))
        assert open(merged).read() == open(results).read(), "the merged file differs from the whole one"

        # --parquet on the complete results
        _, parquet_mib = peak_rss_mib(job + [f"--output={results}", f"--parquet={os.path.join(work, 'r.parquet')}"],
                                      os.path.join(work, "parquet.log"))
        print("| label | results MB | rows | resume MiB | merge (4 shards) MiB | --parquet MiB |")
        print(f"| {args.label} | {size_mb:.0f} | {rows} | {resume_mib:.0f} | {merge_mib:.0f} | {parquet_mib:.0f} |")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work)


def quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    main()
