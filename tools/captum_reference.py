#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Attributions computed by Captum (LLMAttribution / LLMGradientAttribution and its core methods) on the
random llama test model, as the reference for the C++ attribution tests.

Usage: captum_reference.py TEST_MODELS_DIR   (reads TEST_MODELS_DIR/llama, writes .../captum_reference.json)

Token ids stand for themselves: a tiny tokenizer maps "t5 t17" <-> [5, 17], so Captum's text-based
classes run unchanged on a model without a real tokenizer.
"""
import json
import os
import sys

import torch
import transformers
from captum.attr import (FeatureAblation, InputXGradient, IntegratedGradients, LayerGradientXActivation,
                         LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution, Saliency, ShapleyValues,
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
