# SPDX-License-Identifier: Apache-2.0
"""Typed results of the client (C++: Attribution, ComponentAttribution, Generation, Logprobs, ModelInfo), with conversions
for notebooks: numpy arrays, pandas DataFrames, Captum's LLMAttributionResult and an HTML heatmap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import pandas


@dataclass(frozen=True)
class Token:
    id: int
    text: str = ""           # valid UTF-8 (U+FFFD for part of a character)
    bytes: bytes = b""       # the token's exact bytes
    char_begin: int = 0      # code points into the prompt / target text
    char_end: int = 0
    log_prob: float = 0.0    # output tokens: log p(token | everything before it)
    special: bool = False    # a special token of the tokenizer (bos, eos, control tokens)


@dataclass(frozen=True)
class Feature:
    token_begin: int
    token_end: int
    text: str


@dataclass(frozen=True)
class RunStats:
    rows: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    queue_seconds: float = 0.0
    device_seconds: float = 0.0
    wall_seconds: float = 0.0
    server_build: str = ""  # the commit the server was built from ("" from servers before 146fc40)


@dataclass(frozen=True)
class SettingsUsed:
    """The settings an attribution ran with, in AttributeOptions' terms, the server's defaults and limits filled
    in: passed back in AttributeOptions they get the answer again from a server whose defaults differ, where its
    limits admit them. None: the method does not read it (or a server before 146fc40 answered)."""

    n_steps: Optional[int] = None  # integrated gradients: points at most (integration_steps: those used)
    rule: Optional[str] = None
    n_samples: Optional[int] = None
    stdev: Optional[float] = None
    seed: Optional[int] = None
    baseline: Optional[Union[str, int]] = None  # "zero", or the token id (an int, as AttributeOptions takes it)


@dataclass(frozen=True)
class Faithfulness:
    """Deletion / insertion curves of an explanation (see Faithfulness in the proto)."""

    percents: List[float]
    features_at: List[int]
    full: float
    empty: float
    deletion: List[float]
    insertion: List[float]
    comprehensiveness_aopc: float
    sufficiency_aopc: float


@dataclass(frozen=True)
class Progress:
    """An AttributeStream / AttributeComponentsStream event: queued (rows_total 0 until the plan is known) or rows done / total."""

    rows_done: int
    rows_total: int
    queued: bool = False


def _equal_with_arrays(a: Any, b: Any) -> bool:
    """Dataclass equality whose numpy fields compare by shape and values: the generated __eq__ asked an array
    for one truth value, so `a == b` raised ValueError, even for a result and its copy. NaN equals NaN (in the
    arrays and in float fields), so a result equals its copy whatever its numbers."""
    if type(a) is not type(b):
        return NotImplemented
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape
                    and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc")):
                return False
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        elif x != y:
            return False
    return True


@dataclass(eq=False)
class Attribution:
    """An Attribute answer: `sequence` holds one attribution per feature, `token_matrix` (when asked)
    one row per target token."""

    model: str
    method: str
    prompt_tokens: List[Token]
    target_tokens: List[Token]
    features: List[Feature]
    sequence: np.ndarray                 # [features], float64
    token_matrix: Optional[np.ndarray]   # [target tokens, features] when asked, else None
    objective: float
    fixed_tokens: List[int] = field(default_factory=list)  # prompt token indices in no feature
    convergence_delta: Optional[float] = None
    integration_steps: int = 0
    tolerance_met: Optional[bool] = None
    faithfulness: Optional[Faithfulness] = None
    stats: RunStats = field(default_factory=RunStats)
    # ModelInfo.model_digest of the weights that computed this answer ("" from servers before 2026-12-04).
    model_digest: str = ""
    # Contrastive: the foil's tokens (the objective is the target's quantity minus the foil's); else empty.
    foil_tokens: List[Token] = field(default_factory=list)
    # Settings the request set that its method does not read ("n_steps" for saliency): they changed nothing.
    unread_settings: List[str] = field(default_factory=list)
    settings_used: SettingsUsed = field(default_factory=SettingsUsed)

    __eq__ = _equal_with_arrays
    __hash__ = None  # type: ignore[assignment]  # mutable, as the generated __eq__ left it

    @property
    def feature_texts(self) -> List[str]:
        return [f.text for f in self.features]

    @property
    def target_text(self) -> str:
        return "".join(t.text for t in self.target_tokens)

    @property
    def target_probs(self) -> np.ndarray:
        """p(target token | everything before it), per target token."""
        with np.errstate(over="ignore"):  # inf for a malformed log_prob above ~709, as Logprobs.to_dataframe
            return np.exp(np.array([t.log_prob for t in self.target_tokens], dtype=np.float64))

    def to_numpy(self) -> np.ndarray:
        """The sequence attribution, [features]."""
        return self.sequence.copy()

    def to_dataframe(self) -> "pandas.DataFrame":
        """One row per feature: feature text, token span, attribution, and (with a token matrix) one
        column per target token, named by its position and text."""
        import pandas as pd

        frame = pd.DataFrame({
            "feature": self.feature_texts,
            "token_begin": [f.token_begin for f in self.features],
            "token_end": [f.token_end for f in self.features],
            "attribution": self.sequence,
        })
        if self.token_matrix is not None:
            for i, token in enumerate(self.target_tokens):
                frame[f"{i}:{token.text}"] = self.token_matrix[i]
        return frame

    def to_captum(self, tokenizer: Any = None) -> Any:
        """Captum's LLMAttributionResult (plot_seq_attr(), plot_token_attr() work on it).

        Without a tokenizer its tokens are the server's readable texts; with the model's Hugging Face
        tokenizer they are what Captum's LLMAttribution writes (convert_ids_to_tokens for the input
        tokens, Captum's pretty tokens for the output), so the two results compare field by field.
        Features that span several tokens keep their text either way."""
        from .captum import to_llm_attribution_result

        return to_llm_attribution_result(self, tokenizer)

    def _repr_html_(self) -> str:
        from ._html import attribution_html

        return attribution_html(self)


# Row / column labels of component grids, per axis: "L0" (layer), "H3" (head), "P5" (position).
_AXIS_LABELS = {"layer": "L", "head": "H", "position": "P"}


@dataclass(eq=False)
class ComponentGrid:
    """One site's component attributions: `values` is row-major over `shape` (to_numpy() reshapes it),
    [layers, heads], [layers, positions] or [layers, positions, heads] as `axes` name them."""

    site: str          # heads attn_out mlp_out resid_pre
    granularity: str   # layer_head layer_position layer_position_head
    shape: Tuple[int, ...]
    axes: List[str]    # "layer", "head", "position"
    values: np.ndarray  # flat, float64
    convergence_deltas: np.ndarray = field(default_factory=lambda: np.zeros(0))  # layer IG: value − patching effect

    __eq__ = _equal_with_arrays
    __hash__ = None  # type: ignore[assignment]

    def to_numpy(self) -> np.ndarray:
        """The values as an array of `shape`."""
        return self.values.reshape(self.shape).copy()

    def labels(self, axis: int) -> List[str]:
        """Labels along one axis: "L0", "L1", ... for layers, "H0" heads, "P0" positions."""
        prefix = _AXIS_LABELS.get(self.axes[axis], self.axes[axis][:1].upper())
        return [f"{prefix}{i}" for i in range(self.shape[axis])]

    def to_dataframe(self) -> "pandas.DataFrame":
        """A 2-D grid as a DataFrame, rows layers ("L0", ...) and columns heads ("H0", ...) or positions
        ("P0", ...); a 3-D grid's rows are (layer, position) pairs."""
        import pandas as pd

        if len(self.shape) == 2:
            return pd.DataFrame(self.to_numpy(), index=self.labels(0), columns=self.labels(1))
        if len(self.shape) == 3:
            index = pd.MultiIndex.from_product([self.labels(0), self.labels(1)], names=self.axes[:2])
            return pd.DataFrame(self.to_numpy().reshape(-1, self.shape[2]), index=index, columns=self.labels(2))
        raise ValueError(f"to_dataframe: a grid of shape {self.shape} is not 2-D or 3-D")


