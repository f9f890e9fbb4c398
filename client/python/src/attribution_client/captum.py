# SPDX-License-Identifier: Apache-2.0
"""Captum interoperability: results as Captum's LLMAttributionResult, and AttributionProvider, a
Captum RemoteLLMProvider backed by the service's Generate and Logprobs, so that

    provider = AttributionProvider(AttributionClient("localhost:50051"), model="tiny-qa-llama")
    llm_attr = RemoteLLMAttribution(FeatureAblation(RemoteLLMAttribution.placeholder_model), tokenizer, provider)
    llm_attr.attribute(TextTemplateInput("{} lives in {}.", values=["Ann", "York"]), target="Yes")

runs Captum's own perturbation code against the server unchanged. Needs captum (an optional
dependency: pip install attribution-client[captum]).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np
from captum.attr import LLMAttributionResult
from captum.attr._core.remote_provider import RemoteLLMProvider

from ._convert import INT64, integer
from .options import GenerationSettings

if TYPE_CHECKING:
    from .client import AttributionClient
    from .results import Attribution


def to_llm_attribution_result(a: "Attribution", tokenizer: Any = None) -> LLMAttributionResult:
    """See Attribution.to_captum()."""
    import torch

    input_tokens = a.feature_texts
    output_tokens = [t.text for t in a.target_tokens]
    if tokenizer is not None:
        from captum.attr._core.llm_attr import _convert_ids_to_pretty_tokens

        single = all(f.token_end - f.token_begin == 1 for f in a.features)
        if single:
            input_tokens = tokenizer.convert_ids_to_tokens([a.prompt_tokens[f.token_begin].id for f in a.features])
        output_tokens = _convert_ids_to_pretty_tokens(torch.tensor([t.id for t in a.target_tokens]), tokenizer)
    # Captum keeps attributions as float32 tensors; so do we, for field-by-field comparison.
    token_attr = None if a.token_matrix is None else torch.tensor(a.token_matrix, dtype=torch.float32)
    return LLMAttributionResult(input_tokens=list(input_tokens), output_tokens=list(output_tokens),
                                seq_attr=torch.tensor(a.sequence, dtype=torch.float32), token_attr=token_attr,
                                output_probs=torch.tensor(a.target_probs, dtype=torch.float32))


def _with_leading_specials(tokenizer: Any, text: str) -> List[int]:
    """`text`'s ids with the special tokens the tokenizer puts first (Llama's bos), unless the text begins with
    them already: Captum hands a TextTokenInput over decoded, "<s> The ...", which encode() gave two bos."""
    specials = list(tokenizer.encode("", add_special_tokens=True))
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return ids if specials and ids[:len(specials)] == specials else specials + ids


class AttributionProvider(RemoteLLMProvider):
    """Captum's RemoteLLMProvider on the attribution service.

    generate() calls Generate and returns the continuation text. get_logprobs() calls Logprobs: when
    Captum passes its tokenizer, the prompt as its ids by that tokenizer (Captum's own reading of the text,
    bos added as for any text prompt unless the text starts with it) and the target as the ids
    `tokenizer.encode(target_str, add_special_tokens=False)` (the very tokens Captum counts); else both as
    text, the target tokenized on its own (SEPARATE, Captum's rule). One Logprobs call per perturbed prompt,
    teacher-forced as Captum's forward_in_tokens=False. Captum hands a remote provider every prompt as
    text, a TextTokenInput decoded (its bos as text, kept as the one bos): TextTemplateInput gives what
    LLMAttribution computes, a TextTokenInput does not (Captum decodes and re-encodes its perturbed ids).
    """

    def __init__(self, client: "AttributionClient", model: str = "", *, priority: str = "normal",
                 timeout: Optional[float] = None) -> None:
        self.client = client
        self.model = model or client.list_models()[0].name
        self.api_url = client.options.target
        self.priority = priority
        self.timeout = timeout if timeout is not None else client.options.timeout

    def generate(self, prompt: str, **gen_args: Any) -> str:
        """Greedy unless do_sample=True; max_new_tokens (or max_tokens), temperature, top_k, top_p, seed,
        eos_token_id (see _generation)."""
        settings = self._generation(gen_args)
        return self.client.generate(prompt=prompt, model=self.model, generation=settings, priority=self.priority,
                                    timeout=self.timeout).text

    def get_logprobs(self, input_prompt: str, target_str: str, tokenizer: Any = None) -> List[float]:
        if not target_str:
            raise ValueError("target_str: empty")
        prompt: Any = input_prompt
        target: Any = target_str
        if tokenizer is not None:
            prompt = _with_leading_specials(tokenizer, input_prompt)
            target = list(tokenizer.encode(target_str, add_special_tokens=False))
        result = self.client.logprobs(prompt=prompt, target=target, model=self.model,
                                      target_tokenization="separate", priority=self.priority, timeout=self.timeout)
        return result.log_probs

    @staticmethod
    def _generation(gen_args: Dict[str, Any]) -> GenerationSettings:
        """transformers' generate() arguments as the service's settings, with transformers' defaults (top_k 50
        when sampling). Arguments it has no setting for would change what transformers generates, so they are
        refused by name rather than dropped; pad_token_id and use_cache change nothing for one prompt."""
        args = {key: value for key, value in gen_args.items() if value is not None}
        max_new = args.pop("max_new_tokens", args.pop("max_tokens", 25))
        if int(max_new) < 1:
            raise ValueError(f"max_new_tokens: {max_new} must be at least 1 (transformers' generate requires it)")
        sample = bool(args.pop("do_sample", False))
        temperature = float(args.pop("temperature", 1.0))
        top_p = float(args.pop("top_p", 1.0))
        top_k = int(args.pop("top_k", 50))
        seed = args.pop("seed", None)
        eos = args.pop("eos_token_id", [])
        # An id or ids (numpy's, torch's too), each an integer: int() took tensor(2.0) as 2.
        stop_token_ids = [integer("eos_token_id", i, INT64) for i in ([eos] if np.ndim(eos) == 0 else eos)]
        for harmless in ("pad_token_id", "use_cache"):
            args.pop(harmless, None)
        for setting, off in (("num_beams", 1), ("repetition_penalty", 1.0), ("min_new_tokens", 0)):
            if setting in args and args[setting] == off:  # transformers' defaults: nothing to honour
                del args[setting]
        if args:
            raise ValueError(f"gen_args: {', '.join(sorted(args))}: the service's Generate has no such setting "
                             "(it decodes greedily, or samples with temperature, top_k, top_p and seed)")
        if sample and not temperature > 0:
            raise ValueError(f"temperature: {temperature} must be positive when do_sample=True (as transformers "
                             "requires; do_sample=False decodes greedily)")
        return GenerationSettings(max_new_tokens=int(max_new), temperature=temperature if sample else 0.0,
                                  top_p=top_p if sample and top_p < 1 else 0.0, top_k=top_k if sample else 0,
                                  seed=None if seed is None else int(seed), stop_token_ids=stop_token_ids)


__all__ = ["AttributionProvider", "to_llm_attribution_result"]
