#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Trains small tokenizers of every kind we support, offline, and writes the ids that the Python
`tokenizers` / `sentencepiece` libraries (independent of our C++ code) give for a corpus of varied
strings, for the C++ tokenizer tests.

Usage: make_test_tokenizers.py OUT_DIR

Writes OUT_DIR/<kind>/ (tokenizer.json or tokenizer.model, tokenizer_config.json) and
OUT_DIR/<kind>/expected.json = {"texts": [...], "ids": [[...], ...], "decoded": [...], "beyond_vocab_ids":
[[...], ...], "beyond_vocab_decoded": [...]} for kinds
gpt2 (byte-level BPE), llama3 (regex split + byte-level, ignore_merges), qwen2 (NFC + regex split +
byte-level), llama2 (Metaspace-style normalizer + byte fallback), metaspace (Metaspace pre-tokenizer)
and sentencepiece (a trained SentencePiece BPE model with byte fallback); gpt2_digits, gpt2_digit_runs,
gpt2_merged_with_previous and gpt2_merged_with_next (gpt2 with a Digits or Split pre-tokenizer before its
ByteLevel one) in the same layout; gpt2_added/, llama2_added/ and metaspace_added/ (those with added tokens) with
decoding.json = {"ids": [[...], ...], "decoded": [...], "decoded_skipping_special": [...], "token_ids": [...],
"token_texts": [...]}.

Also OUT_DIR/added_lowercase/ and OUT_DIR/added_llama2/: the metaspace tokenizer under an NFKC + Lowercase
normalizer and the llama2 one, with added tokens of every option (single_word, lstrip, rstrip, normalized or
not), and the library's ids for texts that put them next to words, marks, punctuation and Unicode spaces, and
decoding.json as above.

