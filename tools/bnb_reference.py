#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""bitsandbytes' own 4-bit quantization (PyPI bitsandbytes, CPU backend) and transformers + bitsandbytes
models, the reference of the bit-compatibility tests (tests/engine/model/bnb_quantization_test.cc,
tests/e2e/bnb_e2e_test.cc).

Usage: bnb_reference.py OUT_DIR ARCHITECTURE_MODELS_DIR

Writes
  * OUT_DIR/quantization.safetensors: a [192, 256] float32 weight ("weight", with an outlier and an
    all-zero block) and, for Q in {nf4, fp4}, B in {64, 128}, D in {0, 1} (double quantization), the
    result of bitsandbytes.functional.quantize_4bit as "Q_B_D.codes" (packed uint8), "Q_B_D.absmax"
    (float32, or uint8 with D), "Q_B_D.nested_absmax", "Q_B_D.nested_code", "Q_B_D.offset" (with D) and
    dequantize_4bit's float32 and bfloat16 results "Q_B_D.dequantized", "Q_B_D.dequantized_bf16"; the
    code books "nf4_code", "fp4_code" and "dynamic_code" (create_dynamic_map()); and, for W in {zero,
    one_block} (an all-zero [8, 128] weight "zero_weight"; "one_block_weight", one block of 64), the same
    tensors "W.Q_64_1.*" of nf4 and fp4 with double quantization.
  * for A in {llama, mistral, qwen2, mixtral}: OUT_DIR/A/, a random fp32 model with all linear widths multiples of
    64 (bitsandbytes' CPU kernels want them), saved by transformers with the tokenizer of
    ARCHITECTURE_MODELS_DIR/A; and for Q in {nf4, fp4} and D in {"", "-dq"} OUT_DIR/A-QD/: that model
    loaded by transformers with BitsAndBytesConfig(load_in_4bit, Q, D, compute float32) on the CPU and
    saved pre-quantized by save_pretrained, with reference.json: target_log_probs, greedy and Captum IG
    as make_architecture_models.py computes them, and input_grad, the gradient of the summed target
    log-prob with respect to the input embeddings of prompt + target ([S, hidden]). OUT_DIR/llama-nf4-skip/
    likewise, with llm_int8_skip_modules ["lm_head", "down_proj"] (those saved dense). transformers 5 keeps
    Mixtral's experts and router as 3-D parameters, not nn.Linear: bitsandbytes quantizes only its attention
    and the checkpoint stores the experts dense.
  * OUT_DIR/seed000/ (a bf16 llama) and OUT_DIR/seed000/reference.json: seed 000's job on it loaded
    FP4 with bf16 compute: Captum IG (15 steps, Gauss-Legendre, zero baseline) of log p("No") - the
    prompt of 40 tokens.
"""
import json
import os
import shutil
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
import transformers
from captum.attr import IntegratedGradients
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from captum_reference import embedding_forward  # noqa: E402
from make_architecture_models import PROMPT, TARGET, references  # noqa: E402
from make_test_models import randomize  # noqa: E402

SEED000_PROMPT = [301 + 17 * i % 900 for i in range(40)]
SEED000_TARGET = [733]
SEED000_STEPS = 15


def quantization_tensors():
    gen = torch.Generator().manual_seed(7)
    weight = 0.05 * torch.randn(192, 256, generator=gen)
    weight[3, 17] = 2.5  # an outlier: only its own block may lose precision
    weight[5, :64] = 0   # an all-zero block
    out = {"weight": weight, "nf4_code": F.get_4bit_type("nf4", device="cpu"),
           "fp4_code": F.get_4bit_type("fp4", device="cpu"), "dynamic_code": F.create_dynamic_map()}
    for quant_type in ("nf4", "fp4"):
        for block in (64, 128):
            for double in (0, 1):
                key = f"{quant_type}_{block}_{double}"
                codes, state = F.quantize_4bit(weight, blocksize=block, quant_type=quant_type,
                                               compress_statistics=bool(double))
                out[f"{key}.codes"] = codes.reshape(-1).clone()
                out[f"{key}.absmax"] = state.absmax.clone()
                if double:
                    out[f"{key}.nested_absmax"] = state.state2.absmax.clone()
                    out[f"{key}.nested_code"] = state.state2.code.clone()
                    out[f"{key}.offset"] = state.offset.reshape(1).clone()
                out[f"{key}.dequantized"] = F.dequantize_4bit(codes, state).clone()
                state.dtype = torch.bfloat16
                out[f"{key}.dequantized_bf16"] = F.dequantize_4bit(codes, state).clone()
    # Weights whose absmaxes all equal their mean, so double quantization's centred values are all 0.
    out["zero_weight"] = torch.zeros(8, 128)
    out["one_block_weight"] = weight[7:8, :64].clone()
    for name in ("zero", "one_block"):
        for quant_type in ("nf4", "fp4"):
            key = f"{name}.{quant_type}_64_1"
            codes, state = F.quantize_4bit(out[f"{name}_weight"], blocksize=64, quant_type=quant_type,
                                           compress_statistics=True)
            out[f"{key}.codes"] = codes.reshape(-1).clone()
            out[f"{key}.absmax"] = state.absmax.clone()
            out[f"{key}.nested_absmax"] = state.state2.absmax.clone()
            out[f"{key}.offset"] = state.offset.reshape(1).clone()
            out[f"{key}.dequantized"] = F.dequantize_4bit(codes, state).clone()
    return out


def plain_cpu_kernels(model):
    # On CPUs with AVX512-BF16, Linear4bit repacks its weight for a fused kernel at the first no-grad
    # forward; the reference is bitsandbytes' documented dequantize + matmul path.
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def load_4bit(directory, quant_type, double, compute, dtype, skip=None):
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                             bnb_4bit_use_double_quant=double, bnb_4bit_compute_dtype=compute,
                                             llm_int8_skip_modules=skip)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, quantization_config=config,
                                                              device_map="cpu", attn_implementation="eager")
    return plain_cpu_kernels(model.eval())


def input_gradient(model):
    ids = torch.tensor([PROMPT + TARGET])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    log_probs = torch.log_softmax(model(inputs_embeds=embeds).logits[0].float(), -1)
    p = len(PROMPT)
    total = sum(log_probs[p - 1 + i, t] for i, t in enumerate(TARGET))
    total.backward()
    return embeds.grad[0].tolist()


def copy_tokenizer(source, directory):
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, file), directory)


def write_base_model(arch_dir, directory, seed, dtype=torch.float32):
    config = transformers.AutoConfig.from_pretrained(arch_dir)
    config.update(dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    shutil.rmtree(directory, ignore_errors=True)
    model.to(dtype).save_pretrained(directory, safe_serialization=True)
    copy_tokenizer(arch_dir, directory)


def write_quantized_model(base, directory, quant_type, double, skip=None):
    model = load_4bit(base, quant_type, double, torch.float32, torch.float32, skip)
    model.requires_grad_(False)
    reference = references(model)
    reference["input_grad"] = input_gradient(model)
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, safe_serialization=True)
    copy_tokenizer(base, directory)
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump(reference, f)


def write_quantized_models(out_dir, arch_models_dir):
    for seed, arch in enumerate(("llama", "mistral", "qwen2", "mixtral")):
        base = os.path.join(out_dir, arch)
        write_base_model(os.path.join(arch_models_dir, arch), base, seed + 10)
        for quant_type in ("nf4", "fp4"):
            for double in (False, True):
                directory = os.path.join(out_dir, f"{arch}-{quant_type}{'-dq' if double else ''}")
                write_quantized_model(base, directory, quant_type, double)
    # Modules bitsandbytes leaves dense are saved dense, beside the quantized ones.
    write_quantized_model(os.path.join(out_dir, "llama"), os.path.join(out_dir, "llama-nf4-skip"), "nf4", False,
                          ["lm_head", "down_proj"])


def write_seed000(out_dir, arch_models_dir):
    directory = os.path.join(out_dir, "seed000")
    write_base_model(os.path.join(arch_models_dir, "llama"), directory, 20, torch.bfloat16)
    model = load_4bit(directory, "fp4", False, torch.bfloat16, torch.bfloat16)
    model.requires_grad_(False)
    embed = model.get_input_embeddings()
    prompt = embed(torch.tensor([SEED000_PROMPT])).detach()
    ig = IntegratedGradients(embedding_forward(model, SEED000_TARGET))
    attr, delta = ig.attribute(prompt, baselines=torch.zeros_like(prompt), n_steps=SEED000_STEPS,
                               method="gausslegendre", return_convergence_delta=True)
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump({"prompt": SEED000_PROMPT, "target": SEED000_TARGET, "n_steps": SEED000_STEPS,
                   "seq_attr": attr.float().sum(-1)[0].tolist(), "delta": delta.float().item()}, f)


def main():
    out_dir, arch_models_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    save_file(quantization_tensors(), os.path.join(out_dir, "quantization.safetensors"))
    write_quantized_models(out_dir, arch_models_dir)
    write_seed000(out_dir, arch_models_dir)
    print(f"bnb_reference: bitsandbytes {bnb.__version__} quantization and 4-bit models written to {out_dir}")


if __name__ == "__main__":
    main()
