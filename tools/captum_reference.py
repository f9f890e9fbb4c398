#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Attributions computed by Captum (LLMAttribution / LLMGradientAttribution and its core methods) on the
random llama test model, as the reference for the C++ attribution tests.

Usage: captum_reference.py TEST_MODELS_DIR   (reads TEST_MODELS_DIR/llama, writes .../captum_reference.json)

Token ids stand for themselves: a tiny tokenizer maps "t5 t17" <-> [5, 17], so Captum's text-based
classes run unchanged on a model without a real tokenizer.
"""
import bisect
import json
import os
import sys

import torch
import transformers
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
from captum.attr import (FeatureAblation, InputXGradient, IntegratedGradients, KernelShap, LayerGradientXActivation,
                         LayerIntegratedGradients, Lime, LLMAttribution, LLMGradientAttribution, Saliency, ShapleyValues,
                         TextTokenInput)

PROMPT = [1, 5, 17, 99, 3, 250, 41, 7]
TARGET = [11, 250, 42]
SHORT_PROMPT = [1, 60, 61, 62, 63]


class IdTokenizer:
    """Duck-typed tokenizer: the text "t5 t17" is the ids [5, 17]."""

    def encode(self, text, return_tensors=None, add_special_tokens=True):
        ids = [int(piece[1:]) for piece in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True, **kwargs):
        ids, offsets, position = [], [], 0
        for piece in text.split(" "):
            if piece:
                ids.append(int(piece[1:]))
                offsets.append((position, position + len(piece)))
            position += len(piece) + 1
        return {"input_ids": ids, "offset_mapping": offsets}

    def decode(self, ids):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join(f"t{i}" for i in (ids if isinstance(ids, list) else [ids]))

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]

    def convert_tokens_to_ids(self, tokens):
        return [int(t[1:]) for t in tokens] if isinstance(tokens, list) else int(tokens[1:])


M64 = (1 << 64) - 1


class SplitMix64:
    """The coalition sampler's random stream (engine/attribution/surrogate_models.cc), bit for bit."""

    def __init__(self, seed):
        self.state = seed & M64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * 2.0 ** -53


def lime_coalitions(m, n, seed):
    rng = SplitMix64(seed)
    return [[rng.uniform() < 0.5 for _ in range(m)] for _ in range(n)]


def kernel_shap_coalitions(m, n, seed):
    rng = SplitMix64(seed)
    cumulative, total = [], 0.0
    for k in range(1, m):
        total += (m - 1.0) / (k * (m - k + 0.0))
        cumulative.append(total)
    samples = [[True] * m, [False] * m][:n]
    while len(samples) < n:
        u = rng.uniform() * total
        k = 1 + bisect.bisect_right(cumulative, u)
        order, c = list(range(m)), [False] * m
        for j in range(min(k, m - 1)):
            r = j + rng.next() % (m - j)
            order[j], order[r] = order[r], order[j]
            c[order[j]] = True
        samples.append(c)
    return samples


def feed(samples):
    """A Captum perturb_func (generator) that yields our coalitions in order."""
    def generator(original_inp, **kwargs):
        for c in samples:
            yield torch.tensor([c], dtype=torch.long)
    return generator


