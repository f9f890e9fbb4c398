#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""How many path points integrated gradients needs on a model, whatever the quadrature rule.

For each prompt (tolerance_ig.py's, same target and token-0 baseline), in float64 through transformers: the
integrand f(alpha) = grad log p(target | b + alpha (x - b)) . (x - b), per prompt position. The reference is
Gauss-Legendre with 512 points (Captum's method at 512 steps). For each rule family, the fewest points whose
attribution is within --within of the reference (max |error| / max |reference|), found with the reference at
hand, so no stopping rule can do better in that family:
  * Gauss-Legendre at orders 8, 12, 16, 24, ..., 384;
  * Fejér's second rule at its nested orders 7, 15, 31, ... (the server's default rule with a tolerance);
  * adaptive Gauss-Kronrod 7/15: [0, 1] first, then the interval whose |K15 - G7| is largest is halved,
    stopped the moment its K15 sum is within --within (an oracle stop: an error estimate can only stop later).
Also the integrand's scale: the largest |sum_p f(alpha)| on a 257-point grid against |f(x) - f(baseline)|.

Usage: ig_integrand.py [MODEL_DIR] [--within 1e-3]
"""
import argparse
import os

import numpy as np
import sentencepiece
import torch
import transformers

from tolerance_ig import PROMPTS, ROOT, SCANNED_ORDERS as GL_ORDERS

FEJER_ORDERS = [7, 15, 31, 63, 127, 255, 511]


class Integrand:
    """f(alpha) per prompt position, each alpha computed once."""

    def __init__(self, model, pieces, prompt):
        embed = model.get_input_embeddings()
        # As tolerance_ig.py asks the server: bos, the prompt, and " yes" tokenized alone (▁, ▁y, es).
        ids = [model.config.bos_token_id] + pieces.encode(prompt)
        target = torch.tensor(pieces.encode(" yes"))
        p, t = len(ids), len(target)
        x = embed(torch.tensor([ids]))[0]
        b = embed(torch.zeros(1, p, dtype=torch.long))[0]

        def log_prob(e):  # [n, P, H] -> [n]
            z = torch.cat([e, embed(target)[None].expand(e.shape[0], -1, -1)], 1)
            lp = torch.log_softmax(model(inputs_embeds=z).logits[:, p - 1:p - 1 + t], -1)
            return lp.gather(-1, target[None, :, None].expand(e.shape[0], -1, 1)).sum((1, 2))

        self.log_prob, self.x, self.b, self.cache = log_prob, x, b, {}
        ends = log_prob(torch.stack([x, b])).detach().numpy()
        self.difference = ends[0] - ends[1]
        self.positions = p

    def __call__(self, alphas):
        todo = [a for a in dict.fromkeys(float(a) for a in alphas) if a not in self.cache]
        for i in range(0, len(todo), 64):
            chunk = todo[i:i + 64]
            a = torch.tensor(chunk, dtype=torch.float64)[:, None, None]
            e = (self.b + a * (self.x - self.b)).requires_grad_(True)
            grad, = torch.autograd.grad(self.log_prob(e).sum(), e)
            for alpha, v in zip(chunk, (grad * (self.x - self.b)).sum(-1).numpy()):
                self.cache[alpha] = v
        return np.stack([self.cache[float(a)] for a in alphas])


def gauss_legendre(n):
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def fejer2(n):
    """Fejér's second rule on [0, 1]: the n interior Chebyshev extrema (n + 1 a power of 2)."""
    m = n + 1
    theta = np.pi * np.arange(1, m) / m
    j = np.arange(1, m // 2 + 1)[:, None]
    weights = 2 / m * np.sin(theta) * (np.sin((2 * j - 1) * theta) / (2 * j - 1)).sum(0)
    return (1 - np.cos(theta)) / 2, weights


# Gauss-Kronrod 7/15 on [-1, 1]: Kronrod nodes from the outside in (0 last), their weights, Gauss's at odd ones.
KRONROD_X = np.array([0.991455371120812639, 0.949107912342758525, 0.864864423359769073, 0.741531185599394440,
                      0.586087235467691130, 0.405845151377397167, 0.207784955007898468, 0.0])
KRONROD_W = np.array([0.022935322010529225, 0.063092092629978553, 0.104790010322250184, 0.140653259715525919,
                      0.169004726639267903, 0.190350578064785410, 0.204432940075298892, 0.209482141084727828])
GAUSS_W = np.array([0.129484966168869693, 0.279705391489276668, 0.381830050505118945, 0.417959183673469388])


def kronrod15(f, lo, hi):
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    values = f(np.concatenate([mid - half * KRONROD_X, mid + half * KRONROD_X[-2::-1]]))
    kronrod = np.concatenate([KRONROD_W, KRONROD_W[-2::-1]]) * half
    gauss = np.zeros(15)
    gauss[1::2] = np.concatenate([GAUSS_W, GAUSS_W[-2::-1]]) * half
    return kronrod @ values, gauss @ values


def relative_error(a, reference):
    return np.abs(a - reference).max() / np.abs(reference).max()


def fewest(orders, rule, f, reference, within):
    for n in orders:
        x, w = rule(n)
        if relative_error(w @ f(x), reference) <= within:
            return str(n)
    return f"> {orders[-1]}"


def fewest_adaptive(f, reference, within, budget=1024):
    intervals = [(0.0, 1.0, *kronrod15(f, 0.0, 1.0))]
    points = 15
    while relative_error(sum(i[2] for i in intervals), reference) > within:
        if points + 30 > budget:
            return f"> {points}"
        lo, hi, _, _ = intervals.pop(int(np.argmax([np.abs(i[2] - i[3]).max() for i in intervals])))
        mid = (lo + hi) / 2
        intervals += [(lo, mid, *kronrod15(f, lo, mid)), (mid, hi, *kronrod15(f, mid, hi))]
        points += 30
    return str(points)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=os.path.join(ROOT, "models/tiny-qa-llama"))
    parser.add_argument("--within", type=float, default=1e-3)
    args = parser.parse_args()
    pieces = sentencepiece.SentencePieceProcessor(model_file=os.path.join(ROOT, "models/tiny-qa-llama/tokenizer.model"))
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float64).eval()
    model.requires_grad_(False)
    print(f"| prompt | tokens | f(x) - f(b) | max \\|A\\| | peak \\|sum_p f\\| | Gauss-Legendre | Fejér 2 nested "
          f"| adaptive GK 7/15 | fewest rows saved vs 512 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prompt in PROMPTS:
        f = Integrand(model, pieces, prompt)
        x, w = gauss_legendre(512)
        reference = w @ f(x)
        peak = np.abs(f(np.linspace(0, 1, 257)).sum(1)).max()
        counts = [fewest(GL_ORDERS, gauss_legendre, f, reference, args.within),
                  fewest(FEJER_ORDERS, fejer2, f, reference, args.within),
                  fewest_adaptive(f, reference, args.within)]
        best = min(int(c) for c in counts if not c.startswith(">"))
        print(f"| {prompt} | {f.positions} | {f.difference:.3f} | {np.abs(reference).max():.3f} | {peak:.1f} | "
              + " | ".join(counts) + f" | {514 / (best + 2):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
