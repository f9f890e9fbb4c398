#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""All-heads activation patching on a GPT-2-small-shaped random model (12 layers x 12 heads, hidden 768,
vocabulary 50257; transformers' GPT2LMHeadModel with seeded random weights), 20-token clean/corrupted
pairs that differ in one token: our server (attribution-cli components over gRPC, one request) against
TransformerLens 4.3's transformer_lens.patching.get_act_patch_attn_head_out_all_pos on the same CPU in
the same run, and attribution patching (AtP, and AtP*: one request each) against both, with their Spearman
rank correlations to the patching grid (AtP*, a magnitude, against |patching|). Also checks that the two patching grids agree. Prints a Markdown
table.

Usage: components_bench.py SERVER_BINARY CLI_BINARY [PAIRS] [REPEATS]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from transformer_lens import patching  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

LENGTH = 20
ANSWER, WRONG = 464, 1110


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model(path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)


def pairs_of(count):
    g = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(count):
        clean = torch.randint(300, 50000, (LENGTH,), generator=g).tolist()
        corrupted = list(clean)
        corrupted[LENGTH // 2] = (clean[LENGTH // 2] + 777) % 50000
        pairs.append((clean, corrupted))
    return pairs


def spearman(x, y):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    rx, ry = ranks(x), ranks(y)
    m = (len(x) - 1) / 2
    xy = sum((a - m) * (b - m) for a, b in zip(rx, ry))
    return xy / sum((a - m) ** 2 for a in rx)


def ours(server, cli, model_dir, pairs, repeats):
    """Seconds per pair and the per-pair grids, for patching and AtP; the server's own row counts."""
    port = free_port()
    proc = subprocess.Popen([server, f"--model=gpt2s={model_dir}", f"--listen=127.0.0.1:{port}", "--dtype=float32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = {}
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for clean, corrupted in pairs:
                f.write(json.dumps({"clean_ids": clean, "corrupted_ids": corrupted}) + "\n")
        for method in ("activation_patching", "attribution_patching", "attribution_patching_star"):
            cmd = [cli, "components", f"--server=127.0.0.1:{port}", "--model=gpt2s", f"--pairs={f.name}",
                   f"--answer=#{ANSWER}", f"--wrong_answer=#{WRONG}", f"--component_method={method}", "--json",
                   "--timeout=3600"]
            for attempt in range(600):  # the server loads the model first
                if subprocess.run([cli, "health", f"--server=127.0.0.1:{port}"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            subprocess.run(cmd, check=True, capture_output=True)  # warm-up
            best = None
            for _ in range(repeats):
                start = time.perf_counter()
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            out[method] = (best / len(pairs), [p["grids"][0]["values"] for p in result["pairs"]],
                           result["stats"]["rows"])
        os.unlink(f.name)
        return out
    finally:
        proc.terminate()
        proc.wait()


def transformer_lens(model_dir, pairs, repeats):
    bridge = TransformerBridge.boot_transformers(model_dir, device="cpu", dtype=torch.float32)
    bridge.eval()

    def metric(logits):
        return logits[0, -1, ANSWER] - logits[0, -1, WRONG]

    grids, best = [], None
    for repeat in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        grids = []
        for clean, corrupted in pairs:
            with torch.no_grad():
                _, clean_cache = bridge.run_with_cache(torch.tensor([clean]))
                base = metric(bridge(torch.tensor([corrupted]))).item()
                grid = patching.get_act_patch_attn_head_out_all_pos(bridge, torch.tensor([corrupted]), clean_cache,
                                                                   metric)
            grids.append([v - base for v in grid.flatten().tolist()])
        elapsed = time.perf_counter() - start
        if repeat > 0:
            best = elapsed if best is None else min(best, elapsed)
    return best / len(pairs), grids


def main():
    server, cli = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    torch.set_num_threads(os.cpu_count())
    with tempfile.TemporaryDirectory() as model_dir:
        write_model(model_dir)
        pairs = pairs_of(count)
        served = ours(server, cli, model_dir, pairs, repeats)
        tl_seconds, tl_grids = transformer_lens(model_dir, pairs, repeats)
    patch_seconds, patch_grids, patch_rows = served["activation_patching"]
    atp_seconds, atp_grids, atp_rows = served["attribution_patching"]
    gap = max(abs(a - b) for ours_grid, tl_grid in zip(patch_grids, tl_grids) for a, b in zip(ours_grid, tl_grid))
    scale = max(abs(v) for grid in tl_grids for v in grid)
    star_seconds, star_grids, star_rows = served["attribution_patching_star"]
    rho = sum(spearman(p, a) for p, a in zip(patch_grids, atp_grids)) / len(pairs)

    def magnitude_rho(grids):  # AtP* estimates |effect|: ranked against |patching|
        return sum(spearman([abs(v) for v in p], [abs(v) for v in a]) for p, a in zip(patch_grids, grids)) / len(pairs)
    print(f"GPT-2-small-shaped random model, {LENGTH}-token pairs, {count} pairs, best of {repeats}, "
          f"{os.cpu_count()} CPU threads; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"patching grids: max |ours - TransformerLens| / max |TransformerLens| = {gap / scale:.2e}")
    print()
    print("| all 144 heads, one pair | rows | s / pair | vs TransformerLens |")
    print("|---|---|---|---|")
    print(f"| TransformerLens get_act_patch_attn_head_out_all_pos | 146 forwards | {tl_seconds:.3f} | 1.0x |")
    print(f"| ours, activation patching | {patch_rows // count} | {patch_seconds:.3f} | "
          f"{tl_seconds / patch_seconds:.1f}x |")
    print(f"| ours, attribution patching (AtP) | {atp_rows // count} | {atp_seconds:.3f} | "
          f"{tl_seconds / atp_seconds:.1f}x |")
    print(f"| ours, AtP* (QK fix, GradDrop) | {star_rows // count} | {star_seconds:.3f} | "
          f"{tl_seconds / star_seconds:.1f}x |")
    print()
    print(f"AtP vs activation patching: Spearman {rho:.3f} (mean over pairs), "
          f"{patch_seconds / atp_seconds:.1f}x faster")
    print(f"against |patching|: Spearman |AtP| {magnitude_rho(atp_grids):.3f}, AtP* {magnitude_rho(star_grids):.3f}; "
          f"AtP* {patch_seconds / star_seconds:.1f}x faster than patching")


if __name__ == "__main__":
    main()
