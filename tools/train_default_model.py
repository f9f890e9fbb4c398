#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Trains the project's default model: a small Llama-architecture causal LM that answers the
question-answer tasks of tools/default_model_tasks.py, mixed with public-domain text (the King James
Bible, Genesis to Ruth, from Debian's bible-kjv package), and writes it as a Hugging Face directory
(config.json, model.safetensors, tokenizer.model, tokenizer_config.json, generation_config.json) plus
the held-out question set the accuracy test and the faithfulness benchmark use.

Deterministic: everything is seeded and runs on 2 CPU threads, so the same torch version reproduces the
same weights. It runs once; the weights are committed and CI never retrains.

Usage: train_default_model.py OUT_DIR [--steps 1500] [--threads 2]
Needs: the project's venv (torch, transformers, sentencepiece) and `apt-get install bible-kjv`.
"""
import argparse
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import time

import sentencepiece as spm
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default_model_tasks as tasks  # noqa: E402

VOCAB_SIZE = 4000
SEED = 20261125


def scripture_verses():
    text = subprocess.run(["bible", "-f", "Ge1:1-Ru4:22"], check=True, capture_output=True, text=True).stdout
    verses = [re.sub(r"^\S+\s+", "", line).strip() for line in text.splitlines()]
    return [v for v in verses if v]


def short_verses(verses):
    """Verses short enough to serve as distractor sentences."""
    return [v for v in verses if len(v.split()) <= 14 and v.endswith(".")]


def train_tokenizer(verses, rng):
    sentences = list(verses)
    for _ in range(20000):
        task = rng.choice(tasks.TASKS)
        q = tasks.question(task, rng, rng.random() < 0.5, short_verses(verses))
        sentences.append(f"{q.prompt} {q.answer}")
    model = io.BytesIO()
    # Llama's own settings: BPE with byte fallback, identity normalisation, a dummy prefix, digits split.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2, input_sentence_size=0,
        shuffle_input_sentence=False)
    return model.getvalue()


UNK_ID = 0
MASK_RATES = [0.1, 0.25, 0.5, 1.0]


class Batches:
    """Training batches: task questions (training pairs only) and runs of consecutive verses. Every
    question's answer gets its own loss term, so the tasks are not drowned by the scripture.

    Half the questions have prompt tokens replaced by <unk> (token 0, the attribution baseline) at a
    rate drawn from MASK_RATES: the model learns that <unk> means "missing", so a question whose
    decisive word is hidden is answered 50/50 (a soft target) and one with only other words hidden is
    answered as before. Perturbation and path methods then probe the model on inputs it knows."""

    def __init__(self, sp, verses, rng, batch_size, text_fraction=0.3, max_tokens=64):
        self.sp, self.verses, self.rng = sp, verses, rng
        self.distractors = short_verses(verses)
        self.batch_size, self.text_fraction, self.max_tokens = batch_size, text_fraction, max_tokens
        self.yes, self.no = sp.encode("Yes")[0], sp.encode("No")[0]

    def _text_row(self):
        start = self.rng.randrange(len(self.verses))
        ids = [1]
        for verse in self.verses[start:start + 8]:
            ids += self.sp.encode(verse)
            if len(ids) >= self.max_tokens:
                break
        return ids[:self.max_tokens], None, None

    def _question_row(self):
        q = tasks.question(self.rng.choice(tasks.TASKS), self.rng, False, self.distractors)
        pieces = self.sp.encode(q.prompt, out_type="proto").pieces
        prompt = [1] + [p.id for p in pieces]
        yes_weight = 1.0 if q.answer == "Yes" else 0.0
        if self.rng.random() < 0.5:
            rate = self.rng.choice(MASK_RATES)
            for i, piece in enumerate(pieces):
                if self.rng.random() < rate:
                    prompt[i + 1] = UNK_ID
                    if any(piece.begin < end and begin < piece.end for begin, end in q.decisive_spans):
                        yes_weight = 0.5
        return prompt + [self.yes if q.answer == "Yes" else self.no, 2], len(prompt), yes_weight

    def next(self):
        rows = [self._text_row() if self.rng.random() < self.text_fraction else self._question_row()
                for _ in range(self.batch_size)]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        answer_at = torch.full((len(rows),), -1, dtype=torch.long)
        yes_weight = torch.zeros(len(rows))
        for i, (ids, answer, weight) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
            if answer is not None:
                answer_at[i] = answer
                yes_weight[i] = weight
        return input_ids, mask, answer_at, yes_weight


def loss_of(model, input_ids, mask, answer_at, yes_weight, yes, no):
    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    next_ids = input_ids[:, 1:]
    token_lp = log_probs.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
    # Language-model loss on every real token except <unk> targets and the answers (scored below).
    valid = mask[:, 1:].float() * (next_ids != UNK_ID).float()
    rows = torch.nonzero(answer_at >= 0).squeeze(-1)
    valid[rows, answer_at[rows] - 1] = 0
    lm_loss = -(token_lp * valid).sum() / valid.sum()
    at_answer = log_probs[rows, answer_at[rows] - 1]
    w = yes_weight[rows]
    answer_loss = -(w * at_answer[:, yes] + (1 - w) * at_answer[:, no]).mean()
    return lm_loss, answer_loss


@torch.no_grad()
def accuracy(model, sp, questions):
    """Fraction of questions whose answer is the likelier of the two answers, per task."""
    yes, no = sp.encode("Yes"), sp.encode("No")
    assert len(yes) == 1 and len(no) == 1, (yes, no)
    correct = {t: [0, 0] for t in tasks.TASKS}
    for start in range(0, len(questions), 128):
        chunk = questions[start:start + 128]
        logits = tasks.last_token_logits(model, [[1] + sp.encode(q.prompt) for q in chunk])
        for q, row in zip(chunk, logits):
            said = "Yes" if row[yes[0]] > row[no[0]] else "No"
            correct[q.task][0] += said == q.answer
            correct[q.task][1] += 1
    return {t: c / n for t, (c, n) in correct.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(SEED)
    os.makedirs(args.out_dir, exist_ok=True)

    begin = time.time()
    verses = scripture_verses()
    sp_bytes = train_tokenizer(verses, rng)
    print(f"train: tokenizer trained in {time.time() - begin:.1f}s", flush=True)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    held_out = tasks.held_out_questions(200, verses=short_verses(verses))

    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"train: {params / 1e6:.2f}M parameters, {len(verses)} verses, vocab {VOCAB_SIZE}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=2e-3, betas=(0.9, 0.95))
    warmup = 200

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    batches = Batches(sp, verses, rng, args.batch)
    start = time.time()
    model.train()
    for step in range(args.steps):
        input_ids, mask, answer_at, yes_weight = batches.next()
        lm_loss, answer_loss = loss_of(model, input_ids, mask, answer_at, yes_weight, batches.yes, batches.no)
        optimizer.zero_grad(set_to_none=True)
        (lm_loss + answer_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            model.eval()
            acc = accuracy(model, sp, held_out[::4])
            model.train()
            print(f"step {step:5d}  {time.time() - start:7.1f}s  lm {lm_loss.item():.3f}  answer {answer_loss.item():.4f}  "
                  + "  ".join(f"{t} {a:.3f}" for t, a in acc.items()), flush=True)

    model.eval()
    final = accuracy(model, sp, held_out)
    print("held-out accuracy: " + "  ".join(f"{t} {a:.4f}" for t, a in final.items()), flush=True)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    with open(os.path.join(args.out_dir, "tokenizer.model"), "wb") as f:
        f.write(sp_bytes)
    with open(os.path.join(args.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "add_eos_token": False, "legacy": True, "model_max_length": 512}, f, indent=2)
    with open(os.path.join(args.out_dir, "heldout.jsonl"), "w") as f:
        for q in tasks.held_out_questions(200, seed=8, verses=short_verses(verses)):
            f.write(json.dumps(q.as_json()) + "\n")
    with open(os.path.join(args.out_dir, "training.json"), "w") as f:
        json.dump({"seed": SEED, "steps": args.steps, "batch": args.batch, "threads": args.threads,
                   "parameters": params, "seconds": round(time.time() - start, 1), "torch": torch.__version__,
                   "held_out_accuracy_monitor": final}, f, indent=2)


if __name__ == "__main__":
    main()
