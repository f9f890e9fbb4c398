#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes seeded random-weight Hugging Face model directories for every supported architecture, and
reference outputs computed by transformers (an implementation independent of ours) for the C++ tests.

Usage: make_test_models.py OUT_DIR

For each architecture A it writes OUT_DIR/A/ (config.json, model.safetensors) and, per dtype D in
{float32, bfloat16, float16}, OUT_DIR/A/reference_D.safetensors + reference_D.json:
  * logits_r: [len_r, vocab] logits of row r run alone (no padding), float32;
  * gradient: d objective / d inputs_embeds of row 0, where objective = sum of the log-probs of
    `objective_tokens` after `objective_positions`;
  * residual_after_layer0: row 0's residual stream after decoder layer 0;
  * greedy generations of every row (8 new tokens, eos disabled).
A sharded copy of the llama model goes to OUT_DIR/llama-sharded/, a Llama whose linears dominate its
size (as in real Llamas) to OUT_DIR/llama-wide/, and OUT_DIR/quantization.safetensors holds a weight
with its int8 and nf4 round trips computed by the numpy reference implementation below.
For each architecture and scheme Q in {int8, nf4}, OUT_DIR/A/reference_Q.* holds the float32
references of the model whose decoder linears (q, k, v, o, gate, up, down; GPT-2's c_attn, c_proj,
c_fc; Falcon's query_key_value, dense, dense_h_to_4h, dense_4h_to_h; each Mixtral expert's w1, w3, w2
but not its router) were each round-tripped through Q on their own, as an nn.Linear [out, in] weight:
what a quantized load must compute however it lays the projections out.
Mixtral references also hold router_logits_r: [layers, len_r, experts], row r alone.
"""
import copy
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
import transformers

VOCAB = 320
ROWS = [[5, 17, 99, 3, 250, 41, 7], [12, 8, 301, 77, 2, 9, 64, 128, 33, 200, 1, 90], [60, 61, 62, 63]]
OBJECTIVE_POSITIONS = [2, 4, 6]
OBJECTIVE_TOKENS = [11, 250, 42]


def configs():
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": transformers.LlamaConfig(
            **common, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "mistral": transformers.MistralConfig(**common, sliding_window=6, tie_word_embeddings=False),
        "qwen2": transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0),
        "gpt2": transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                        bos_token_id=1, eos_token_id=2),
        **falcon_configs(VOCAB),
        "mixtral": transformers.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
                                              tie_word_embeddings=False),
        # Heads of 3 dimensions: no rotary embedding asks GPT-2 for an even width.
        "gpt2-odd-heads": transformers.GPT2Config(vocab_size=VOCAB, n_embd=24, n_head=8, n_layer=2, n_positions=64,
                                                  bos_token_id=1, eos_token_id=2),
    }


def falcon_configs(vocab):
    """Falcon's three fused query_key_value layouts: the 7B one (multi-query, one LayerNorm for the parallel
    attention and MLP), new_decoder_architecture (grouped KV heads, a LayerNorm per branch, here with
    biases) and the sequential per-head one (with biases)."""
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0, alibi=False)
    return {
        "falcon": transformers.FalconConfig(**common, multi_query=True, parallel_attn=True, bias=False),
        "falcon-grouped": transformers.FalconConfig(**common, new_decoder_architecture=True, num_kv_heads=2,
                                                    bias=True),
        "falcon-sequential": transformers.FalconConfig(**common, multi_query=False, parallel_attn=False,
                                                       bias=True),
    }


def randomize(model, seed):
    # transformers' default init (std 0.02) makes near-uniform logits; larger weights make the
    # parity test sensitive to every mistake.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def decision_margin(model):
    """The smallest gap, over every token of ROWS followed by its first two greedy tokens and every layer, between
    the router logits of the last expert a token keeps and the first it drops, and between the two largest
    next-token logits where greedy decoding chooses (float32)."""
    k = model.config.num_experts_per_tok
    margin = float("inf")
    with torch.no_grad():
        for ids in ROWS:
            ids = list(ids)
            for step in range(3):
                out = model(torch.tensor([ids]), output_router_logits=True)
                if step == 0:
                    for logits in out.router_logits:
                        top = logits.float().topk(k + 1, dim=-1).values
                        margin = min(margin, (top[:, k - 1] - top[:, k]).min().item())
                if step < 2:
                    top = out.logits[0, -1].float().topk(2)
                    margin = min(margin, (top.values[0] - top.values[1]).item())
                    ids.append(top.indices[0].item())
                else:
                    for logits in out.router_logits:  # the generated tokens' routing
                        top = logits[-2:].float().topk(k + 1, dim=-1).values
                        margin = min(margin, (top[:, k - 1] - top[:, k]).min().item())
    return margin


def randomize_separated_routing(model, seed, margin=0.08):
    """Re-randomizes `model` (seeds seed, seed + 1000, ...) until no decision is a near-tie: half precision
    rounds logits by ~0.01, and a top-k routing or a greedy choice flipped by rounding is a real
    discontinuity of the model, not an error of either implementation, so the bfloat16 / float16 parity
    tests need rows that route and decode unambiguously."""
    while decision_margin(model) < margin:
        seed += 1000
        randomize(model, seed)


def references(model, dtype):
    model = model.to(dtype)
    out = {}
    for r, ids in enumerate(ROWS):
        with torch.no_grad():
            out[f"logits_{r}"] = model(torch.tensor([ids])).logits[0].float()
    with torch.no_grad():
        hidden = model(torch.tensor([ROWS[0]]), output_hidden_states=True).hidden_states
    out["residual_after_layer0"] = hidden[1][0].float()
    if getattr(model.config, "num_local_experts", None):  # Mixtral: every layer's router logits, per row
        for r, ids in enumerate(ROWS):
            with torch.no_grad():
                router = model(torch.tensor([ids]), output_router_logits=True).router_logits
            out[f"router_logits_{r}"] = torch.stack([layer.float() for layer in router])  # [layers, len, experts]
    embeds = model.get_input_embeddings()(torch.tensor([ROWS[0]])).detach().requires_grad_(True)
    log_probs = torch.log_softmax(model(inputs_embeds=embeds).logits[0].float(), -1)
    objective = sum(log_probs[p, t] for p, t in zip(OBJECTIVE_POSITIONS, OBJECTIVE_TOKENS))
    objective.backward()
    out["gradient"] = embeds.grad[0].float()
    out["objective"] = objective.detach().reshape(1).float()
    generations = []
    for ids in ROWS:
        generated = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=None, pad_token_id=0, attention_mask=torch.ones(1, len(ids)))
        generations.append(generated[0, len(ids):].tolist())
    spec = {"rows": ROWS, "objective_positions": OBJECTIVE_POSITIONS, "objective_tokens": OBJECTIVE_TOKENS,
            "greedy_generations": generations}
    return {k: v.contiguous() for k, v in out.items()}, spec


NF4_CODES = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                      -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                      0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


def int8_round_trip(w):
    scale = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    return (np.clip(np.round(w / scale[:, None]), -127, 127) * scale[:, None]).astype(np.float32)


def nf4_round_trip(w):
    blocks = w.reshape(-1, 64)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)  # float32, as bitsandbytes keeps it
    safe = np.where(absmax > 0, absmax, 1)
    index = np.abs(blocks[:, :, None] / safe[:, None, None] - NF4_CODES[None, None, :]).argmin(axis=2)
    return (NF4_CODES[index] * absmax[:, None]).reshape(w.shape).astype(np.float32)


def round_trip_decoder_linears(model, round_trip):
    """A copy of `model` whose decoder linears hold their weights after `round_trip`."""
    model = copy.deepcopy(model).float()
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    with torch.no_grad():
        for module in layers.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.numpy()
                module.weight.copy_(torch.from_numpy(round_trip(w)))
            elif isinstance(module, transformers.pytorch_utils.Conv1D):  # GPT-2 stores [in, out]
                w = np.ascontiguousarray(module.weight.numpy().T)
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(round_trip(w).T)))
            elif hasattr(module, "gate_up_proj"):  # Mixtral's experts: [experts, 2 * inner, hidden] and
                for e in range(module.gate_up_proj.shape[0]):  # [experts, hidden, inner]; the router stays
                    gate, up = (round_trip(part.numpy()) for part in module.gate_up_proj[e].chunk(2, 0))
                    module.gate_up_proj[e].copy_(torch.from_numpy(np.concatenate([gate, up])))
                    module.down_proj[e].copy_(torch.from_numpy(round_trip(module.down_proj[e].numpy())))
    return model


def write_quantization_reference(path):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((48, 256)).astype(np.float32)
    w[3, 17] = 25.0  # an outlier: only its own row (int8) or block (nf4) may lose precision
    w[5, :] = 0.0    # an all-zero row and blocks
    save_file({"weight": torch.from_numpy(w), "int8": torch.from_numpy(int8_round_trip(w)),
               "nf4": torch.from_numpy(nf4_round_trip(w))}, path)


def write_wide_llama(directory):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(11)
    model = transformers.LlamaForCausalLM(config).eval()
    randomize(model, 11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(0.25)  # keeps activations of the wider layers in a sane range
    model.save_pretrained(directory, safe_serialization=True)


def main():
    out_dir = sys.argv[1]
    torch.use_deterministic_algorithms(True)
    for seed, (arch, config) in enumerate(configs().items()):
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        randomize(model, seed)
        if arch == "mixtral":
            randomize_separated_routing(model, seed)
        directory = os.path.join(out_dir, arch)
        model.save_pretrained(directory, safe_serialization=True)
        if arch == "llama":
            model.save_pretrained(os.path.join(out_dir, "llama-sharded"), safe_serialization=True,
                                  max_shard_size="100KB")
        # Before the dtype loop below: it casts the model in place, and casting back leaves float16-
        # rounded weights, not the checkpoint's.
        for scheme, round_trip in (("int8", int8_round_trip), ("nf4", nf4_round_trip)):
            tensors, spec = references(round_trip_decoder_linears(model, round_trip), torch.float32)
            save_file(tensors, os.path.join(directory, f"reference_{scheme}.safetensors"))
            with open(os.path.join(directory, f"reference_{scheme}.json"), "w") as f:
                json.dump(spec, f)
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            tensors, spec = references(model, dtype)
            save_file(tensors, os.path.join(directory, f"reference_{dtype_name}.safetensors"))
            with open(os.path.join(directory, f"reference_{dtype_name}.json"), "w") as f:
                json.dump(spec, f)
        model.float()
    write_quantization_reference(os.path.join(out_dir, "quantization.safetensors"))
    write_wide_llama(os.path.join(out_dir, "llama-wide"))
    print(f"wrote test models for {list(configs())} to {out_dir}")


if __name__ == "__main__":
    main()