class DoubleData:
    """Iterates a DataLoader in float64, so the sklearn fit runs at full precision."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            yield tuple(t.double() for t in batch)


class PreciseLasso(SkLearnLasso):
    def fit(self, train_data, **kwargs):
        return super().fit(DoubleData(train_data), **kwargs)


class PreciseLinearRegression(SkLearnLinearRegression):
    def fit(self, train_data, **kwargs):
        return super().fit(DoubleData(train_data), **kwargs)


def text(ids):
    return " ".join(f"t{i}" for i in ids)


def result_dict(name, result, **fields):
    out = {"name": name, "seq_attr": result.seq_attr.tolist(),
           "token_attr": None if result.token_attr is None else result.token_attr.tolist()}
    out.update(fields)
    return out


def embedding_forward(model, target, prob=False):
    """f(prompt embeddings) = summed log-prob of the teacher-forced target (its embeddings fixed)."""
    target_embeds = model.get_input_embeddings()(torch.tensor([target]))

    def forward(prompt_embeds):
        embeds = torch.cat([prompt_embeds, target_embeds.expand(prompt_embeds.size(0), -1, -1)], dim=1)
        logits = model(inputs_embeds=embeds).logits.float()
        p = prompt_embeds.size(1)
        log_probs = torch.log_softmax(logits[:, p - 1:p - 1 + len(target)], -1)
        total = log_probs[:, torch.arange(len(target)), torch.tensor(target)].sum(-1)
        return total.exp() if prob else total
    return forward


def main():
    models_dir = sys.argv[1]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(models_dir, "llama"),
                                                              dtype=torch.float32).eval()
    model.requires_grad_(False)
    tokenizer = IdTokenizer()
    embed = model.get_input_embeddings()
    cases = []

    for rule in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"):
        for baseline in (0, 7):
            # Captum interpolates in its interpretable space (1 = token present, 0 = baseline token), so
            # LayerIntegratedGradients' layer baseline is the embedding of TextTokenInput's baseline id.
            lig = LLMGradientAttribution(LayerIntegratedGradients(model, embed), tokenizer)
            inp = TextTokenInput(text(PROMPT), tokenizer, baselines=baseline)
            r = lig.attribute(inp, target=torch.tensor(TARGET), n_steps=8, method=rule)
            cases.append(result_dict(f"ig_{rule}_token{baseline}", r, method="integrated_gradients", rule=rule,
                                     n_steps=8, baseline_token=baseline, prompt=PROMPT, target=TARGET))

    # One point, where Captum refuses (its Riemann builders assert n > 1): the closed form
    # (x - x') . grad f(x' + alpha (x - x')) with the rule's single alpha and weight 1.
    f = embedding_forward(model, TARGET)
    x, x0 = embed(torch.tensor([PROMPT])).detach(), embed(torch.full((1, len(PROMPT)), 7)).detach()
    for rule, alpha in (("riemann_left", 0.0), ("riemann_right", 1.0), ("riemann_middle", 0.5), ("gausslegendre", 0.5)):
        point = (x0 + alpha * (x - x0)).requires_grad_(True)
        (grad,) = torch.autograd.grad(f(point).sum(), point)
        cases.append({"name": f"ig_{rule}_one_step", "method": "integrated_gradients", "rule": rule, "n_steps": 1,
                      "baseline_token": 7, "prompt": PROMPT, "target": TARGET, "token_attr": None,
                      "seq_attr": ((x - x0) * grad).sum(-1)[0].tolist()})

    # Zero-embedding baseline: Captum's IntegratedGradients over the prompt embeddings (as seed 000 does).
    prompt_embeds = embed(torch.tensor([PROMPT]))
    ig = IntegratedGradients(embedding_forward(model, TARGET))
    attr, delta = ig.attribute(prompt_embeds, baselines=torch.zeros_like(prompt_embeds), n_steps=16,
                               method="gausslegendre", return_convergence_delta=True)
    cases.append({"name": "ig_zero_embedding", "method": "integrated_gradients", "rule": "gausslegendre", "n_steps": 16,
                  "zero_embedding": True, "prompt": PROMPT, "target": TARGET, "seq_attr": attr.sum(-1)[0].tolist(),
                  "token_attr": None, "delta": delta.item()})

    # Seed 000: a ~40-token chat prompt, next-token probability of "No" minus that of "Yes", integrated
    # gradients with 15 steps from a pad-token (id 0) baseline over the prompt embeddings.
    chat = [1] + [(13 * i + 7) % 300 + 3 for i in range(39)]
    no_token, yes_token = 42, 43
    chat_embeds = embed(torch.tensor([chat]))

    def no_minus_yes(prompt_embeds):
        probs = torch.softmax(model(inputs_embeds=prompt_embeds).logits[:, -1].float(), -1)
        return probs[:, no_token] - probs[:, yes_token]
    ig = IntegratedGradients(no_minus_yes)
    attr, delta = ig.attribute(chat_embeds, baselines=embed(torch.zeros(1, len(chat), dtype=torch.long)), n_steps=15,
                               method="gausslegendre", return_convergence_delta=True)
    cases.append({"name": "seed000_no_vs_yes", "method": "integrated_gradients", "rule": "gausslegendre", "n_steps": 15,
                  "baseline_token": 0, "quantity": "prob", "prompt": chat, "target": [no_token], "foil": [yes_token],
                  "seq_attr": attr.sum(-1)[0].tolist(), "token_attr": None, "delta": delta.item()})
    # Seed 001 asks for 512 steps to get a small delta: the reference that tolerance-driven IG must reach.
    attr, delta = ig.attribute(chat_embeds, baselines=embed(torch.zeros(1, len(chat), dtype=torch.long)), n_steps=512,
                               method="gausslegendre", return_convergence_delta=True)
    cases.append({"name": "seed000_no_vs_yes_512_steps", "method": "integrated_gradients", "rule": "gausslegendre",
                  "n_steps": 512, "baseline_token": 0, "quantity": "prob", "prompt": chat, "target": [no_token],
                  "foil": [yes_token], "seq_attr": attr.sum(-1)[0].tolist(), "token_attr": None, "delta": delta.item()})

    # Seed 001: the label's probability renormalised over the option letters (one token each), from a pad
    # baseline; and feature ablation of its log (Captum's core classes on a forward that renormalises).
    choices, label = [65, 66, 67, 68, 69], 67

    def choice_log_prob(logits):
        return torch.log_softmax(logits[:, -1].float()[:, choices], -1)[:, choices.index(label)]

    ig = IntegratedGradients(lambda e: choice_log_prob(model(inputs_embeds=e).logits).exp())
    attr, delta = ig.attribute(prompt_embeds, baselines=embed(torch.zeros(1, len(PROMPT), dtype=torch.long)),
                               n_steps=16, method="gausslegendre", return_convergence_delta=True)
    cases.append({"name": "seed001_choice_prob", "method": "integrated_gradients", "rule": "gausslegendre",
                  "n_steps": 16, "baseline_token": 0, "quantity": "prob", "prompt": PROMPT, "target": [label],
                  "choices": choices, "seq_attr": attr.sum(-1)[0].tolist(), "token_attr": None, "delta": delta.item()})
    fa = FeatureAblation(lambda ids: choice_log_prob(model(input_ids=ids).logits))
    attr = fa.attribute(torch.tensor([PROMPT]), baselines=7)
    cases.append({"name": "feature_ablation_choice_log_prob", "method": "feature_ablation", "baseline_token": 7,
                  "quantity": "log_prob", "prompt": PROMPT, "target": [label], "choices": choices,
                  "seq_attr": attr[0].tolist(), "token_attr": None})

    ixg = LLMGradientAttribution(LayerGradientXActivation(model, embed), tokenizer)
    r = ixg.attribute(TextTokenInput(text(PROMPT), tokenizer), target=torch.tensor(TARGET))
    cases.append(result_dict("input_x_gradient", r, method="input_x_gradient", prompt=PROMPT, target=TARGET))

    saliency = Saliency(embedding_forward(model, TARGET))
    grads = saliency.attribute(prompt_embeds, abs=True)
    cases.append({"name": "saliency", "method": "saliency", "prompt": PROMPT, "target": TARGET,
                  "seq_attr": grads.sum(-1)[0].tolist(), "token_attr": None})

    # A probability target uses one token: the probability of three random tokens underflows to ~0.
    for target_kind, target in (("log_prob", TARGET), ("prob", TARGET[:1])):
        fa = LLMAttribution(FeatureAblation(model), tokenizer, attr_target=target_kind)
        r = fa.attribute(TextTokenInput(text(PROMPT), tokenizer, baselines=7), target=torch.tensor(target),
                         forward_in_tokens=False)
        cases.append(result_dict(f"feature_ablation_{target_kind}", r, method="feature_ablation", quantity=target_kind,
                                 baseline_token=7, prompt=PROMPT, target=target))
        sv = LLMAttribution(ShapleyValues(model), tokenizer, attr_target=target_kind)
        r = sv.attribute(TextTokenInput(text(SHORT_PROMPT), tokenizer), target=torch.tensor(target),
                         forward_in_tokens=False)
        cases.append(result_dict(f"shapley_values_{target_kind}", r, method="shapley_values", quantity=target_kind,
                                 prompt=SHORT_PROMPT, target=target))

    # Lime and KernelShap with Captum's kernels and sklearn models (fit in float64 to a tight tolerance,
    # the same optimum as the defaults' float32 fit, without its rounding), fed our coalition samples.
    # (With a probability target the effects are below Lasso's alpha of 0.01: Lime gives all zeros.)
    for target_kind, target in (("log_prob", TARGET), ("prob", TARGET[:1])):
        lime = Lime(model, interpretable_model=PreciseLasso(alpha=0.01, tol=1e-12, max_iter=1000000),
                    perturb_func=feed(lime_coalitions(len(PROMPT), 40, 11)))
        r = LLMAttribution(lime, tokenizer, attr_target=target_kind).attribute(
            TextTokenInput(text(PROMPT), tokenizer, baselines=7), target=torch.tensor(target), n_samples=40,
            forward_in_tokens=False)
        cases.append(result_dict(f"lime_{target_kind}", r, method="lime", quantity=target_kind, baseline_token=7,
                                 n_samples=40, seed=11, prompt=PROMPT, target=target))
        kernel_shap = KernelShap(model)
        kernel_shap.interpretable_model = PreciseLinearRegression()
        kernel_shap.perturb_func = feed(kernel_shap_coalitions(len(PROMPT), 30, 12))
        r = LLMAttribution(kernel_shap, tokenizer, attr_target=target_kind).attribute(
            TextTokenInput(text(PROMPT), tokenizer, baselines=7), target=torch.tensor(target), n_samples=30,
            forward_in_tokens=False)
        cases.append(result_dict(f"kernel_shap_{target_kind}", r, method="kernel_shap", quantity=target_kind,
                                 baseline_token=7, n_samples=30, seed=12, prompt=PROMPT, target=target))

    # Generated target: greedy, 4 new tokens, then feature ablation of it.
    fa = LLMAttribution(FeatureAblation(model), tokenizer)
    r = fa.attribute(TextTokenInput(text(PROMPT), tokenizer),
                     gen_args={"max_new_tokens": 4, "do_sample": False}, forward_in_tokens=False)
    cases.append(result_dict("feature_ablation_generated", r, method="feature_ablation", quantity="log_prob",
                             prompt=PROMPT, target=[int(t[1:]) for t in r.output_tokens], generated=True))

    with open(os.path.join(models_dir, "captum_reference.json"), "w") as f:
        json.dump({"cases": cases}, f)
    print(f"wrote {len(cases)} Captum reference cases")


if __name__ == "__main__":
    main()
