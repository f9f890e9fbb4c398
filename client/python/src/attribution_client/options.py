# SPDX-License-Identifier: Apache-2.0
"""Typed options of the client and its calls, mirroring the C++ client (client/attribution_client.h).

Enumerations are the same lower-case names the C++ client and the CLI take (method="feature_ablation",
quantity="prob", baseline="pad" or a token id, rule="riemann_trapezoid", priority="high",
metric="prob_difference", sites=["heads", "mlp_out"]); an unknown name raises ValueError listing the
accepted ones. Durations are seconds (floats).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

# A prompt, target or foil: text, or token ids used as they are.
TextOrIds = Union[str, Sequence[int], None]
# An answer token of AttributeComponents: text, or a token id (an int or a one-element sequence).
AnswerToken = Union[str, int, Sequence[int], None]


@dataclass
class ClientOptions:
    """How to reach the server (C++: ClientOptions)."""

    # Any gRPC target: host:port, dns:///name:port (every address the name resolves to), ...
    target: str = "localhost:50051"
    # "pick_first" (one connection) or "round_robin" (a connection to every resolved address).
    load_balancing: str = "pick_first"
    tls: bool = False
    ca_file: str = ""          # PEM roots to verify the server (empty: system roots)
    cert_file: str = ""        # PEM client certificate for mutual TLS
    key_file: str = ""
    tls_server_name: str = ""  # verify the server as this name instead of the target's host
    # Sent as "authorization: Bearer <token>"; kept out of repr(), which notebooks and tracebacks show.
    bearer_token: str = field(default="", repr=False)
    timeout: Optional[float] = 120.0  # deadline of each call in seconds (None or inf: no deadline)
    max_attempts: int = 4      # tries per unary call while the answer is UNAVAILABLE, 1 to 5 (gRPC's most)
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    # Seconds one connection attempt (TCP, TLS, HTTP/2 handshake) may take before it counts as failed.
    connect_timeout: float = 20.0
    # Seconds between HTTP/2 pings while a call is in flight (0: none); one unanswered as long fails the
    # connection's calls UNAVAILABLE (retried), where a stopped server process held them until their deadline.
    # Off by default: servers before 2026-12-07 close connections that ping more than every 300 s (C++: keepalive).
    keepalive: float = 0.0
    max_message_bytes: int = 64 << 20


@dataclass
class GenerationSettings:
    max_new_tokens: int = 0    # 0: server default (25)
    temperature: float = 0.0   # 0: greedy
    top_p: float = 0.0         # 0: no truncation
    # Seeds sampling. None: generate() samples afresh each call and reports the seed it drew
    # (Generation.seed); an attribute() target generated without one uses the attribution's `seed`.
    seed: Optional[int] = None
    stop_token_ids: List[int] = field(default_factory=list)  # empty: the model's eos tokens
    ignore_stop_tokens: bool = False
    # Sampling keeps only the top_k most likely tokens (after temperature, before top_p, as transformers);
    # 0: off. transformers' generate(do_sample=True) uses 50 unless told otherwise.
    top_k: int = 0


@dataclass
class FeatureGroup:
    """Prompt tokens [token_begin, token_end) as one feature; `baseline` (text or ids, any length)
    replaces them in perturbation methods: empty ("" or []) deletes them; None: the request's baseline
    token at every position."""

    token_begin: int
    token_end: int
    baseline: TextOrIds = None


@dataclass
class AttributeOptions:
    """One Attribute request (C++: AttributeOptions). model "" means the server's first model."""

    prompt: TextOrIds = ""
    target: TextOrIds = None   # None: generated with `generation` ("" or [] is refused: INVALID_ARGUMENT)
    model: str = ""
    no_special_tokens: bool = False
    # How target and foil text become tokens: "continuation" (as they follow the prompt) or "separate"
    # (tokenized alone, as Captum does).
    target_tokenization: str = "continuation"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    # integrated_gradients gradient_shap saliency input_x_gradient feature_ablation shapley_values
    # shapley_value_sampling lime kernel_shap attn_lrp cp_lrp
    method: str = "integrated_gradients"
    quantity: str = "log_prob"  # prob logit
    foil: TextOrIds = None      # contrastive when not None
    # Answer choices, one token each (text, or a one-id list): the target's probability is renormalised over them.
    choices: List[TextOrIds] = field(default_factory=list)
    feature_range: Optional[Tuple[int, int]] = None  # [begin, end) tokens, one feature each
    feature_groups: List[FeatureGroup] = field(default_factory=list)
    baseline: Union[str, int] = "default"  # zero pad unk eos bos, or a token id
    n_steps: int = 0                       # 0: server default (50)
    completeness_tolerance: float = 0.0
    # "default" (the server's: gausslegendre, or fejer2 with a completeness_tolerance), gausslegendre,
    # fejer2, riemann_left, riemann_right, riemann_middle, riemann_trapezoid
    rule: str = "default"
    n_samples: int = 0
    stdev: float = 0.0
    # Seeds the method (GradientShap's noise, the sampling methods) and, when the target is generated and
    # generation.seed is None, the generation too: attribution-cli's --seed does both.
    seed: int = 0
    signed_saliency: bool = False
    want_token_matrix: bool = False
    want_faithfulness: bool = False
    include_special_tokens: bool = False  # special tokens (bos, ...) as features too (Captum parity)
    priority: str = "normal"              # low high
    request_id: str = ""                  # sent as x-request-id metadata; the server logs it with the call


