#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a small Llama-architecture model directory that the server can load and the end-to-end
tests and README demo use until the trained default model lands: random weights (seeded) in HF format
(config.json, model.safetensors, generation_config.json) and a Llama-2-style tokenizer.json (Metaspace
BPE with byte fallback, <s> prepended) trained here on a synthetic corpus.

Usage: make_demo_model.py OUT_DIR [--sentencepiece]
  --sentencepiece: a SentencePiece tokenizer.model (BPE, byte fallback) instead of tokenizer.json.
"""
import io
import json
import os
import sys

import sentencepiece as spm
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_test_tokenizers import corpus, metaspace_tokenizer  # noqa: E402


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    if "--sentencepiece" in sys.argv:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus(1, 3000, "")), model_writer=model, vocab_size=900,
                                       model_type="bpe", byte_fallback=True, character_coverage=0.9995,
                                       bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2)
        with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
            f.write(model.getvalue())
        vocab_size = 900
    else:
        tokenizer = metaspace_tokenizer("llama2", corpus(1, 3000, "</s>"))
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
        vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, unk_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    print(f"make_demo_model: wrote {out_dir} (vocab {config.vocab_size})")


if __name__ == "__main__":
    main()
