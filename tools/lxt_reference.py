#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""AttnLRP and CP-LRP relevances computed by LXT 2.1's "efficient" mode (its monkey patches, then plain
gradient x input) on the architecture test models, as the reference for the C++ LRP tests.

Usage: lxt_reference.py OUT_JSON MODELS_DIR   (MODELS_DIR as written by make_architecture_models.py)

Runs under .venv-lxt (scripts/setup): LXT 2.1 needs transformers 4 (4.52.4 here), while the models were
written by transformers 5. transformers 4 reads rope_theta and rope_scaling from the top level of
config.json, where transformers 5 writes them under rope_parameters, so each model is loaded from a
temporary copy whose config carries both spellings; the loaded rope values and sliding window are checked,
and so are the target log-probs against reference.json (written by transformers 5).

For each of llama, llama3-scaled, mistral, qwen2, gpt2 and each rule (LXT's `attnLRP` and `cp_LRP` maps of
lxt.efficient.models.<arch>) the model (float32, eager attention, eval mode) reads ids = prompt + target
(reference.json) as inputs_embeds = the token embedding of the ids (GPT-2 adds its position embeddings
inside the model). The objective is the sum over target tokens j of the logit of target[j] at position
len(prompt) - 1 + j (teacher forced); its gradient is taken with seed 1 (not LXT's quickstart
backward(max_logits)). LXT has no Mistral map: Mistral gets the Llama map's rules on its own classes
(MistralMLP, MistralRMSNorm, the attention functions of modeling_mistral). Patching is global and cannot
be undone, so each (architecture, rule) runs in its own child process, forked from a parent that imported
the libraries but never patched or computed anything.

OUT_JSON: {"versions": {"lxt", "transformers", "torch"},
           "models": {NAME: {"prompt": [P], "target": [T],
                             "input_x_gradient": [S]   (the unpatched model: plain gradient x input),
                             "attn_lrp" and "cp_lrp": {
                                 "relevance": [S]        (inputs_embeds * gradient, summed over hidden),
                                 "objective": float,
                                 "layer_relevance": [L]  (per decoder layer, its output hidden state h times
                                                          dObjective/dh, summed over positions and hidden),
                                 "token_matrix": [T][S]  (row j: the relevance for the logit of target[j]
                                                          alone),
                                 "bias_relevance": float (every bias parameter times its gradient, summed:
                                                          what the biases absorb),
                                 "position_relevance": [S] (gpt2 only: position embeddings * gradient)},
                             "contrastive" (llama only): {"foil": [T], "attn_lrp" and "cp_lrp":
                                 {"relevance": [S], "objective": float}}}}}
with S = P + T positions, all floats float64 sums of the float32 products. The contrastive objective is
the target's logits minus the foil's at the same positions (the input still prompt + target).
Self-checks: the patched relevances differ from input_x_gradient; no NaN; for cp_lrp (linear once the
attention weights and the MLP gate are constant) the relevance of the inputs, positions and biases adds up
to the objective.
"""
import importlib.metadata
import json
import math
import multiprocessing
import os
import sys
import tempfile
import traceback
import warnings

# lxt.efficient imports its zennit patches (vision models only) and warns when zennit is missing.
warnings.filterwarnings("ignore", message="'zennit' library is not available")
import lxt.efficient  # noqa: E402
import lxt.efficient.models.gpt2 as lxt_gpt2  # noqa: E402
import lxt.efficient.models.llama as lxt_llama  # noqa: E402
import lxt.efficient.models.qwen2 as lxt_qwen2  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.gpt2 import modeling_gpt2  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.mistral import modeling_mistral  # noqa: E402
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402

ARCHITECTURES = ("llama", "llama3-scaled", "mistral", "qwen2", "gpt2")
RULES = {"attn_lrp": "attnLRP", "cp_lrp": "cp_LRP"}
# Ordinary tokens (300-1199, like the prompts), none equal to the target token at its position.
FOIL = [1100, 505, 942, 377]
LOG_PROB_TOLERANCE = 1e-4
CONSERVATION_TOLERANCE = 1e-4


def patch_map(name, rule):
    """LXT's map for the architecture; Mistral: the Llama map's rules on Mistral's classes."""
    attribute = RULES[rule]
    if name == "gpt2":
        return getattr(lxt_gpt2, attribute), modeling_gpt2
    if name == "qwen2":
        return getattr(lxt_qwen2, attribute), modeling_qwen2
    llama_map = getattr(lxt_llama, attribute)
    if name != "mistral":
        return llama_map, modeling_llama
    to_mistral = {modeling_llama.LlamaMLP: modeling_mistral.MistralMLP,
                  modeling_llama.LlamaRMSNorm: modeling_mistral.MistralRMSNorm, modeling_llama: modeling_mistral}
    assert set(to_mistral) <= set(llama_map), llama_map.keys()
    return {to_mistral.get(target, target): patch for target, patch in llama_map.items()}, modeling_mistral