def _find_grid(grids: List[ComponentGrid], site: str) -> ComponentGrid:
    for g in grids:
        if g.site == site:
            return g
    raise KeyError(f'no grid for site "{site}" (sites: {", ".join(g.site for g in grids)})')


@dataclass
class PairComponents:
    """One prompt pair's grids; its metrics (for normalized_logit_difference the raw logit differences)."""

    clean_metric: float
    corrupted_metric: float
    grids: List[ComponentGrid]
    clean_tokens: List[Token]
    corrupted_tokens: List[Token]

    def grid(self, site: str) -> ComponentGrid:
        return _find_grid(self.grids, site)


@dataclass
class ComponentAttribution:
    """An AttributeComponents answer: per site a grid averaged over the pairs (`grids`; grid("heads")),
    and each pair's own grids (`pairs`)."""

    model: str
    method: str      # activation_patching layer_integrated_gradients attribution_patching[_star]
    metric: str      # logit_difference normalized_logit_difference log_prob prob prob_difference
    direction: str   # denoising noising
    grids: List[ComponentGrid]
    pairs: List[PairComponents]
    answer: Token
    wrong_answer: Token
    stats: RunStats = field(default_factory=RunStats)
    # ModelInfo.model_digest of the weights that computed this answer ("" from servers before 2026-12-05).
    model_digest: str = ""
    # Settings sent that the method does not read (n_steps, rule beside all but layer IG): they changed nothing.
    unread_settings: List[str] = field(default_factory=list)
    # What the method ran with (layer IG: n_steps and rule), the server's defaults and limits filled in.
    settings_used: SettingsUsed = field(default_factory=SettingsUsed)

    def grid(self, site: str) -> ComponentGrid:
        """The grid of one site ("heads", "attn_out", "mlp_out", "resid_pre"); KeyError if not asked."""
        return _find_grid(self.grids, site)


