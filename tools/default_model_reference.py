#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks the committed default model with Hugging Face transformers, unchanged, and writes the
references the C++ default-model tests compare with.

Checks (exit 1 on failure): the directory loads with AutoModelForCausalLM and AutoTokenizer; the
tokenizer transformers builds encodes every held-out prompt exactly as SentencePiece does; held-out
accuracy (the likelier of " Yes" / " No" is the answer) is >= 95% on every task.

Writes OUT_JSON: per task accuracy, and for the first questions of each task p(target) and the
deletion / insertion probabilities of a fixed attribution (a[f] = sin(1.7 f + 0.3), the same rule the
C++ test uses), computed here with plain PyTorch over the transformers model: features are the tokens
after <s>, ranked by attribution (ties in prompt order), the top ceil(k% of F) replaced by token 0
(deletion) or alone kept (insertion), k = 1, 5, 10, 20, 50.

Usage: default_model_reference.py MODEL_DIR OUT_JSON
"""
import json
import math
import os
import sys

import sentencepiece as spm
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from default_model_tasks import last_token_logits  # noqa: E402

PERCENTS = [1, 5, 10, 20, 50]
BASELINE_ID = 0


def fixed_attribution(count):
    return [math.sin(1.7 * f + 0.3) for f in range(count)]


@torch.no_grad()
def target_probability(model, prompt_ids, target_ids):
    ids = torch.tensor([prompt_ids + target_ids])
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    p = len(prompt_ids)
    return math.exp(sum(log_probs[p - 1 + t, tok].item() for t, tok in enumerate(target_ids)))


def curves(model, prompt_ids, target_ids, attribution):
    features = list(range(1, len(prompt_ids)))  # token positions after <s>
    ranked = sorted(range(len(features)), key=lambda f: -attribution[f])  # stable: ties keep prompt order

    def with_present(present):
        return [prompt_ids[0]] + [prompt_ids[features[f]] if present[f] else BASELINE_ID for f in range(len(features))]

    out = {"full": target_probability(model, prompt_ids, target_ids),
           "empty": target_probability(model, with_present([False] * len(features)), target_ids),
           "features_at": [], "deletion": [], "insertion": []}
    for percent in PERCENTS:
        top = math.ceil(percent * len(features) / 100 - 1e-9)
        chosen = set(ranked[:top])
        out["features_at"].append(top)
        out["deletion"].append(target_probability(model, with_present([f not in chosen for f in range(len(features))]), target_ids))
        out["insertion"].append(target_probability(model, with_present([f in chosen for f in range(len(features))]), target_ids))
    out["comprehensiveness_aopc"] = sum(out["full"] - d for d in out["deletion"]) / len(PERCENTS)
    out["sufficiency_aopc"] = sum(out["full"] - i for i in out["insertion"]) / len(PERCENTS)
    return out


def main():
    model_dir, out_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    sp = spm.SentencePieceProcessor(model_file=f"{model_dir}/tokenizer.model")
    with open(f"{model_dir}/heldout.jsonl") as f:
        questions = [json.loads(line) for line in f]

    failures = []
    yes, no = sp.encode("Yes"), sp.encode("No")
    correct, total, references = {}, {}, []
    for start in range(0, len(questions), 64):
        chunk = questions[start:start + 64]
        encoded = []
        for q in chunk:
            ids = tokenizer(q["prompt"])["input_ids"]
            if ids != [1] + sp.encode(q["prompt"]):
                failures.append(f"transformers tokenizes {q['prompt']!r} as {ids}, SentencePiece differently")
            if tokenizer(q["target"], add_special_tokens=False)["input_ids"] != sp.encode(q["target"]):
                failures.append(f"transformers tokenizes the target {q['target']!r} differently")
            encoded.append(ids)
        for q, row in zip(chunk, last_token_logits(model, encoded)):
            said = "Yes" if row[yes[0]] > row[no[0]] else "No"
            correct[q["task"]] = correct.get(q["task"], 0) + (said == q["target"])
            total[q["task"]] = total.get(q["task"], 0) + 1
    accuracy = {task: correct[task] / total[task] for task in total}
    for task, a in accuracy.items():
        print(f"default model, transformers: {task} held-out accuracy {a:.4f} ({correct[task]}/{total[task]})")
        if a < 0.95:
            failures.append(f"{task}: held-out accuracy {a:.4f} < 0.95")

    seen = {}
    for q in questions:
        if seen.get(q["task"], 0) >= 8:
            continue
        seen[q["task"]] = seen.get(q["task"], 0) + 1
        prompt_ids = [1] + sp.encode(q["prompt"])
        target_ids = sp.encode(q["target"])
        reference = curves(model, prompt_ids, target_ids, fixed_attribution(len(prompt_ids) - 1))
        references.append({"prompt": q["prompt"], "target": q["target"], "prompt_ids": prompt_ids,
                           "target_ids": target_ids, **reference})
    with open(out_path, "w") as f:
        json.dump({"accuracy": accuracy, "questions": references}, f, indent=1)
    for failure in failures[:10]:
        print("FAIL:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
