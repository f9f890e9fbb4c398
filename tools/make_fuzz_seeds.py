#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpora of the libFuzzer targets in tests/fuzz (scripts/fuzz calls it).

Usage: make_fuzz_seeds.py OUT_DIR TEST_MODELS TEST_TOKENIZERS

Writes OUT_DIR/<target>/ for each target, from the test models and tokenizers (tools/make_test_models.py,
tools/make_test_tokenizers.py), the committed default model and the hand-written requests in
tests/fuzz/requests. Seeds are kept small (a fuzzer's speed falls with its input size): safetensors
files carry the test models' tensor names and dtypes with tiny shapes, tokenizer.json files keep the
first few hundred tokens of each test tokenizer and the merges among them.
"""
import json
import os
import pathlib
import subprocess
import sys

import torch
from safetensors.torch import save

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "tiny-qa-llama"
TOKENIZER_KINDS = ["gpt2", "llama3", "qwen2", "llama2", "metaspace", "sentencepiece", "sentencepiece_special"]  # as in bpe_fuzzer.cc
RPCS = {"attribute": 0, "generate": 1, "logprobs": 2}  # request_fuzzer.cc's first byte


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def safetensors_seeds(out, model_dirs):
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    for model_dir in (p for p in model_dirs if (p / "model.safetensors").is_file()):
        header_len = int.from_bytes((model_dir / "model.safetensors").read_bytes()[:8], "little")
        with open(model_dir / "model.safetensors", "rb") as f:
            header = json.loads(f.read(8 + header_len)[8:])
        names = sorted(k for k in header if k != "__metadata__")[:6]
        tensors = {name: torch.ones(2, 3, dtype=dtypes[i % 3]) for i, name in enumerate(names)}
        write(out / f"{model_dir.parent.name}-{model_dir.name}.safetensors", save(tensors, metadata={"format": "pt"}))
    write(out / "scalar_and_empty.safetensors", save({"s": torch.ones(()), "e": torch.ones(0, 4)}))


def model_config_seeds(out, dirs):
    for d in dirs:
        if (d / "config.json").is_file():
            write(out / f"{d.parent.name}-{d.name}.json", (d / "config.json").read_bytes())


def small_tokenizer_json(tj, keep):
    """tokenizer.json with the vocabulary cut to ids below `keep` (and the merges among them)."""
    model = tj["model"]
    vocab = {token: i for token, i in model["vocab"].items() if i < keep}
    merges = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    tj = dict(tj, model=dict(model, vocab=vocab, merges=merges))
    tj["added_tokens"] = [a for a in tj.get("added_tokens", []) if a["id"] < keep]
    return tj


def tokenizer_json_seeds(out, tokenizers):
    for kind in TOKENIZER_KINDS:
        path = tokenizers / kind / "tokenizer.json"
        if not path.is_file():
            continue
        tj = small_tokenizer_json(json.loads(path.read_text()), keep=600)
        config = tokenizers / kind / "tokenizer_config.json"
        data = json.dumps(tj, ensure_ascii=False, separators=(",", ":")).encode()
        if config.is_file():
            data += b"\0" + config.read_bytes()
        write(out / f"{kind}.json", data)


def bpe_seeds(out, tokenizers):
    for index, kind in enumerate(TOKENIZER_KINDS):
        expected = tokenizers / kind / "expected.json"
        if not expected.is_file():
            continue
        texts = json.loads(expected.read_text())["texts"]
        for n, text in enumerate(texts[:8]):
            data = text.encode()[:256]
            op = n % 3  # encode, decode ids, continuation (bpe_fuzzer.cc's operations)
            if op == 2:
                data = data[: len(data) // 2] + b"|" + data[len(data) // 2:]
            write(out / f"{kind}-{n}", bytes([index, (op << 2) | (n & 3)]) + data)


def request_seeds(out):
    proto_dir = ROOT / "proto"
    for textproto in sorted((ROOT / "tests" / "fuzz" / "requests").glob("*.textproto")):
        rpc = textproto.name.split("_")[0]
        message = {"attribute": "AttributeRequest", "generate": "GenerateRequest", "logprobs": "LogprobsRequest"}[rpc]
        encoded = subprocess.run(
            ["protoc", f"--encode=attribution.v1.{message}", f"-I{proto_dir}", "attribution/v1/attribution.proto"],
            input=textproto.read_bytes(), capture_output=True, check=True).stdout
        write(out / textproto.stem, bytes([RPCS[rpc]]) + encoded)


def main():
    out, models, tokenizers = (pathlib.Path(a) for a in sys.argv[1:4])
    model_dirs = sorted(p for p in models.iterdir() if p.is_dir()) + [DEFAULT_MODEL]
    safetensors_seeds(out / "safetensors_fuzzer", model_dirs)
    model_config_seeds(out / "model_config_fuzzer", model_dirs)
    tokenizer_json_seeds(out / "tokenizer_json_fuzzer", tokenizers)
    bpe_seeds(out / "bpe_fuzzer", tokenizers)
    request_seeds(out / "request_fuzzer")
    print(f"make_fuzz_seeds: {sum(1 for _ in out.rglob('*') if _.is_file())} seeds in {out}")


if __name__ == "__main__":
    main()