Also OUT_DIR/sentencepiece_special/ and OUT_DIR/sentencepiece_map/: that tokenizer.model with a
tokenizer_config.json naming bos / eos / unk and added tokens past the model's pieces (lstrip, rstrip,
special or not, one the prefix of another), and with a special_tokens_map.json instead (eos with lstrip,
which transformers 5 keeps only in added_tokens_decoder).
Their expected.json = {"texts": [...], "ids": [...], "transformers_ids": [...], "plain": [...]}: "ids" as
transformers' SentencePiece tokenizer (SentencePieceBackend: the text split on added and special
tokens, each segment encoded by the sentencepiece library, as transformers' LlamaTokenizer did up to
version 4 and Llama 2's tokenizer.json does) plus bos; "transformers_ids" as transformers 5's
AutoTokenizer (LlamaTokenizer built from tokenizer.model), which adds no word-boundary mark to a segment
that starts with a space; "plain": whether no segment does, where the two agree; "decode_ids" with that
AutoTokenizer's "decoded" (None where a control or the unknown piece is kept) and "decoded_skipping_special".
"""
import io
import json
import os
import random
import sys

import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an they which "
         "one you were her all she there would their we him been has when who will more no if out so said what "
         "up its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where much "
         "your way well down should because each just those people how too little state good very make world still "
         "don't can't it's we'll I'm you've they'd Hello HELLO McDonald naïve café résumé Zürich").split()
UNICODE = ["Привет мир", "日本語のテキスト", "中文字符测试", "한국어 문장", "مرحبا بالعالم", "שלום עולם", "Ελληνικά",
           "emoji 😀👍🏽", "family 👨‍👩‍👧‍👦", "flags 🇫🇷🇯🇵", "math ∑∫√∞≠", "e\u0301 composed vs é", "Å vs A\u030a",
           "ﬁ ligature", "full-width ＡＢＣ１２３", "tab\tseparated\tvalues", "zero\u200bwidth", "nbsp\u00a0here",
           "deva नमस्ते", "thai สวัสดี", "ascii ~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./"]
SPECIALS = {"gpt2": "<|endoftext|>", "llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "llama2": "</s>",
            "metaspace": "</s>"}
GPT2_SPLIT = None  # ByteLevel(use_regex=True) carries GPT-2's pattern itself
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


# Single words tens of kilobytes long: BPE merges them in O(n log n) (a rescan per merge, O(n²), held a
# request thread for minutes on a 200 KB word), and the ids must still be the library's.
LONG_WORDS = ["".join(w for w in WORDS if w.isalpha()) * 12, "日本語のテキスト" * 500, "ab" * 8000]
# Text that starts with spaces, as ids without a bos: the Metaspace decoder drops every "▁" of the first token
# ("▁▁x" is "x"), a Strip decoder one space of the whole text.
LEADING_SPACES = ["  two spaces", "   three", " one", "    four spaces first", "  \n  x"]


def random_text(rng, special):
    parts = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.55:
            parts.append(rng.choice(WORDS))
        elif r < 0.7:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        elif r < 0.85:
            parts.append(rng.choice(UNICODE))
        elif r < 0.93:
            parts.append(rng.choice(["  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n"]))
        elif r < 0.97:
            parts.append(rng.choice(["'s", "'ll", "...", "?!", "--", "(x)", "[1]", "\"quoted\""]))
        else:
            parts.append(rng.choice(special) if isinstance(special, list) else special)
    sep = rng.choice([" ", " ", " ", "", "  "])
    text = sep.join(parts)
    if rng.random() < 0.1:
        text = " " + text
    if rng.random() < 0.1:
        text = text + " "
    return text


def corpus(seed, n, special):
    rng = random.Random(seed)
    return [random_text(rng, special) for _ in range(n)]


def byte_level_tokenizer(kind, training):
    tokenizer = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=(kind == "gpt2"))
    if kind == "gpt2":
        tokenizer.pre_tokenizer = byte_level
    else:
        pattern = LLAMA3_SPLIT if kind == "llama3" else QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), byte_level])
    if kind == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    specials = [SPECIALS[kind]] + (["<|begin_of_text|>"] if kind == "llama3" else [])
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(training, trainer)
    if kind == "llama3":
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return tokenizer


def metaspace_tokenizer(kind, training):
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if kind == "llama2":
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                               decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tokenizer.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                               decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1400, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False, limit_alphabet=200)
    tokenizer.train_from_iterator(training, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def with_ids_beyond(ids, size, k):
    """`ids` with ids the tokenizer of `size` tokens lacks (a model's embedding rows past its tokenizer,
    which the model may generate) put in at two places."""
    out = list(ids)
    out.insert(k % (len(out) + 1), size + k % 7)
    out.append(size + 200)
    return out


def write_expected(directory, texts, encode, decode, beyond, extra=None):
    """`beyond` = (ids, decoded): texts without special tokens, as ids with ids past the vocabulary."""
    ids = [encode(t) for t in texts]
    with open(os.path.join(directory, "expected.json"), "w") as f:
        json.dump({"texts": texts, "ids": ids, "decoded": [decode(i) for i in ids], "beyond_vocab_ids": beyond[0],
                   "beyond_vocab_decoded": beyond[1], **(extra or {})}, f, ensure_ascii=False)


def save_tokenizer(directory, tokenizer, eos):
    """DIRECTORY/tokenizer.json and a tokenizer_config.json naming `eos`."""
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": eos}, f)


def write_library_expected(directory, tokenizer, texts, word):
    """DIRECTORY/expected.json: the library's ids and decodes of `texts`, and of id lists past the vocabulary
    (write_expected), each of those starting with `word`."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    beyond = [with_ids_beyond([word] + tokenizer.encode(t, add_special_tokens=False).ids, size, k)
              for k, t in enumerate(corpus(3, 60, ""))]
    leading = [tokenizer.encode(t, add_special_tokens=False).ids for t in LEADING_SPACES]
    write_expected(directory, texts, lambda t: tokenizer.encode(t).ids,
                   lambda i: tokenizer.decode(i, skip_special_tokens=False),
                   (beyond, [tokenizer.decode(i, skip_special_tokens=False) for i in beyond]),
                   {"leading_space_ids": leading, "leading_space_decoded": [tokenizer.decode(i) for i in leading]})


