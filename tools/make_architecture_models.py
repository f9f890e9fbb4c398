#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes one servable model directory per supported architecture, each saved by transformers itself
with a tokenizer.json written by the `tokenizers` library, and the answers transformers and Captum give
on it, for the end-to-end test that runs the real server on every architecture
(tests/e2e/architectures_e2e_test.cc).

Usage: make_architecture_models.py OUT_DIR

For each NAME in llama, llama3-scaled (llama3 rope scaling), mistral (sliding window 6), qwen2 (bias on
q/k/v, tied head), gpt2 (tied head), gpt2-scaled-untied (attention logits divided by the layer's number and
not by sqrt(head_dim), a head of its own), falcon (the 7B layout), falcon-grouped (new_decoder_architecture),
mixtral (4 experts, 2 per token, sliding window 6) and qwen2-window (a window of 6 on its second layer
only, as max_window_layers 1 asks), and the copies CONFIG_EDITS makes with another config.json
(llama-stored-head, mixtral-config-defaults), and llama-stale-index (llama beside a shard index naming files
that are not there, as a sharded folder saved again unsharded keeps), it writes OUT_DIR/NAME/ (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) and OUT_DIR/NAME/reference.json:
  * prompt, target: token ids (the test sends ids: no tokenizer in the loop);
  * target_log_probs: log-softmax of the target tokens, teacher-forced after the prompt;
  * greedy: 8 greedy new tokens after the prompt (eos disabled); greedy_past_positions (GPT-2 models): a prompt
    3 tokens short of n_positions and its 4 greedy new tokens, one past the positions; greedy_text, greedy_token_texts: their
    text and each one's, as transformers' tokenizer decodes them (special tokens skipped);
  * top_k_sampling: the distribution generate(do_sample=True, temperature=2, top_k=3) draws the first new
    token from, as transformers' TemperatureLogitsWarper and TopKLogitsWarper warp the next-token logits
    (ids and probabilities of the tokens left);
  * past_tokenizer: 6 greedy new tokens (eos disabled) after the prompt [1, 50, 60, 70], which on the
    byte-level models include ids past the tokenizer's tokens (the model has 1408 ids, its tokenizer
    1200), their text as transformers' tokenizer decodes them (special tokens skipped), and the
    tokenizer's number of tokens;
  * ig: Captum IntegratedGradients over the prompt's token embeddings (target embeddings fixed, as
    LayerIntegratedGradients on the embedding layer does), baseline the embedding of token 0 at every
    position, 16 Gauss-Legendre steps, objective the summed target log-prob; attributions summed over
    the hidden dimension, and Captum's convergence delta.
OUT_DIR/llama-ties/ is the llama model whose final norm passes one hidden dimension only, into a head column of
a few levels: its log-probs tie exactly (5 tokens at the top level, 30 at the next), and its reference.json
holds the top 20 tokens after each prefix of the target, best first and equal log-probs in id order, and 4
greedy new tokens. OUT_DIR/no-tokenizer/ is the llama model without any tokenizer file. OUT_DIR/gpt2-zero-bias/,
OUT_DIR/qwen2-zero-bias/ and OUT_DIR/falcon-zero-bias/ are those models with every bias (linear and norm) set
to zero, saved by transformers: the closed-form LRP tests need networks where nothing absorbs relevance.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from captum.attr import IntegratedGradients

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from captum_reference import embedding_forward  # noqa: E402
from make_test_models import falcon_configs, randomize  # noqa: E402
from make_test_tokenizers import corpus, metaspace_tokenizer  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

# 12 prompt + 4 target tokens: longer than mistral's window of 6 and than llama3-scaled's original
# context of 8, so both features change the answers. Ordinary tokens only (ids 300-1199: past the
# special and byte-fallback tokens of every tokenizer here), so every prompt token is a feature
# whichever way the server treats special tokens.
PROMPT = [301, 437, 905, 329, 688, 412, 763, 550, 1007, 371, 845, 396]
TARGET = [620, 333, 860, 718]
N_STEPS = 16
BASELINE_TOKEN = 0
NEW_TOKENS = 8
SAMPLING_TEMPERATURE = 2.0
SAMPLING_TOP_K = 3
SPECIALS = {"gpt2": "<|endoftext|>", "qwen2": "<|im_end|>", "llama2": "</s>", "falcon": "<|endoftext|>"}


