#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Component attributions (activation patching, layer integrated gradients at heads and residual positions,
attribution patching) on the architecture test models, from TransformerLens and from plain PyTorch hooks over
transformers, as the reference for the C++ component attribution tests.

Usage: component_reference.py OUT_JSON MODELS_DIR   (MODELS_DIR as written by make_architecture_models.py)

Runs under the main environment (.venv, scripts/setup): torch 2.11.0, transformers 5.23.0, transformer-lens
4.3.0 (it installs beside them without changing a version), captum 0.9.0. TransformerLens 4 has no HookedTransformer: the model is booted with
TransformerBridge.boot_transformers(MODELS_DIR/NAME), which wraps the HF model with its raw weights (no layer
norm folding, no centering; compatibility mode is never enabled) and eager attention; its logits are checked
against transformers' (eager) within 1e-4. The bridge exposes HookedTransformer's names as aliases
(blocks.L.hook_resid_pre, blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.attn.hook_z with shape
[batch, pos, n_heads, d_head]: query heads, also for grouped-query llama/qwen2), so the functions of
transformer_lens.patching run on it unchanged.

For each NAME in gpt2, llama, qwen2, falcon (the 7B layout: attention and MLP in parallel, so a layer's
mlp_out does not see its attn_out), mixtral (mlp_out: the sparse MoE block's output) and qwen2-window (full
attention in its first layer, a window of 6 in its second: AtP* must weigh each layer's heads by its own mask),
in float32, eval mode,
on the CPU, the clean ids are the first 10 prompt ids of reference.json and the corrupted ids the same with
position 3 replaced by CORRUPT_TOKEN; ids are fed as they are (no BOS). The metric is
m = logits[0, -1, ANSWER] - logits[0, -1, WRONG] (raw logit difference).
Sites (one forward of the base run, values from the other run's cache):
  resid_pre[l, p]        the input hidden state of decoder layer l at position p (GPT-2: with position embeddings);
  attn_out[l, p]         the attention block's output (after the output projection and its bias) at position p;
  mlp_out[l, p]          the MLP block's output at position p;
  heads[l, h]            z of query head h (the input of o_proj / attn.c_proj, slice h*d_head:(h+1)*d_head) at
                         all positions; heads_by_pos[l, p, h] the same at position p only.
Denoising runs the corrupted ids with clean activations patched in, noising the clean ids with corrupted ones.
The hf grids patch one cell per batch row (one batched forward per grid); TL's patch one cell per forward, from
the bridge's own run_with_cache, and hold float32 values (transformer_lens.patching stores them so).

OUT_JSON: {"versions": {"transformer_lens", "transformers", "torch", "captum"}, "n_steps": 16,
           "models": {NAME: {"clean_ids": [P], "corrupted_ids": [P], "answer": int, "wrong_answer": int,
               "clean_metric": float, "corrupted_metric": float,
               "tl_denoising", "tl_noising", "hf_denoising", "hf_noising": GRIDS  (m of the patched run),
               "atp_noising", "atp_denoising": GRIDS  (attribution patching: (a_other - a_base) * dm/da at the
                   base run, summed over hidden / over positions and d_head for heads / over d_head),
               "atp_star_noising", "atp_star_denoising": GRIDS  (AtP*, by definition: atp_star_reference.py),
               "lig_noising_heads", "lig_denoising_heads": [L][H], "lig_noising_resid_pre",
               "lig_denoising_resid_pre": [L][P]}}}
GRIDS = {"resid_pre": [L][P], "attn_out": [L][P], "mlp_out": [L][P], "heads": [L][H], "heads_by_pos": [L][P][H]}.
LIG: the base run with the site replaced by a_base + alpha * (a_other - a_base) (only that site), the attribution
sum_k w_k dm/dalpha(alpha_k) with Captum's Gauss-Legendre alphas and weights for n_steps=16; it approximates the
patching effect m_patched - m_base. All numbers float64.
Self-checks: TL grids equal the hf grids within 1e-4 of the grid's max abs; LIG sums against the patching
effects (max gap printed; asserted within 1e-3 except for mixtral, whose routing jumps no gradient sees);
AtP heads and resid_pre against dm/dalpha at alpha = 0 of the LIG path within 1e-4; patching resid_pre[0, 3]
into the corrupted run gives the clean metric (exactly, in one unbatched forward).
"""
import contextlib
import importlib.metadata
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching shows a progress bar per sweep
import torch  # noqa: E402
import transformers  # noqa: E402
from captum.attr._utils.approximation_methods import approximation_parameters  # noqa: E402
from transformer_lens import patching  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

NAMES = ("gpt2", "llama", "qwen2", "falcon", "mixtral", "qwen2-window")
N_TOKENS = 10
CORRUPT_POSITION = 3
CORRUPT_TOKEN = 700  # ordinary token (300-1199), differs from every prompt's id at position 3
ANSWER, WRONG = 620, 333
N_STEPS = 16
GRIDS = ("resid_pre", "attn_out", "mlp_out", "heads", "heads_by_pos")
TL_FUNCTIONS = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
    "heads": patching.get_act_patch_attn_head_out_all_pos,
    "heads_by_pos": patching.get_act_patch_attn_head_out_by_pos,
}
GRID_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-4
LIG_TOLERANCE = 1e-3  # relative to the largest patching effect of the grid


def metric(logits):
    """Logit difference at the last position, one value per batch row (float64)."""
    last = logits[:, -1].double()
    return last[:, ANSWER] - last[:, WRONG]


def site_modules(model, layer):
    """{site: (module, is_pre_hook)}: where each site's activation enters or leaves a module."""
    if model.config.model_type == "gpt2":
        attn, mlp, o_proj = layer.attn, layer.mlp, layer.attn.c_proj
    elif model.config.model_type == "falcon":
        attn, mlp, o_proj = layer.self_attention, layer.mlp, layer.self_attention.dense
    else:
        attn, mlp, o_proj = layer.self_attn, layer.mlp, layer.self_attn.o_proj
    return {"resid_pre": (layer, True), "attn_out": (attn, False), "mlp_out": (mlp, False), "z": (o_proj, True)}


@contextlib.contextmanager
def hooked(model, edit):
    """Forward hooks that replace every site's activation a of layer l by edit(site, l, a)."""
    handles = []
    for index, layer in enumerate(model.base_model.h if hasattr(model.base_model, "h") else model.model.layers):
        for site, (module, pre) in site_modules(model, layer).items():
            if pre:

                def hook(_, args, kwargs, site=site, index=index):
                    if args:
                        return (edit(site, index, args[0]),) + args[1:], kwargs
                    return args, {**kwargs, "hidden_states": edit(site, index, kwargs["hidden_states"])}

                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:

                def hook(_, args, output, site=site, index=index):
                    if isinstance(output, tuple):
                        return (edit(site, index, output[0]),) + output[1:]
                    return edit(site, index, output)

                handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward(model, ids, edit=None):
    with hooked(model, edit or (lambda site, layer, a: a)):
        return model(input_ids=ids, use_cache=False).logits


def cells(grid, shape):
    """(grid index, site, layer, selector into the site's [batch, pos, hidden] activation) for every cell."""
    n_layers, n_pos, n_heads, d_head = shape
    for l in range(n_layers):
        if grid == "heads":
            for h in range(n_heads):
                yield (l, h), "z", l, (slice(None), slice(None), slice(h * d_head, (h + 1) * d_head))
        elif grid == "heads_by_pos":
            for p in range(n_pos):
                for h in range(n_heads):
                    yield (l, p, h), "z", l, (slice(None), p, slice(h * d_head, (h + 1) * d_head))
        else:
            for p in range(n_pos):
                yield (l, p), grid, l, (slice(None), p, slice(None))


def grid_shape(grid, shape):
    n_layers, n_pos, n_heads, _ = shape
    return {"heads": (n_layers, n_heads), "heads_by_pos": (n_layers, n_pos, n_heads)}.get(grid, (n_layers, n_pos))


def capture(model, ids):
    """Every site's activation of one forward, and the metric."""
    cache = {}

    def edit(site, layer, a):
        cache[site, layer] = a.detach().clone()
        return a

    with torch.no_grad():
        return cache, metric(forward(model, ids, edit)).item()


def hf_patching(model, base_ids, source_cache, shape):
    """The 5 grids of m after patching one cell of the base run with the source run's activation (one batched
    forward per grid: batch row i patches cell i only)."""
    out = {}
    for grid in GRIDS:
        grid_cells = list(cells(grid, shape))

        def edit(site, layer, a):
            a = a.clone()
            for row, (_, s, l, sel) in enumerate(grid_cells):
                if (s, l) == (site, layer):
                    a[row][sel[1:]] = source_cache[site, layer][0][sel[1:]]
            return a

        with torch.no_grad():
            values = metric(forward(model, base_ids.expand(len(grid_cells), -1), edit))
        out[grid] = torch.zeros(grid_shape(grid, shape), dtype=torch.float64)
        for row, (index, *_) in enumerate(grid_cells):
            out[grid][index] = values[row]
    return out


def tl_patching(bridge, base_ids, source_cache):
    """The same grids from transformer_lens.patching on the bridge (metric of the patched run)."""
    tl_metric = lambda logits: metric(logits)[0]  # noqa: E731
    return {g: f(bridge, base_ids, source_cache, tl_metric).double() for g, f in TL_FUNCTIONS.items()}


def atp(model, ids, other_cache):
    """Attribution patching: (a_other - a_base) * dm/da at the base run, for every cell of the 5 grids."""
    deltas, acts = {}, {}

    def edit(site, layer, a):
        acts[site, layer] = a.detach().clone()
        deltas[site, layer] = torch.zeros_like(a, requires_grad=True)
        return a + deltas[site, layer]

    metric(forward(model, ids, edit))[0].backward()
    return {(s, l): (other_cache[s, l] - acts[s, l]) * deltas[s, l].grad for (s, l) in deltas}


def atp_grids(products, shape):
    out = {}
    for grid in GRIDS:
        values = torch.zeros(grid_shape(grid, shape), dtype=torch.float64)
        for index, site, layer, sel in cells(grid, shape):
            values[index] = products[site, layer][sel].double().sum()
        out[grid] = values
    return out


def lig(model, base_ids, other_cache, grid, shape):
    """Layer integrated gradients: sum_k w_k dm/dalpha at alpha_k, the site going from a_base to a_other; also
    dm/dalpha at alpha = 0 (an extra batch row), which is what attribution patching computes."""
    step_sizes, alphas = approximation_parameters("gausslegendre")
    weights = torch.tensor(step_sizes(N_STEPS), dtype=torch.float64)
    batch = base_ids.expand(N_STEPS + 1, -1)
    values = torch.zeros(grid_shape(grid, shape), dtype=torch.float64)
    slopes = torch.zeros_like(values)
    for index, site, layer, sel in cells(grid, shape):
        alpha = torch.tensor(alphas(N_STEPS) + [0.0], dtype=torch.float32, requires_grad=True)

        def edit(s, l, a):
            if (s, l) != (site, layer):
                return a
            mask = torch.zeros_like(a)
            mask[sel] = 1.0
            return a + alpha.view(-1, 1, 1) * mask * (other_cache[site, layer] - a)

        metric(forward(model, batch, edit)).sum().backward()
        values[index] = (weights * alpha.grad[:N_STEPS].double()).sum()
        slopes[index] = alpha.grad[N_STEPS]
    return values, slopes


def check_grids(label, reference, other, tolerance):
    """Asserts other == reference within tolerance of each grid's max abs; prints the worst gap."""
    worst = 0.0
    for grid in GRIDS:
        assert other[grid].shape == reference[grid].shape, (label, grid, other[grid].shape, reference[grid].shape)
        scale = max(reference[grid].abs().max().item(), 1e-12)
        gap = (other[grid] - reference[grid]).abs().max().item() / scale
        assert gap < tolerance, (label, grid, gap)
        worst = max(worst, gap)
    print(f"  {label}: max gap / max abs = {worst:.3g}")


def model_reference(directory):
    with open(os.path.join(directory, "reference.json")) as f:
        clean = torch.tensor([json.load(f)["prompt"][:N_TOKENS]])
    corrupted = clean.clone()
    assert corrupted[0, CORRUPT_POSITION] != CORRUPT_TOKEN
    corrupted[0, CORRUPT_POSITION] = CORRUPT_TOKEN
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    model.requires_grad_(False)
    config = model.config
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    shape = (config.num_hidden_layers, N_TOKENS, n_heads, d_head)

    bridge = TransformerBridge.boot_transformers(directory, device="cpu", dtype=torch.float32)
    bridge.eval()
    with torch.no_grad():
        gap = (bridge(clean) - model(input_ids=clean, use_cache=False).logits).abs().max().item()
    print(f"  bridge vs transformers logits: max abs diff {gap:.3g}")
    assert gap < LOGIT_TOLERANCE, gap

    clean_cache, clean_metric = capture(model, clean)
    corrupted_cache, corrupted_metric = capture(model, corrupted)
    print(f"  clean metric {clean_metric:.6f}, corrupted metric {corrupted_metric:.6f}")
    out = {
        "clean_ids": clean[0].tolist(),
        "corrupted_ids": corrupted[0].tolist(),
        "answer": ANSWER,
        "wrong_answer": WRONG,
        "clean_metric": clean_metric,
        "corrupted_metric": corrupted_metric,
    }
    with torch.no_grad():
        tl_clean_logits, tl_clean_cache = bridge.run_with_cache(clean)
        _, tl_corrupted_cache = bridge.run_with_cache(corrupted)
    tl_clean_metric = metric(tl_clean_logits).item()
    runs = {
        "denoising": (corrupted, clean_cache, tl_clean_cache),
        "noising": (clean, corrupted_cache, tl_corrupted_cache),
    }
    for direction, (base_ids, source_cache, tl_source_cache) in runs.items():
        hf = hf_patching(model, base_ids, source_cache, shape)
        tl = tl_patching(bridge, base_ids, tl_source_cache)
        check_grids(f"tl_{direction} vs hf_{direction}", hf, tl, GRID_TOLERANCE)
        out[f"hf_{direction}"], out[f"tl_{direction}"] = hf, tl

    # The corruption is at position 3 only: restoring the residual there restores the clean run exactly (one
    # unbatched forward; the batched grid cell can differ in the last bits).
    def restore(site, layer, a):
        if (site, layer) != ("resid_pre", 0):
            return a
        a = a.clone()
        a[:, CORRUPT_POSITION] = clean_cache[site, layer][:, CORRUPT_POSITION]
        return a

    with torch.no_grad():
        restored = metric(forward(model, corrupted, restore)).item()
    print(f"  hf denoising resid_pre[0, {CORRUPT_POSITION}], one forward - clean metric: {restored - clean_metric:.3g}")
    assert restored == clean_metric, (restored, clean_metric)
    for source, reference in (("hf", clean_metric), ("tl", tl_clean_metric)):
        value = out[f"{source}_denoising"]["resid_pre"][0, CORRUPT_POSITION].item()
        print(f"  {source} denoising resid_pre[0, {CORRUPT_POSITION}] - {source} clean metric: {value - reference:.3g}")
        assert abs(value - reference) <= 1e-6 * max(1.0, abs(reference)), (source, value, reference)

    from atp_star_reference import atp_star  # it imports this module's helpers

    baselines = {
        "noising": (clean, corrupted_cache, clean_metric),
        "denoising": (corrupted, clean_cache, corrupted_metric),
    }
    for direction, (base_ids, other_cache, base_metric) in baselines.items():
        out[f"atp_{direction}"] = atp_grids(atp(model, base_ids, other_cache), shape)
        other_ids = clean if direction == "denoising" else corrupted
        out[f"atp_star_{direction}"] = atp_star(model, base_ids, other_ids, shape)
        for grid in ("heads", "resid_pre"):
            values, slopes = lig(model, base_ids, other_cache, grid, shape)
            atp_values = out[f"atp_{direction}"][grid]
            gap = (atp_values - slopes).abs().max().item() / max(atp_values.abs().max().item(), 1e-12)
            print(f"  atp_{direction} {grid} vs dm/dalpha at alpha 0: max gap / max abs = {gap:.3g}")
            assert gap < GRID_TOLERANCE, (direction, grid, gap)
            effect = out[f"hf_{direction}"][grid] - base_metric
            gap = (values - effect).abs().max().item() / max(effect.abs().max().item(), 1e-12)
            print(f"  lig_{direction}_{grid} vs patching effect: max gap / max abs effect = {gap:.3g}")
            # A mixture of experts is discontinuous where the router's top-k changes along the path: no gradient
            # sees those jumps, so there the integral need not reach the patching effect.
            assert gap < LIG_TOLERANCE or getattr(model.config, "num_local_experts", None), (direction, grid, gap)
            out[f"lig_{direction}_{grid}"] = values
    return out


def to_lists(value):
    if isinstance(value, torch.Tensor):
        return value.double().tolist()
    if isinstance(value, dict):
        return {k: to_lists(v) for k, v in value.items()}
    return value


def main():
    out_json, models_dir = sys.argv[1:3]
    torch.set_num_threads(1)  # tiny models: threads cost more than they bring
    result = {
        "versions": {
            p.replace("-", "_"): importlib.metadata.version(p)
            for p in ("transformer-lens", "transformers", "torch", "captum")
        },
        "n_steps": N_STEPS,
        "models": {},
    }
    for name in NAMES:
        print(name)
        result["models"][name] = to_lists(model_reference(os.path.join(models_dir, name)))
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