def write_kind(directory, tokenizer, special, texts):
    """DIRECTORY/tokenizer.json, tokenizer_config.json and expected.json of `texts` for `tokenizer`."""
    save_tokenizer(directory, tokenizer, special)
    # Each starts with a plain word, so that the ids past the vocabulary are what the text's start decodes to
    # (LEADING_SPACES checks that start).
    vocab = tokenizer.get_vocab()
    mark = "▁" if any(w.startswith("▁") for w in vocab) else ""
    word = min(i for w, i in vocab.items()
               if w.startswith(mark) and w[len(mark):].isascii() and w[len(mark):].isalpha())
    write_library_expected(directory, tokenizer, texts, word)


# Numbers beyond the decimal digits (the `tokenizers` library's Digits splits what Rust's char::is_numeric
# takes: Unicode's Nd, Nl and No) and runs of delimiters, for the pre-tokenizer variants.
NUMERIC_TEXTS = ["   ²", "x² + y² = z²", "½ cup, ¾ full", "①②③ steps", "Ⅻ o'clock, ⅻ and Ⅳ", "x  12 y",
                 "a\n\n 34  5 ", "٣٤ and ३४ and ４２", "10¹⁰ and H₂O", "  7", "7  ", "1 2  3   4", "²²2",
                 "  ½  ", "𝟙𝟚 and 🄁", "x\t\t9\n"]


def write_pre_tokenizer_variants(out_dir):
    """OUT_DIR/gpt2_<variant>/: the gpt2 tokenizer with other pre-tokenizers before its ByteLevel one (Digits,
    Split with each merging behavior), with the ids of the corpus plus NUMERIC_TEXTS."""
    byte_level = lambda use_regex: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    delimiters = lambda behavior: pre_tokenizers.Split(Regex(r"\s|\d"), behavior=behavior)
    variants = {
        "gpt2_digits": [pre_tokenizers.Digits(individual_digits=True), byte_level(True)],
        "gpt2_digit_runs": [pre_tokenizers.Digits(individual_digits=False), byte_level(False)],
        "gpt2_merged_with_previous": [delimiters("merged_with_previous"), byte_level(False)],
        "gpt2_merged_with_next": [delimiters("merged_with_next"), byte_level(False)],
    }
    for kind, steps in variants.items():
        directory = os.path.join(out_dir, kind)
        tokenizer = Tokenizer.from_file(os.path.join(out_dir, "gpt2", "tokenizer.json"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
        write_kind(directory, tokenizer, SPECIALS["gpt2"], corpus(2, 2200, SPECIALS["gpt2"]) + NUMERIC_TEXTS)


def write_added_token_decoding(out_dir):
    """OUT_DIR/<kind>_added/: the gpt2, llama2 and metaspace tokenizers with added tokens, special or not, and
    decoding.json: id sequences holding them with the `tokenizers` library's decoding, with and without the
    special tokens. gpt2's have content in the byte-level alphabet ("ĠZqx" stands for " Zqx"), partly in it, or
    not; the others' hold "▁", and their byte tokens ("<0x41>", added as special tokens) come in runs of UTF-8.
    Those start with a plain word, as in write_kind."""
    tokenizer = Tokenizer.from_file(os.path.join(out_dir, "gpt2", "tokenizer.json"))
    first = tokenizer.get_vocab_size(with_added_tokens=True)
    plain = ("ĠZqx", "Ċfoo", "éàü", "<tag>", "é中", "Ġ中", "ÃÂ©", "ĠĠ")  # "ĠĠ" is in the vocabulary already
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in plain])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in ("ĠSpx", "<|é|>", "<|中|>")])
    added = list(range(first, tokenizer.get_vocab_size(with_added_tokens=True)))
    vocab = tokenizer.get_vocab()
    word, byte_c3 = vocab["the"], vocab["Ã"]  # "Ã" stands for the byte 0xC3, which "©" (0xA9) completes
    sequences = [[a] for a in added] + [[word, a, word] for a in added] + [[byte_c3, a] for a in added]
    rng = random.Random(6)
    pool = added + [0, word, byte_c3] + list(range(1, first))
    sequences += [[rng.choice(pool) for _ in range(rng.randrange(1, 9))] for _ in range(300)]
    write_decoding(os.path.join(out_dir, "gpt2_added"), tokenizer, SPECIALS["gpt2"], sequences, word, added)

    for kind in ("llama2", "metaspace"):
        tokenizer = Tokenizer.from_file(os.path.join(out_dir, kind, "tokenizer.json"))
        first = tokenizer.get_vocab_size(with_added_tokens=True)
        tokenizer.add_tokens([AddedToken(t, normalized=False) for t in ("▁foo", "a▁b", "<tag>", "é中", "▁▁x")])
        tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in ("▁Spx", "<|x|>")])
        added = list(range(first, tokenizer.get_vocab_size(with_added_tokens=True)))
        vocab = tokenizer.get_vocab()
        word = vocab["▁the"]
        byte = lambda b: vocab[f"<0x{b:02X}>"]
        sequences = [[word, a] for a in added] + [[word, a, word] for a in added]
        sequences += [[word, byte(0x41), a, byte(0xC3), byte(0xA9), word] for a in added]
        pool = added + [i for w, i in sorted(vocab.items()) if not (w.startswith("<0x") and len(w) == 6)]
        sequences += [[word] + [rng.choice(pool) for _ in range(rng.randrange(1, 8))] for _ in range(300)]
        write_decoding(os.path.join(out_dir, kind + "_added"), tokenizer, SPECIALS[kind], sequences, word, added)