@dataclass
class GenerateOptions:
    prompt: TextOrIds = ""
    model: str = ""
    no_special_tokens: bool = False
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    priority: str = "normal"
    request_id: str = ""  # sent as x-request-id metadata; the server logs it with the call
    # Text stop sequences (at most 8, 1 to 64 bytes each): generation ends once the text holds one;
    # Generation.text ends before it, Generation.tokens include the token that completed it.
    stop: List[str] = field(default_factory=list)


@dataclass
class LogprobsOptions:
    prompt: TextOrIds = ""
    target: TextOrIds = ""
    model: str = ""
    no_special_tokens: bool = False
    target_tokenization: str = "continuation"  # or "separate"
    top_k: int = 0
    priority: str = "normal"
    request_id: str = ""  # sent as x-request-id metadata; the server logs it with the call


@dataclass
class PromptPair:
    """A clean and a corrupted prompt (text or token ids) of as many tokens (C++: PromptPair)."""

    clean: TextOrIds = ""
    corrupted: TextOrIds = ""


@dataclass
class ComponentOptions:
    """One AttributeComponents request (C++: ComponentOptions). model "" means the server's first model.

    `pairs` holds PromptPair or (clean, corrupted) tuples; the grids average them. `answer` and
    `wrong_answer` are one token each: text (read as the continuation of the first clean prompt) or a
    token id."""

    pairs: List[Union[PromptPair, Tuple[TextOrIds, TextOrIds]]] = field(default_factory=list)
    answer: AnswerToken = ""
    wrong_answer: AnswerToken = ""  # the difference metrics
    model: str = ""
    no_special_tokens: bool = False
    metric: str = "logit_difference"     # normalized_logit_difference log_prob prob prob_difference
    method: str = "activation_patching"  # layer_integrated_gradients attribution_patching[_star]
    direction: str = "denoising"         # noising
    sites: Union[Sequence[str], str] = field(default_factory=lambda: ["heads"])  # attn_out mlp_out resid_pre
    granularity: str = "default"         # layer_head layer_position layer_position_head
    n_steps: int = 0                     # layer integrated gradients; 0: server default (16)
    rule: str = "default"  # as AttributeOptions.rule; without a tolerance, default is gausslegendre
    priority: str = "normal"
    request_id: str = ""  # sent as x-request-id metadata; the server logs it with the call


def read_bearer_token_file(path: str) -> str:
    """The first token of `path` (what --token_file flags name), in the server's tokens-file format: blank
    lines and lines starting with # are skipped, surrounding whitespace and a byte-order mark are not part of
    it. A server's tokens file serves as one."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # lines end at \n only, as the server reads them
        for line in f:
            token = line.strip(" \t\r\n\v\f")
            if token and not token.startswith("#"):
                return token
    raise ValueError(f"{path}: holds no token (blank and # lines skipped)")