def apply_patches(name, rule):
    mapping, modeling = patch_map(name, rule)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lxt.efficient.monkey_patch(modeling, mapping)
    assert not caught, [str(w.message) for w in caught]
    # The attention wrapper and every patched forward are LXT's functions now.
    assert modeling.eager_attention_forward.__module__ == "lxt.efficient.patches", modeling.eager_attention_forward
    for target in mapping:
        if isinstance(target, type):
            assert target.forward.__module__.startswith("lxt.efficient"), (target, target.forward)


def transformers4_config(config):
    """config.json as transformers 5 wrote it, plus rope_theta / rope_scaling at the top level."""
    rope = config.get("rope_parameters")
    if rope is None:
        return config, None, None
    config = dict(config, rope_theta=rope["rope_theta"])
    scaling = None
    if rope.get("rope_type", "default") != "default":
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        config["rope_scaling"] = scaling
    return config, rope["rope_theta"], scaling


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        config5 = json.load(f)
    config4, rope_theta, rope_scaling = transformers4_config(config5)
    with tempfile.TemporaryDirectory() as tmp:
        for file in os.listdir(model_dir):
            if file != "config.json":
                os.symlink(os.path.abspath(os.path.join(model_dir, file)), os.path.join(tmp, file))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config4, f)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    model.eval().requires_grad_(False)
    config = model.config
    assert config._attn_implementation == "eager"
    if rope_theta is not None:
        assert config.rope_theta == rope_theta, (config.rope_theta, rope_theta)
        assert (getattr(config, "rope_scaling", None) or None) == rope_scaling, (config, rope_scaling)
        assert model.model.rotary_emb.rope_type == (rope_scaling or {}).get("rope_type", "default")
    if "sliding_window" in config5:
        assert config.sliding_window == config5["sliding_window"], (config.sliding_window, config5["sliding_window"])
    return model


def decoder_layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def as_float64(tensor):
    return tensor.detach().to(torch.float64)


def relevance(x, gradient):
    """Per-position relevance [S]: x * gradient summed over the hidden dimension (batch 1)."""
    return (as_float64(x) * as_float64(gradient)).sum(-1)[0].tolist()


def logit_sum(logits, prompt_len, tokens):
    return sum(logits[prompt_len - 1 + j, t] for j, t in enumerate(tokens))