def write_decoding(directory, tokenizer, eos, sequences, word, added):
    """DIRECTORY/tokenizer.json, tokenizer_config.json and decoding.json (see write_decoding_json)."""
    save_tokenizer(directory, tokenizer, eos)
    write_decoding_json(directory, tokenizer, sequences, word, added)


def write_decoding_json(directory, tokenizer, sequences, word, added):
    """DIRECTORY/decoding.json: the library's decoding of `sequences`, with and without the special tokens, and
    "token_ids" (`added`) with "token_texts": the text each adds to `word` (the library's decode of [word, id]
    past its decode of [word]), i.e. without the space a decoder strips at the start of the text."""
    lead = tokenizer.decode([word], skip_special_tokens=False)
    texts = [tokenizer.decode([word, a], skip_special_tokens=False) for a in added]
    assert all(t.startswith(lead) for t in texts)
    with open(os.path.join(directory, "decoding.json"), "w") as f:
        json.dump({"ids": sequences, "decoded": [tokenizer.decode(s, skip_special_tokens=False) for s in sequences],
                   "decoded_skipping_special": [tokenizer.decode(s, skip_special_tokens=True) for s in sequences],
                   "token_ids": added, "token_texts": [t[len(lead):] for t in texts]}, f, ensure_ascii=False)


def main():
    out_dir = sys.argv[1]
    for kind in ("gpt2", "llama3", "qwen2", "llama2", "metaspace"):
        directory = os.path.join(out_dir, kind)
        training = corpus(1, 3000, SPECIALS[kind])
        tokenizer = (byte_level_tokenizer if kind in ("gpt2", "llama3", "qwen2") else metaspace_tokenizer)(kind, training)
        write_kind(directory, tokenizer, SPECIALS[kind], corpus(2, 2200, SPECIALS[kind]) + LONG_WORDS)
    write_pre_tokenizer_variants(out_dir)
    write_added_token_decoding(out_dir)

    directory = os.path.join(out_dir, "sentencepiece")
    os.makedirs(directory, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus(1, 3000, "")), model_writer=model, vocab_size=900,
                                   model_type="bpe", byte_fallback=True, character_coverage=0.9995,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    size = processor.get_piece_size()
    beyond = [with_ids_beyond(processor.encode(t), size, k) for k, t in enumerate(corpus(3, 60, ""))]
    # libsentencepiece refuses an id past its pieces. The server skips it, as the `tokenizers` library does
    # for a tokenizer.json (checked there against that library itself): this expectation is libsentencepiece's
    # decoding of the ids that remain, i.e. our choice, not an independent reference for the skipping.
    write_expected(directory, corpus(2, 2200, ""), lambda t: [1] + processor.encode(t), lambda i: processor.decode(i[1:]),
                   (beyond, [processor.decode([x for x in i if x < size]) for i in beyond]))
    write_sentencepiece_special(out_dir, model.getvalue())
    # Special tokens left out first, as transformers' decode(skip_special_tokens=True) does (libsentencepiece
    # would end a run of byte pieces at a control piece).
    write_byte_runs(directory, processor.piece_to_id, processor.piece_to_id("▁the"), processor.eos_id(),
                    lambda ids: processor.decode([i for i in ids if not processor.is_control(i)]))
    write_vocabulary_bytes(out_dir)
    write_added_token_options(out_dir)
    print(f"wrote tokenizers to {out_dir}")