def ascii_byte_level_tokenizer(special):
    """Byte-level BPE (GPT-2's pre-tokenizer and decoder) trained on ASCII text without the 256-byte
    initial alphabet, so every token is whole characters: token texts in responses are valid UTF-8
    whichever ids the test sends or the model generates (partial-character tokens are another issue's)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    training = [t.encode("ascii", "ignore").decode() for t in corpus(1, 1500, "")]
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=[special], show_progress=False)
    tokenizer.train_from_iterator(training, trainer)
    return tokenizer


def tokenizer_for(kind):
    """A trained tokenizer of the family the architecture ships with (byte-level BPE or Metaspace)."""
    if kind in ("gpt2", "qwen2", "falcon"):
        return ascii_byte_level_tokenizer(SPECIALS[kind])
    return metaspace_tokenizer("llama2", corpus(1, 1500, ""))


def configs(vocab):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": ("llama2", transformers.LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=False)),
        "llama3-scaled": ("llama2", transformers.LlamaConfig(
            **common, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8})),
        "mistral": ("llama2", transformers.MistralConfig(**common, sliding_window=6, tie_word_embeddings=False)),
        "qwen2": ("qwen2", transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0)),
        "gpt2": ("gpt2", transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                 bos_token_id=1, eos_token_id=2)),
        # GPT-2's other attention scaling (Stanford CRFM's checkpoints divide by the layer's number; none by
        # sqrt(head_dim)) and a head of its own.
        "gpt2-scaled-untied": ("gpt2", transformers.GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
            scale_attn_by_inverse_layer_idx=True, scale_attn_weights=False, tie_word_embeddings=False)),
        "falcon": ("falcon", falcon_configs(vocab)["falcon"]),
        "falcon-grouped": ("falcon", falcon_configs(vocab)["falcon-grouped"]),
        "mixtral": ("llama2", transformers.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2,
                                                         sliding_window=6, tie_word_embeddings=False)),
        # Qwen2 windows only the layers from max_window_layers on (transformers writes them as layer_types).
        "qwen2-window": ("qwen2", transformers.Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=True,
                                                           sliding_window=6, max_window_layers=1)),
    }


# Greedy after this prompt, the byte-level models generate ids that their tokenizer lacks.
PAST_TOKENIZER_PROMPT = [1, 50, 60, 70]
PAST_TOKENIZER_NEW_TOKENS = 6


def greedy(model, prompt, new_tokens):
    generated = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                               eos_token_id=None, pad_token_id=0, attention_mask=torch.ones(1, len(prompt)))
    return generated[0, len(prompt):].tolist()


def past_tokenizer_reference(model, tokenizer):
    generated = greedy(model, PAST_TOKENIZER_PROMPT, PAST_TOKENIZER_NEW_TOKENS)
    return {"prompt": PAST_TOKENIZER_PROMPT, "generated": generated,
            "text": tokenizer.decode(generated, skip_special_tokens=True), "tokenizer_size": len(tokenizer)}


def top_k_sampling_reference(logits):
    warped = transformers.TemperatureLogitsWarper(SAMPLING_TEMPERATURE)(None, logits[None].double())
    warped = transformers.TopKLogitsWarper(SAMPLING_TOP_K)(None, warped)
    probs = torch.softmax(warped, -1)[0]
    kept = torch.nonzero(probs > 0).flatten().tolist()
    return {"temperature": SAMPLING_TEMPERATURE, "top_k": SAMPLING_TOP_K, "ids": kept,
            "probs": [probs[i].item() for i in kept]}


def references(model):
    ids = torch.tensor([PROMPT + TARGET])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        log_probs = torch.log_softmax(logits, -1)
    p = len(PROMPT)
    target_log_probs = [log_probs[p - 1 + i, t].item() for i, t in enumerate(TARGET)]
    embed = model.get_input_embeddings()
    prompt_embeds = embed(torch.tensor([PROMPT])).detach()
    baseline = embed(torch.full((1, p), BASELINE_TOKEN)).detach()
    ig = IntegratedGradients(embedding_forward(model, TARGET))
    attr, delta = ig.attribute(prompt_embeds, baselines=baseline, n_steps=N_STEPS, method="gausslegendre",
                               return_convergence_delta=True)
    reference = {"prompt": PROMPT, "target": TARGET, "target_log_probs": target_log_probs,
                 "greedy": greedy(model, PROMPT, NEW_TOKENS),
                 "top_k_sampling": top_k_sampling_reference(logits[len(PROMPT) - 1]),
                 "ig": {"n_steps": N_STEPS, "baseline_token": BASELINE_TOKEN, "rule": "gausslegendre",
                        "seq_attr": attr.sum(-1)[0].tolist(), "delta": delta.item()}}
    if model.config.model_type == "gpt2":
        # Learned positions: generate never feeds back its last new token, so a generation may end one past them.
        long_prompt = [300 + (37 * i) % 900 for i in range(model.config.n_positions - 3)]
        reference["greedy_past_positions"] = {"prompt": long_prompt, "generated": greedy(model, long_prompt, 4)}
    return reference


def write_model(directory, tokenizer_kind, config, seed):
    tokenizer = tokenizer_for(tokenizer_kind)
    assert tokenizer.get_vocab_size() <= config.vocab_size, (tokenizer.get_vocab_size(), config.vocab_size)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    model.requires_grad_(False)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": SPECIALS[tokenizer_kind]}, f)
    write_reference(directory)


def write_reference(directory):
    # Loaded from the directory, so the reference runs what the server reads.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    loaded.requires_grad_(False)
    with open(os.path.join(directory, "reference.json"), "w") as f:
        reference = references(loaded)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        reference["past_tokenizer"] = past_tokenizer_reference(loaded, tokenizer)
        reference["greedy_text"] = tokenizer.decode(reference["greedy"], skip_special_tokens=True)
        reference["greedy_token_texts"] = [tokenizer.decode([t], skip_special_tokens=True) for t in reference["greedy"]]
        json.dump(reference, f)


def write_config_edited_copy(source, directory, edit):
    """A copy of `source` whose config.json `edit` changes, with the answers transformers gives on it."""
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("reference.json"))
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    write_reference(directory)


# What a config may say or leave out that transformers reads in its own way.
CONFIG_EDITS = {
    # Ties a head the checkpoint stores and that differs from the embedding: transformers warns and uses it.
    "llama-stored-head": ("llama", lambda config: config.update(tie_word_embeddings=True)),
    # Without rope parameters and norm epsilon: MixtralConfig's own defaults (rope_theta 1e6, eps 1e-5).
    "mixtral-config-defaults": ("mixtral", lambda config: [config.pop(key, None) for key in
                                                           ("rope_parameters", "rope_theta", "rms_norm_eps")]),
}


def write_stale_index_copy(source, directory):
    """`source` with the index a sharded save leaves behind when the folder is saved again unsharded: transformers
    reads model.safetensors and never the shards the index names, which are not there."""
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}, f)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    with open(os.path.join(directory, "reference.json")) as f:
        expected = json.load(f)["target_log_probs"]
    actual = references(loaded)["target_log_probs"]
    assert max(abs(a - e) for a, e in zip(actual, expected)) < 1e-5, ("transformers read the index", actual, expected)


def write_zero_bias_copy(source, directory):
    shutil.rmtree(directory, ignore_errors=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    zeroed = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.zero_()
                zeroed += 1
    assert zeroed > 0, source
    model.save_pretrained(directory, safe_serialization=True)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, file), directory)


TIES_TOP_K = 20


def write_ties_model(source, directory):
    """The llama model with exactly tied log-probs: the final norm keeps hidden dimension 0 only (every
    other is an exact 0), so each logit is head[v, 0] * h0, equal for tokens of equal head[v, 0]."""
    shutil.rmtree(directory, ignore_errors=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    levels = torch.zeros(model.config.vocab_size)
    order = torch.randperm(model.config.vocab_size, generator=torch.Generator().manual_seed(7))
    # Symmetric, so whichever sign h0 takes the top is 5 tokens and the next level 30: a top 20 ends
    # inside a tie.
    for value, ids in ((3.0, order[:5]), (-3.0, order[5:10]), (2.0, order[10:40]), (-2.0, order[40:70])):
        levels[ids] = value
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = levels
    model.save_pretrained(directory, safe_serialization=True)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, file), directory)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        log_probs = torch.log_softmax(loaded(torch.tensor([PROMPT + TARGET])).logits[0].float(), -1)
    top_ids, top_log_probs = [], []
    for i in range(len(TARGET)):
        row = log_probs[len(PROMPT) - 1 + i].tolist()
        best = sorted(range(len(row)), key=lambda v: (-row[v], v))[:TIES_TOP_K]
        top_ids.append(best)
        top_log_probs.append([row[v] for v in best])
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump({"prompt": PROMPT, "target": TARGET, "top_k": TIES_TOP_K, "top_ids": top_ids,
                   "top_log_probs": top_log_probs, "greedy": greedy(loaded, PROMPT, 4)}, f)


def main():
    out_dir = sys.argv[1]
    torch.use_deterministic_algorithms(True)
    for seed, (name, (tokenizer_kind, config)) in enumerate(configs(vocab=1408).items()):
        directory = os.path.join(out_dir, name)
        shutil.rmtree(directory, ignore_errors=True)
        write_model(directory, tokenizer_kind, config, seed)
    for name in ("gpt2", "qwen2", "falcon"):
        write_zero_bias_copy(os.path.join(out_dir, name), os.path.join(out_dir, f"{name}-zero-bias"))
    for name, (source, edit) in CONFIG_EDITS.items():
        write_config_edited_copy(os.path.join(out_dir, source), os.path.join(out_dir, name), edit)
    write_stale_index_copy(os.path.join(out_dir, "llama"), os.path.join(out_dir, "llama-stale-index"))
    write_ties_model(os.path.join(out_dir, "llama"), os.path.join(out_dir, "llama-ties"))
    bare = os.path.join(out_dir, "no-tokenizer")
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(os.path.join(out_dir, "llama"), bare,
                    ignore=shutil.ignore_patterns("tokenizer.json", "tokenizer_config.json"))
    print(f"make_architecture_models: wrote {list(configs(0))}, {list(CONFIG_EDITS)}, llama-stale-index, zero-bias "
          f"gpt2, qwen2 and falcon, llama-ties and no-tokenizer to {out_dir}")


if __name__ == "__main__":
    main()
