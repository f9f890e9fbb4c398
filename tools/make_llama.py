#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a seeded random-weight Llama (or a Falcon or Mixtral) of a given shape as a Hugging Face
directory (for benchmarks).

Usage: make_llama.py OUT_DIR [--hidden 512] [--layers 8] [--heads 8] [--kv-heads 8]
                             [--intermediate 1376] [--vocab 32000] [--seed 0]
                             [--arch llama|falcon|mixtral] [--experts 8] [--experts-per-token 2]
falcon is the 7B layout (multi-query attention, parallel attention and MLP, MLP width 4 x hidden;
--kv-heads and --intermediate do not apply); mixtral has --experts MLPs of --intermediate each.
Does nothing when OUT_DIR already holds a model of that shape.
"""
import argparse
import json
import os

import torch
import transformers


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
    config_path = os.path.join(args.out_dir, "config.json")
    if os.path.exists(config_path) and os.path.exists(os.path.join(args.out_dir, "model.safetensors")):
        with open(config_path) as f:
            existing = json.load(f)
        if all(existing.get(k) == v for k, v in config.to_dict().items() if k in
               ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "num_local_experts", "num_experts_per_tok")):
            return
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(args.out_dir, safe_serialization=True)


if __name__ == "__main__":
    main()