def write_vocabulary_bytes(out_dir):
    """OUT_DIR/llama2_vocabulary_bytes: the llama2 tokenizer with its "<0xNN>" tokens in the vocabulary only, not
    added (as in Llama 2's and Mistral's own tokenizer.json), and byte_runs.json: id sequences holding runs of them,
    valid UTF-8 or not, with the `tokenizers` library's decoding (its ByteFallback decoder writes one U+FFFD per
    token of a run that is not UTF-8, valid bytes among them too)."""
    with open(os.path.join(out_dir, "llama2", "tokenizer.json")) as f:
        spec = json.load(f)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not (t["content"].startswith("<0x") and
                                                                     len(t["content"]) == 6)]
    directory = os.path.join(out_dir, "llama2_vocabulary_bytes")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(spec, f, ensure_ascii=False)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>"}, f)
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    word = tokenizer.token_to_id("the") if tokenizer.token_to_id("the") is not None else tokenizer.token_to_id("e")
    write_byte_runs(directory, tokenizer.token_to_id, word, tokenizer.token_to_id("</s>"),
                    lambda ids: tokenizer.decode(ids, skip_special_tokens=True))


def write_byte_runs(directory, piece_id, word, eos, decode):
    """DIRECTORY/byte_runs.json: id sequences holding runs of byte-fallback tokens ("<0xNN>"), UTF-8 or not, among
    `word` and `eos` tokens, with the reference library's decoding of each (`decode`)."""
    byte = lambda b: piece_id(f"<0x{b:02X}>")
    runs = [[byte(0x37), byte(0x9D)], [byte(0xC8), byte(0x01)], [byte(0x84), byte(0x67)], [byte(0x37)],
            [byte(0xE4), byte(0xB8), byte(0xAD)], [byte(0xE4), byte(0xB8)], [word, byte(0xE4), byte(0xB8), word],
            [word, byte(0xE4), eos, byte(0xB8), byte(0xAD), word], [byte(0xF0), byte(0x9F), byte(0x98), byte(0x80)],
            [byte(0xFF), word, byte(0x41), byte(0x80), byte(0x41)], [byte(0xC3), byte(0xA9), byte(0xC3)]]
    rng = random.Random(5)
    runs += [[byte(rng.randrange(256)) if rng.random() < 0.8 else word for _ in range(rng.randrange(1, 9))]
             for _ in range(200)]
    with open(os.path.join(directory, "byte_runs.json"), "w") as f:
        json.dump({"ids": runs, "decoded": [decode(r) for r in runs]}, f, ensure_ascii=False)


# Added tokens with every option the library has, for tokenizers whose normalizer changes text: (content,
# special, normalized, single_word, lstrip, rstrip). Normalized ones are found in the normalized text, in the
# form the normalizer gives their content (lowercased, NFKC, or "▁Hello▁World" after Llama 2's normalizer).
ADDED_OPTIONS = [("<|sep|>", True, False, False, False, False), ("Hello World", False, True, False, False, False),
                 ("Mask", False, True, True, False, False), ("<w>", False, False, True, False, False),
                 ("Qx", False, True, True, True, True), ("<l>", False, False, False, True, False),
                 ("<r>", False, False, False, False, True), ("\ufb01ne", False, True, False, False, False),
                 ("[SPAN]", True, True, True, True, True), (" !!", False, False, False, False, False),
                 ("ab_cd", False, False, True, True, False)]
# Where added tokens meet words, digits, "_", combining marks, punctuation and Unicode whitespace.
ADDED_AROUND = ["", "", "", "un", "s", "_", "3", ".", "(", ")", "é", "\u0301", "-", "\u200d", "\u00a0", "\u2000",
                "\u3000", " ", "  ", "\t", "\n"]


