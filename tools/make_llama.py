#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a seeded random-weight Llama (or a Falcon or Mixtral) of a given shape as a Hugging Face
directory (for benchmarks).

Usage: make_llama.py OUT_DIR [--hidden 512] [--layers 8] [--heads 8] [--kv-heads 8]
                             [--intermediate 1376] [--vocab 32000] [--seed 0]
                             [--arch llama|falcon|mixtral] [--experts 8] [--experts-per-token 2]
                             [--dtype float32|bfloat16|float16] [--direct [--device cpu|cuda]]
falcon is the 7B layout (multi-query attention, parallel attention and MLP, MLP width 4 x hidden;
--kv-heads and --intermediate do not apply); mixtral has --experts MLPs of --intermediate each.
--direct draws the weights itself (normal with the config's initializer_range, norms one, biases zero:
transformers' initialisation, another random stream) in --dtype on --device and writes them straight
to safetensors shards of at most 4 GiB: a 7B shape takes seconds where transformers' fp32
initialisation and save take minutes and twice the memory.
Does nothing when OUT_DIR already holds a model of that shape and dtype.
"""
import argparse
import json
import os

import torch
import transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHARD_BYTES = 4 << 30


def write_direct(config, out_dir, dtype, device, seed):
    """Random tensors named and shaped as transformers' model (built on the meta device, so nothing is
    allocated), drawn and written one shard at a time, so at most one shard is held in memory."""
    from safetensors.torch import save_file
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in transformers.AutoModelForCausalLM.from_config(config)
                  .state_dict().items()}
    element = torch.tensor([], dtype=dtype).element_size()
    plan, size = [[]], 0  # names per shard, in the model's order
    for name, shape in shapes.items():
        if size >= SHARD_BYTES:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += element * torch.Size(shape).numel()
    generator = torch.Generator(device).manual_seed(seed)
    files = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    for names, file in zip(plan, files):
        shard = {}
        for name in names:
            if name.endswith("norm.weight") or name.endswith("layernorm.weight") or name.endswith("ln_f.weight"):
                shard[name] = torch.ones(shapes[name], dtype=dtype)
            elif name.endswith(".bias"):
                shard[name] = torch.zeros(shapes[name], dtype=dtype)
            else:
                shard[name] = torch.randn(shapes[name], generator=generator, device=device, dtype=dtype).mul_(
                    config.initializer_range).cpu()
        save_file(shard, os.path.join(out_dir, file), metadata={"format": "pt"})
    if len(plan) > 1:
        weight_map = {name: file for names, file in zip(plan, files) for name in names}
        total = sum(element * torch.Size(shape).numel() for shape in shapes.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=("llama", "falcon", "mixtral"), default="llama")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--experts-per-token", type=int, default=2)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    shape = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                 num_attention_heads=args.heads, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False)
    if args.arch == "falcon":
        config = transformers.FalconConfig(**shape, multi_query=True, parallel_attn=True, alibi=False, bias=False)
    elif args.arch == "mixtral":
        config = transformers.MixtralConfig(**shape, intermediate_size=args.intermediate,
                                            num_key_value_heads=args.kv_heads, num_local_experts=args.experts,
                                            num_experts_per_tok=args.experts_per_token)
    else:
        config = transformers.LlamaConfig(**shape, intermediate_size=args.intermediate,
                                          num_key_value_heads=args.kv_heads)
    dtype = DTYPES[args.dtype]
    config_path = os.path.join(args.out_dir, "config.json")
    weights_written = any(os.path.exists(os.path.join(args.out_dir, f))
                          for f in ("model.safetensors", "model.safetensors.index.json"))
    if os.path.exists(config_path) and weights_written:
        with open(config_path) as f:
            existing = json.load(f)
        if existing.get("dtype", "float32") == args.dtype and all(
                existing.get(k) == v for k, v in config.to_dict().items() if k in
                ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "num_local_experts", "num_experts_per_tok")):
            return
    torch.manual_seed(args.seed)
    if args.direct:
        os.makedirs(args.out_dir, exist_ok=True)
        config.dtype = dtype
        write_direct(config, args.out_dir, dtype, args.device, args.seed)
        config.save_pretrained(args.out_dir)
        return
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(args.out_dir, safe_serialization=True)


if __name__ == "__main__":
    main()
