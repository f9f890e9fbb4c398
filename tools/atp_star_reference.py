# SPDX-License-Identifier: Apache-2.0
"""AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to components")
by its definition, over transformers with plain PyTorch autograd: the reference for the C++ estimate, which
computes the same thing in closed form. Imported by component_reference.py (same environment, same models).

For a base run (the prompt the patches go into) and an other run:
  GradDrop: for each layer l of L, one backward of the metric at the base run in which the gradient does not flow
    through layer l's attention and MLP outputs (each output detached after the site's zero leaf, so l's own
    attn_out / mlp_out / heads get no gradient). Each grid cell's estimate is sum_l |AtP_l(cell)| / (L - 1),
    AtP_l(cell) summed over the cell's positions / heads before the absolute value.
  resid_pre, attn_out, mlp_out: AtP_l = sum (a_other - a_base) * dm/da under drop l.
  heads (position t, query head h): the head's query, key and value at t moved to the other run's:
    value  (v_other[t] - v_base[t]) . dm/dv[t], v being the head's (repeated, per query head) value;
    query  sum_s (A'[t, s] - A[t, s]) dm/dA[t, s], A' the softmax of row t recomputed with q_other[t];
    key    sum over query rows r of sum_s (A''[r, s] - A[r, s]) dm/dA[r, s], A'' the whole softmax recomputed
           with key t replaced by k_other[t] (one recomputation per key: the definition, no closed form).
  The attention weights A and their gradient come from an eager attention function installed in place of the
  model's (same mask, same scaling; queries and keys after rotary embeddings, as the model uses them); Falcon,
  whose attention is inline, gets it in place of F.scaled_dot_product_attention.
"""
import contextlib
import importlib

import torch

from component_reference import GRIDS, cells, grid_shape, hooked, metric

_MODULES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "mixtral": "mixtral"}


def record_attention(record, layer, query, key, value, attention_mask, scaling):
    """Attention as transformers computes it, storing q, k, v (key and value heads repeated for their query
    heads), the additive mask, the scaling and the weights (their gradient retained) as record[layer]."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if attention_mask is None:
        mask = torch.zeros(query.shape[-2], key.shape[-2], dtype=query.dtype)
    elif attention_mask.dtype == torch.bool:
        mask = torch.zeros(attention_mask.shape, dtype=query.dtype).masked_fill(~attention_mask, float("-inf"))
    else:
        mask = attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(query @ key.transpose(-1, -2) * scaling + mask, dim=-1)
    if weights.requires_grad:
        weights.retain_grad()
        value.retain_grad()
    record[layer] = {"q": query, "k": key, "v": value, "mask": mask, "scaling": scaling, "a": weights}
    return weights @ value  # [B, H, S, D]


@contextlib.contextmanager
def recorded_attention(model, record):
    """Replaces the model's attention by record_attention for the duration."""
    if model.config.model_type == "falcon":
        # Falcon computes its attention inline; its sdpa path calls F.scaled_dot_product_attention once per
        # layer, in layer order, with a mask or with is_causal.
        original, implementation = torch.nn.functional.scaled_dot_product_attention, model.config._attn_implementation

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
            if attn_mask is None and is_causal:
                attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
            return record_attention(record, len(record), query, key, value, attn_mask, None)

        torch.nn.functional.scaled_dot_product_attention = sdpa
        model.config._attn_implementation = "sdpa"
        try:
            yield
        finally:
            torch.nn.functional.scaled_dot_product_attention = original
            model.config._attn_implementation = implementation
        return
    module = importlib.import_module(f"transformers.models.{_MODULES[model.config.model_type]}.modeling_"
                                     f"{_MODULES[model.config.model_type]}")
    original = module.eager_attention_forward

    def attention(attn, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = record_attention(record, attn.layer_idx, query, key, value, attention_mask, scaling)
        return out.transpose(1, 2), record[attn.layer_idx]["a"]

    module.eager_attention_forward = attention
    try:
        yield
    finally:
        module.eager_attention_forward = original


def run_other(model, ids):
    """The other run's site activations and attention inputs."""
    sites, attention = {}, {}

    def keep(site, layer, a):
        sites[site, layer] = a.detach().clone()
        return a

    with torch.no_grad(), recorded_attention(model, attention), hooked(model, keep):
        model(input_ids=ids, use_cache=False)
    return sites, attention


def head_estimates(base, other):
    """[S, H] value + query + key terms of one layer from the base run's recorded attention (with gradients)."""
    q, k, v, a, mask, scaling = (base[n] for n in ("q", "k", "v", "a", "mask", "scaling"))
    # The dropped layer's weights and values get no gradient.
    grad_a = a.grad[0] if a.grad is not None else torch.zeros_like(a[0])
    grad_v = base["v"].grad[0] if base["v"].grad is not None else torch.zeros_like(v[0])
    q, k, v, a = q[0].detach(), k[0].detach(), v[0].detach(), a[0].detach()
    mask = mask[0, 0] if mask.dim() == 4 else mask
    value = ((other["v"][0] - v) * grad_v).sum(-1)  # [H, S]
    moved = torch.softmax(other["q"][0] @ k.transpose(-1, -2) * scaling + mask, dim=-1)
    query = ((moved - a) * grad_a).sum(-1)
    key = torch.zeros_like(query)
    n_heads, n_pos = query.shape
    for h in range(n_heads):
        for t in range(n_pos):
            keys = k[h].clone()
            keys[t] = other["k"][0, h, t]
            recomputed = torch.softmax(q[h] @ keys.T * scaling + mask, dim=-1)
            key[h, t] = ((recomputed - a[h]) * grad_a[h]).sum()
    return (value + query + key).T.double()


def atp_star(model, base_ids, other_ids, shape):
    """The five grids of AtP* (GRIDS of component_reference), base run patched with the other run's values."""
    other_sites, other_attention = run_other(model, other_ids)
    n_layers = shape[0]
    totals = {grid: torch.zeros(grid_shape(grid, shape), dtype=torch.float64) for grid in GRIDS}
    for dropped in range(n_layers):
        zeros, acts, attention = {}, {}, {}

        def edit(site, layer, a, dropped=dropped):
            acts[site, layer] = a.detach().clone()
            zeros[site, layer] = torch.zeros_like(a, requires_grad=True)
            a = a + zeros[site, layer]
            return a.detach() if layer == dropped and site in ("attn_out", "mlp_out") else a

        with recorded_attention(model, attention), hooked(model, edit):
            logits = model(input_ids=base_ids, use_cache=False).logits
        metric(logits)[0].backward()
        products = {}
        for (site, layer), zero in zeros.items():
            grad = zero.grad if zero.grad is not None else torch.zeros_like(zero)
            products[site, layer] = ((other_sites[site, layer] - acts[site, layer]) * grad).double()
        heads = torch.stack([head_estimates(attention[l], other_attention[l]) for l in range(n_layers)])  # [L, S, H]
        for grid in GRIDS:
            values = torch.zeros(grid_shape(grid, shape), dtype=torch.float64)
            for index, site, layer, sel in cells(grid, shape):
                if site == "z":
                    values[index] = heads[layer].sum(0)[index[-1]] if grid == "heads" else heads[layer][index[1:]]
                else:
                    values[index] = products[site, layer][sel].sum()
            totals[grid] += values.abs()
    return {grid: values / max(n_layers - 1, 1) for grid, values in totals.items()}