def attribute(model, ids, prompt_len, target, foil=None):
    """One forward pass; relevances for the objective, its layers and biases, and per target token."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    biases = [p.requires_grad_(True) for n, p in model.named_parameters() if n.endswith(".bias")]
    layer_outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, output: layer_outputs.append(output[0]))
             for layer in decoder_layers(model)]
    try:
        logits = model(inputs_embeds=embeds, use_cache=False).logits[0]
    finally:
        for hook in hooks:
            hook.remove()
    objective = logit_sum(logits, prompt_len, target)
    grads = torch.autograd.grad(objective, [embeds, *layer_outputs, *biases], retain_graph=True,
                                allow_unused=True)
    embed_grad, layer_grads, bias_grads = grads[0], grads[1:1 + len(layer_outputs)], grads[1 + len(layer_outputs):]
    result = {"relevance": relevance(embeds, embed_grad), "objective": objective.item(),
              "layer_relevance": [(as_float64(h) * as_float64(g)).sum().item()
                                  for h, g in zip(layer_outputs, layer_grads)],
              "token_matrix": [relevance(embeds, torch.autograd.grad(logits[prompt_len - 1 + j, t], embeds,
                                                                     retain_graph=True)[0])
                               for j, t in enumerate(target)],
              "bias_relevance": sum((as_float64(b) * as_float64(g)).sum().item()
                                    for b, g in zip(biases, bias_grads) if g is not None)}
    if hasattr(model, "transformer"):  # GPT-2: the position embeddings take their share of the relevance
        positions = model.transformer.wpe(torch.arange(ids.shape[1]))[None]
        result["position_relevance"] = relevance(positions, embed_grad)
    contrastive = None
    if foil is not None:
        contrastive_objective = objective - logit_sum(logits, prompt_len, foil)
        contrastive = {"relevance": relevance(embeds, torch.autograd.grad(contrastive_objective, embeds)[0]),
                       "objective": contrastive_objective.item()}
    return result, contrastive


def check_log_probs(model, ids, prompt_len, target, expected):
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids, use_cache=False).logits[0], -1)
    got = [log_probs[prompt_len - 1 + j, t].item() for j, t in enumerate(target)]
    assert all(abs(a - b) < LOG_PROB_TOLERANCE for a, b in zip(got, expected)), (got, expected)


def finite(value):
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return math.isfinite(value)


def run_one(models_dir, name, rule):
    """One architecture under one rule (in a child process: it patches transformers for good)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model_dir = os.path.join(models_dir, name)
    with open(os.path.join(model_dir, "reference.json")) as f:
        reference = json.load(f)
    prompt, target = reference["prompt"], reference["target"]
    foil = FOIL if name == "llama" else None
    assert foil is None or (len(foil) == len(target) and all(a != b for a, b in zip(foil, target)))
    ids = torch.tensor([prompt + target])
    model = load(model_dir)
    check_log_probs(model, ids, len(prompt), target, reference["target_log_probs"])
    plain, _ = attribute(model, ids, len(prompt), target)
    apply_patches(name, rule)
    patched, contrastive = attribute(model, ids, len(prompt), target, foil)
    # The patches took effect: the relevances are no longer plain gradient x input.
    assert max(abs(a - b) for a, b in zip(patched["relevance"], plain["relevance"])) > 1e-3, (patched, plain)
    assert abs(patched["objective"] - plain["objective"]) < 1e-4 * max(1.0, abs(plain["objective"]))
    if rule == "cp_lrp":
        total = sum(patched["relevance"]) + sum(patched.get("position_relevance", [])) + patched["bias_relevance"]
        assert abs(total - patched["objective"]) < CONSERVATION_TOLERANCE * max(1.0, abs(patched["objective"])), \
            (name, total, patched["objective"])
    out = {"prompt": prompt, "target": target, "input_x_gradient": plain["relevance"], rule: patched}
    if foil is not None:
        out["contrastive"] = {"foil": foil, rule: contrastive}
    assert finite(out), out
    versions = {"lxt": importlib.metadata.version("lxt"), "transformers": transformers.__version__,
                "torch": torch.__version__}
    return versions, out


def child(connection, args):
    try:
        connection.send(("ok", run_one(*args)))
    except BaseException:
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def in_child_process(*args):
    """run_one(*args) in a forked child, so that its patches die with it."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(sender, args))
    process.start()
    sender.close()
    try:
        status, value = receiver.recv()
    except EOFError:
        status, value = "error", "no answer"
    process.join()
    if status != "ok" or process.exitcode != 0:
        raise RuntimeError(f"lxt_reference {args[1:]} failed (exit code {process.exitcode}):\n{value}")
    return value


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out_json, models_dir = sys.argv[1:]
    versions, models = None, {}
    for name in ARCHITECTURES:
        entry, contrastive = {}, {}
        for rule in RULES:
            versions, out = in_child_process(models_dir, name, rule)
            contrastive.update(out.pop("contrastive", {}))
            if "input_x_gradient" in entry:  # the same unpatched answer in every child
                assert entry["input_x_gradient"] == out["input_x_gradient"], name
            entry.update(out)
        models[name] = dict(entry, **({"contrastive": contrastive} if contrastive else {}))
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"versions": versions, "models": models}, f, indent=1)
    os.replace(tmp, out_json)
    print(f"lxt_reference: wrote {list(models)} x {list(RULES)} to {out_json} "
          f"(lxt {versions['lxt']}, transformers {versions['transformers']}, torch {versions['torch']})")


if __name__ == "__main__":
    main()