@dataclass
class Generation:
    prompt_tokens: List[Token]
    tokens: List[Token]
    text: str          # the continuation as it reads after the prompt (pass it back as a target)
    text_bytes: bytes  # exact bytes
    stopped: bool      # a stop token or stop string ended it (else max_new_tokens did)
    stats: RunStats = field(default_factory=RunStats)
    # The seed sampled with: the request's, or the server's draw when it gave none (send it to reproduce).
    seed: int = 0
    # ModelInfo.model_digest of the weights that generated it ("" from servers before 2026-12-05).
    model_digest: str = ""


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    log_prob: float
    bytes: bytes = b""


@dataclass(frozen=True)
class TokenLogprob:
    token: Token
    top: List[TopToken]  # most likely tokens at this position, best first


@dataclass
class Logprobs:
    prompt_tokens: List[Token]
    target: List[TokenLogprob]
    total_log_prob: float
    stats: RunStats = field(default_factory=RunStats)
    # ModelInfo.model_digest of the weights that computed this answer ("" from servers before 2026-12-04).
    model_digest: str = ""

    @property
    def log_probs(self) -> List[float]:
        return [t.token.log_prob for t in self.target]

    def to_dataframe(self) -> "pandas.DataFrame":
        """One row per target token: id, text, log_prob and prob = exp(log_prob). A server's log_probs are
        <= 0; one above ~709 (a malformed answer) gives prob inf rather than an OverflowError that would lose
        the whole table, and the log_prob column shows what was sent."""
        import pandas as pd

        log_probs = np.array(self.log_probs, dtype=np.float64)
        with np.errstate(over="ignore"):
            probs = np.exp(log_probs)
        return pd.DataFrame({
            "id": [t.token.id for t in self.target],
            "token": [t.token.text for t in self.target],
            "log_prob": log_probs,
            "prob": probs,
        })


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    dtype: str
    quantization: str
    device: str
    resident_weight_bytes: int
    vocab_size: int
    num_layers: int
    hidden_size: int
    max_steps: int
    max_samples: int
    max_features: int
    max_exact_shapley_features: int
    max_tokens: int
    max_new_tokens: int
    max_top_k: int
    # Limits added later: default 0 (unknown) so that code building a ModelInfo by keyword keeps working.
    max_choices: int = 0
    # Rows one request may queue (forward or forward + backward passes of a sequence).
    max_rows: int = 0
    # Prompt pairs of one attribute_components call.
    max_pairs: int = 0
    # Tokens of the rows one request may queue, together.
    max_queued_tokens: int = 0
    # Queue memory one request may hold.
    max_queued_bytes: int = 0
    # Tokens (prompt + new tokens) the KV caches of the model's generations may hold together (0 from servers
    # before 2026-12-07).
    max_kv_cache_tokens: int = 0
    # nf4 / fp4 (bitsandbytes' formats): block size, double quantization, whether the weights were loaded
    # as a bitsandbytes checkpoint saved them, and that checkpoint's bnb_4bit_compute_dtype.
    quantization_block_size: int = 0
    double_quantization: bool = False
    quantization_from_checkpoint: bool = False
    checkpoint_compute_dtype: str = ""
    # SHA-256 (hex) of the files the server loaded the model from: which checkpoint answers under this name
    # ("" from servers before 2026-12-04).
    weights_digest: str = ""
    # SHA-256 (hex) of the checkpoint as loaded (weights_digest, dtype, quantization): every Attribution and
    # Logprobs computed on it carries it as model_digest.
    model_digest: str = ""