def added_options_text(rng):
    parts = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        if r < 0.4:
            content = rng.choice(ADDED_OPTIONS)[0]
            content = rng.choice([content, content, content.upper(), content.lower(), content.title(),
                                  "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in content)])
            parts.append(rng.choice(ADDED_AROUND) + content + rng.choice(ADDED_AROUND))
        elif r < 0.8:
            parts.append(rng.choice(WORDS + ["mask", "masks", "qx", "fine", "hello world", "hello", "world"]))
        else:
            parts.append(rng.choice(ADDED_AROUND + ["!!", " !!!", "..."]))
    return rng.choice([" ", " ", "", "  "]).join(parts)


def write_added_token_options(out_dir):
    """OUT_DIR/added_lowercase (the metaspace tokenizer with an NFKC + Lowercase normalizer) and
    OUT_DIR/added_llama2 (the llama2 tokenizer, whose normalizer prepends and replaces "▁"), each with the added
    tokens of ADDED_OPTIONS, and the library's ids for texts full of them (expected.json as write_expected's)."""
    for kind, base, normalizer in (("added_lowercase", "metaspace",
                                    normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])),
                                   ("added_llama2", "llama2", None)):
        tokenizer = Tokenizer.from_file(os.path.join(out_dir, base, "tokenizer.json"))
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        for content, special, normalized, single_word, lstrip, rstrip in ADDED_OPTIONS:
            token = AddedToken(content, special=special, normalized=normalized, single_word=single_word,
                               lstrip=lstrip, rstrip=rstrip)
            (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([token])
        directory = os.path.join(out_dir, kind)
        save_tokenizer(directory, tokenizer, "</s>")
        # Read back as a file is, so that the ids are the saved file's.
        tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        rng = random.Random(6)
        texts = [added_options_text(rng) for _ in range(2200)]
        texts += ["xab_cd ab_cd", "<r>  !!", "<r>   !! x", "a\u2000Qx\u00a0b", "Mask, Mask- \u25cc\u0330Mask",
                  "hello world", "Hello World", "HELLO WORLD", "say Hello World", "<|sep|>Hello World", "x<|sep|>Mask"]
        word = tokenizer.token_to_id("▁the") or tokenizer.token_to_id("e")
        write_library_expected(directory, tokenizer, texts, word)
        # The library decodes a token with "normalized" in its normalized form ("hello world" for "Hello World"
        # under Lowercase, " Hello World" for "▁Hello▁World" after Llama 2's normalizer), and skips it as
        # special only where that form is a special token's content (a special "[SPAN]" decoded as "[span]"
        # is kept).
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        added = list(range(size - len(ADDED_OPTIONS), size))
        sequences = [[word, a] for a in added] + [[word, a, word] for a in added]
        sequences += [[word, a, b] for a in added for b in added]
        vocab = tokenizer.get_vocab()
        pool = added + [i for w, i in sorted(vocab.items())
                        if i < added[0] and not (w.startswith("<0x") and len(w) == 6)]
        sequences += [[word] + [rng.choice(pool) for _ in range(rng.randrange(1, 8))] for _ in range(300)]
        write_decoding_json(directory, tokenizer, sequences, word, added)


SPECIAL_TEXTS = ["Hello</s>", "</s>Hello", "<unk> and", "x<s>y", "<s>", "</s>", "<unk>", "<s></s>", "</s></s><s>",
                 "</s", "<s", "s>", "</ s>", "<</s>>", "<<s>", "x</s>y</s>z", "Q:<unk>A", "\n</s>\n", "é</s>ü",
                 "a<|tool|>b", "a<|tool|>callb", "a<|tool|>cal", "<|tool|", "<|tool|><|tool|>call<|tool|>",
                 "a <sep> b", "a<sep>b", "a\t<sep>\n b", "a  <mask>  b", "a<mask>b", " <mask>", "<sep>", " <sep> ",
                 "Hello </s> world", " No</s>", "</s> No", "", " ", "the end.</s>The start"]
SP_SPECIALS = ["<s>", "</s>", "<unk>", "<|tool|>", "<|tool|>call", "<sep>", "<mask>", "</s", "<|tool|"]


def write_sentencepiece_special(out_dir, model_bytes):
    """Directories whose tokenizer_config.json / special_tokens_map.json name special and added tokens,
    with transformers' ids for texts holding them."""
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    def entry(content, special, lstrip=False, rstrip=False):
        return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": rstrip, "single_word": False,
                "special": special}
    from sentencepiece import sentencepiece_model_pb2
    # Text kept as it is, as Llama's model keeps it (the trainer's default normalizes NFKC and collapses
    # runs of spaces, which transformers' LlamaTokenizer does not copy: a difference of its own).
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.precompiled_charsmap = b""
    proto.normalizer_spec.remove_extra_whitespaces = False
    model_bytes = proto.SerializeToString()
    size = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    base = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False}
    configs = {
        "sentencepiece_special": (dict(base, bos_token="<s>", eos_token="</s>", unk_token="<unk>", added_tokens_decoder={
            "0": entry("<unk>", True), "1": entry("<s>", True), "2": entry("</s>", True),
            str(size): entry("<|tool|>", True), str(size + 1): entry("<|tool|>call", False),
            str(size + 2): entry("<sep>", False, lstrip=True, rstrip=True),
            str(size + 3): entry("<mask>", True, lstrip=True)}), None),
        "sentencepiece_map": (base, {"bos_token": "<s>", "unk_token": "<unk>", "eos_token": {
            "content": "</s>", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False}}),
    }
    texts = SPECIAL_TEXTS + corpus(4, 600, SP_SPECIALS)
    for kind, (config, special_tokens_map) in configs.items():
        directory = os.path.join(out_dir, kind)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(model_bytes)
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
        if special_tokens_map is not None:
            with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
                json.dump(special_tokens_map, f)
        by_segments = SentencePieceBackend.from_pretrained(directory)
        by_transformers = AutoTokenizer.from_pretrained(directory)
        assert type(by_transformers).__name__ == "LlamaTokenizer", type(by_transformers)

        def plain(text):
            # Segments as transformers splits them (after lstrip / rstrip): none starts with whitespace.
            pieces = by_segments.tokens_trie.split(text)
            added = by_segments.added_tokens_encoder
            for i, piece in enumerate(pieces):
                if piece in added:
                    token = by_segments.added_tokens_decoder[added[piece]]
                    if token.rstrip and i + 1 < len(pieces):
                        pieces[i + 1] = pieces[i + 1].lstrip()
            return not any(p[:1].isspace() for p in pieces if p and p not in added)
        ids = [[1] + by_segments.encode(t, add_special_tokens=False) for t in texts]
        processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        decode_ids = decoding_sequences(processor, size,
                                        [int(i) for i in config.get("added_tokens_decoder", {}) if int(i) >= size])
        # None where a control or the unknown piece is kept: libsentencepiece decodes those to nothing and " ⁇ ",
        # transformers to their names (a difference of its own, which the server's prompt text relies on).
        kept = lambda ids: not any(i < size and (processor.is_control(i) or processor.is_unknown(i)) for i in ids)
        with open(os.path.join(directory, "expected.json"), "w") as f:
            json.dump({"texts": texts, "ids": ids, "transformers_ids": [by_transformers.encode(t) for t in texts],
                       "plain": [plain(t) for t in texts], "decode_ids": decode_ids,
                       "decoded": [by_transformers.decode(i, skip_special_tokens=False) if kept(i) else None
                                   for i in decode_ids],
                       "decoded_skipping_special": [by_transformers.decode(i, skip_special_tokens=True)
                                                    for i in decode_ids]}, f, ensure_ascii=False)


def decoding_sequences(processor, size, added):
    """Id sequences with added tokens past the model's pieces (`added`) before, between and after words with and
    without a word-boundary mark ("▁HELLO", "7"), at the start of the text too, and random ones of such ids."""
    piece = processor.piece_to_id
    words = [piece(p) for p in ("▁HELLO", "▁the", "7", "e", "▁", "ing")]
    hello, the, seven = words[:3]
    sequences = [[hello, seven], [the, seven]]
    for a in added:
        sequences += [[a, hello, seven], [the, a, hello, seven], [the, a, seven], [a], [the, a], [a, a, hello],
                      [1, a, hello], [the, 1, a, hello]]
    rng = random.Random(7)
    pool = added + words + [1, 2] + [i for i in range(size) if not processor.is_byte(i)]
    sequences += [[rng.choice(pool) for _ in range(rng.randrange(1, 9))] for _ in range(300)]
    return sequences


if __name__ == "__main__":
    main()
