#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the models and references of the token-semantics tests: how text targets become tokens and
which prompt tokens are special, as transformers and sentencepiece (independent of our C++ code) see it.

Usage: token_semantics_reference.py OUT_DIR DEFAULT_MODEL_DIR

Writes
  OUT_DIR/bytelevel/: a random-weight Llama with a byte-level BPE tokenizer.json (GPT-2 style) whose
      template puts <|endoftext|> before every text;
  OUT_DIR/chat/: the same with a Qwen2-style tokenizer whose chat-template control tokens
      (<|im_start|>, <|im_end|>) are special added tokens, and a chat template in tokenizer_config.json;
  OUT_DIR/token_semantics.json: for each model ("default" = DEFAULT_MODEL_DIR, a SentencePiece Llama;
      "bytelevel"; "chat") and each (prompt, target) case:
        continuation: transformers' ids of prompt + target minus those of the prompt (null when the
            prompt's own tokens change, i.e. the target does not start on a token boundary);
        separate: the target tokenized alone, without special tokens (transformers for tokenizer.json;
            the sentencepiece library for tokenizer.model, see below);
      and for each prompt: its ids (with special tokens) and which positions hold special tokens.
      The default model also has prompts and targets holding its special tokens' strings ("</s>"),
      which transformers reads as those tokens.

Transformers 5's LlamaTokenizer reads tokenizer.model into a Metaspace pre-tokenizer that adds no
second word-boundary mark to a text that starts with a space (" No" -> "▁No"), whereas the
sentencepiece library, which our server uses for tokenizer.model, gives "▁", "▁No". Continuations
never start a text, so both agree on them; `separate` for tokenizer.model follows the library, through
transformers' SentencePiece tokenizer (SentencePieceBackend: the text split on special tokens, each
segment encoded by the library).
"""
import json
import os
import sys

import sentencepiece as spm
import torch
import transformers
from tokenizers import processors
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_test_tokenizers import byte_level_tokenizer, corpus  # noqa: E402

QUESTION = "The cup is tiny. Q: Is it big? A:"
CASES = [
    (QUESTION, " No"), (QUESTION, "No"), (QUESTION, " No, it is small."), (QUESTION, ", yes"), (QUESTION, " "),
    ("The capital of France is", " Paris"), ("The capital of France is", "Paris"),
    ("Hello wor", "ld"), ("It was the best of times", " it was the worst of times"), ("one two", "\nthree"),
]
CHAT_PROMPT = "<|im_start|>user\nIs the kettle warm?<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = ["Is it true that vaccines cause autism?", QUESTION, CHAT_PROMPT]
# Special tokens' strings in the default model's text (no segment after one starts with a space, where
# transformers 5's LlamaTokenizer and SentencePiece differ; see above).
DEFAULT_CASES = [(QUESTION, "</s>"), (QUESTION, " No</s>")]
DEFAULT_PROMPTS = ["<s>The cup is tiny.</s>Q: Is it big? A:", "Hello</s>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_model(directory, tokenizer, config):
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    torch.manual_seed(0)
    model_config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64,
                                            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(model_config).eval().save_pretrained(directory)


def references(directory, separate, extra_cases=(), extra_prompts=()):
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    cases = []
    for prompt, target in CASES + list(extra_cases):
        alone = tokenizer(prompt).input_ids
        joint = tokenizer(prompt + target).input_ids
        continuation = joint[len(alone):] if joint[:len(alone)] == alone else None
        cases.append({"prompt": prompt, "target": target, "continuation": continuation, "separate": separate(tokenizer, target)})
    prompts = []
    for prompt in PROMPTS + list(extra_prompts):
        ids = tokenizer(prompt).input_ids
        # Added tokens marked special (what decode(skip_special_tokens=True) drops), except the unknown
        # token: it stands for characters of the user's text.
        special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} - {tokenizer.unk_token_id}
        prompts.append({"prompt": prompt, "ids": ids, "special": [i in special for i in ids]})
    return {"dir": os.path.abspath(directory), "cases": cases, "prompts": prompts}


def main():
    out_dir, default_model = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    bytelevel = byte_level_tokenizer("gpt2", corpus(1, 3000, "<|endoftext|>"))
    bos = bytelevel.token_to_id("<|endoftext|>")  # added before every text, as Llama 3's <|begin_of_text|>
    bytelevel.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                             special_tokens=[("<|endoftext|>", bos)])
    write_model(os.path.join(out_dir, "bytelevel"), bytelevel, {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})
    chat = byte_level_tokenizer("qwen2", corpus(1, 3000, "<|im_end|>"))
    chat.add_special_tokens(["<|im_start|>"])
    write_model(os.path.join(out_dir, "chat"), chat,
                {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE})

    sentencepiece = SentencePieceBackend.from_pretrained(default_model)
    by_library = lambda tokenizer, target: sentencepiece.encode(target, add_special_tokens=False)  # noqa: E731
    by_transformers = lambda tokenizer, target: tokenizer(target, add_special_tokens=False).input_ids  # noqa: E731
    # Without special tokens' strings, as the library alone (checks that the two readings agree there).
    library = spm.SentencePieceProcessor(model_file=os.path.join(default_model, "tokenizer.model"))
    assert all(by_library(None, t) == library.encode(t) for _, t in CASES)
    result = {"default": references(default_model, by_library, DEFAULT_CASES, DEFAULT_PROMPTS),
              "bytelevel": references(os.path.join(out_dir, "bytelevel"), by_transformers),
              "chat": references(os.path.join(out_dir, "chat"), by_transformers)}
    with open(os.path.join(out_dir, "token_semantics.json"), "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    boundary = sum(c["continuation"] is None for m in result.values() for c in m["cases"])
    print(f"token_semantics_reference: wrote {out_dir} ({boundary} boundary-split cases)")


if __name__ == "__main__":
    main()
