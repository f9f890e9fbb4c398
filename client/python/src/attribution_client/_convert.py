# SPDX-License-Identifier: Apache-2.0
"""Options to request protos and response protos to results: the one place that knows both."""
from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Iterable, Set
from typing import Any, Dict, List, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from . import _response_checks
from ._generated.attribution.v1 import attribution_pb2 as pb
from .options import (AnswerToken, AttributeOptions, ComponentOptions, FeatureGroup, GenerateOptions,
                      GenerationSettings, LogprobsOptions, PromptPair, TextOrIds)
from .results import (Attribution, ComponentAttribution, ComponentGrid, Faithfulness, Feature, Generation, Logprobs,
                      ModelInfo, PairComponents, RunStats, SettingsUsed, Token, TokenLogprob, TopToken)

E = TypeVar("E")

# The names the C++ client (client/proto_mapping.cc) and the CLI accept.
METHODS: Dict[str, int] = {
    "integrated_gradients": pb.INTEGRATED_GRADIENTS, "ig": pb.INTEGRATED_GRADIENTS,
    "gradient_shap": pb.GRADIENT_SHAP, "saliency": pb.SALIENCY, "input_x_gradient": pb.INPUT_X_GRADIENT,
    "feature_ablation": pb.FEATURE_ABLATION, "shapley_values": pb.SHAPLEY_VALUES,
    "shapley_value_sampling": pb.SHAPLEY_VALUE_SAMPLING, "lime": pb.LIME, "kernel_shap": pb.KERNEL_SHAP,
    "attn_lrp": pb.ATTN_LRP, "cp_lrp": pb.CP_LRP,
}
QUANTITIES: Dict[str, int] = {"log_prob": pb.LOG_PROB, "prob": pb.PROB, "logit": pb.LOGIT}
RULES: Dict[str, int] = {
    "default": pb.INTEGRATION_RULE_UNSPECIFIED, "gausslegendre": pb.GAUSS_LEGENDRE,
    "fejer2": pb.FEJER2, "riemann_left": pb.RIEMANN_LEFT, "riemann_right": pb.RIEMANN_RIGHT,
    "riemann_middle": pb.RIEMANN_MIDDLE, "riemann_trapezoid": pb.RIEMANN_TRAPEZOID,
}
BASELINES: Dict[str, int] = {
    "default": pb.BASELINE_UNSPECIFIED, "zero": pb.ZERO_EMBEDDING, "pad": pb.PAD_TOKEN, "unk": pb.UNK_TOKEN,
    "eos": pb.EOS_TOKEN, "bos": pb.BOS_TOKEN,
}
# The default goes unset: a server names a tokenization set beside no text among the settings that changed nothing.
TOKENIZATIONS: Dict[str, int] = {"continuation": pb.TARGET_TOKENIZATION_UNSPECIFIED, "separate": pb.SEPARATE}
PRIORITIES: Dict[str, int] = {"low": pb.LOW, "normal": pb.NORMAL, "high": pb.HIGH}
COMPONENT_METHODS: Dict[str, int] = {
    "activation_patching": pb.ACTIVATION_PATCHING, "layer_integrated_gradients": pb.LAYER_INTEGRATED_GRADIENTS,
    "attribution_patching": pb.ATTRIBUTION_PATCHING, "attribution_patching_star": pb.ATTRIBUTION_PATCHING_STAR,
}
COMPONENT_METRICS: Dict[str, int] = {
    "logit_difference": pb.LOGIT_DIFFERENCE, "normalized_logit_difference": pb.NORMALIZED_LOGIT_DIFFERENCE,
    "log_prob": pb.ANSWER_LOG_PROB, "prob": pb.ANSWER_PROB, "prob_difference": pb.PROB_DIFFERENCE,
}
DIRECTIONS: Dict[str, int] = {"denoising": pb.DENOISING, "noising": pb.NOISING}
SITES: Dict[str, int] = {
    "heads": pb.ATTENTION_HEADS, "attn_out": pb.ATTENTION_OUTPUT, "mlp_out": pb.MLP_OUTPUT,
    "resid_pre": pb.RESIDUAL_PRE,
}
GRANULARITIES: Dict[str, int] = {
    "default": pb.COMPONENT_GRANULARITY_UNSPECIFIED, "layer_head": pb.LAYER_HEAD,
    "layer_position": pb.LAYER_POSITION, "layer_position_head": pb.LAYER_POSITION_HEAD,
}


def _lookup(option: str, name: str, table: Mapping[str, int]) -> int:
    value = table.get(str(name).lower())
    if value is None:
        raise ValueError(f'{option}: unknown value "{name}" (one of: {", ".join(sorted(table))})')
    return value


def _name_of(value: int, table: Mapping[str, int]) -> str:
    """The client's spelling of a proto enum value (as the C++ client's NameOf: the number if unknown)."""
    for name, v in table.items():
        if v == value:
            return name
    return str(value)


def enum_name(enum: Any, value: int) -> str:
    """The proto's name of an enum value, or the number as text for one this client does not know (a newer
    server's): the result is kept, as the C++ client's NameOf keeps it, rather than lost to protobuf's
    ValueError."""
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


# The ranges of the proto's integer types: protobuf refuses a value outside them with a message that does not
# name the field ("Value out of range: -1"), so the client checks first. Limits of the server's own (n_steps
# at most 1024, ...) are left to the server, whose message names them.
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

# Timeouts beyond this many seconds mean "no deadline": gRPC turns now + 1e300 (or inf) into a deadline that
# has already passed, and answers DEADLINE_EXCEEDED at once.
_LONGEST_DEADLINE = 1e9


def integer(name: str, value: Any, bounds: Sequence[int]) -> int:
    """`value` as an integer field named `name`: a float would be truncated (1.5 sent as 1) and a bool
    sent as 0 / 1, so both are refused; TypeError / ValueError naming the field."""
    not_integer = TypeError(f"{name}: must be an integer, not {value!r}")
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):
        raise not_integer
    if not isinstance(value, numbers.Integral):
        # A 0-d integer tensor (Captum's target=torch.tensor(ids) gives its elements) indexes as numpy's
        # integers do; a float tensor's does not count.
        if getattr(value, "ndim", 0) != 0 or not hasattr(type(value), "__index__"):
            raise not_integer
        try:
            value = operator.index(value)
        except TypeError:
            raise not_integer from None
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is outside [{low}, {high}]")
    return int(value)


def number(name: str, value: Any) -> float:
    """`value` as a floating-point field (NaN and infinities go on: the server's message names them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a number, not {value!r}")
    return float(value)


def seconds(name: str, value: Any, *, none_means: Optional[str] = None) -> Optional[float]:
    """A duration in seconds >= 0; with `none_means`, None (and inf, or more than gRPC can hold) is
    allowed and returned as None."""
    if value is None and none_means is not None:
        return None
    s = number(name, value)
    if math.isnan(s) or s < 0 or (none_means is None and math.isinf(s)):
        allowed = f", or None for {none_means}" if none_means is not None else ""
        raise ValueError(f"{name}: {value!r} is not a number of seconds >= 0{allowed}")
    return None if none_means is not None and s > _LONGEST_DEADLINE else s


def deadline(name: str, value: Any) -> Optional[float]:
    """A call's deadline in seconds, > 0 (0 expired every call at once, DEADLINE_EXCEEDED naming nothing); None
    (or inf) for none."""
    s = seconds(name, value, none_means="no deadline")
    if s == 0:
        raise ValueError(f"{name}: 0 s would expire every call at once; None (or inf) for no deadline")
    return s


def _flag(name: str, value: Any) -> bool:
    """A bool (or numpy's), or 0 / 1: a larger number is more likely a count given to the wrong option."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: must be True or False, not {value!r}")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: must be a str, not {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # protobuf's own error named no field
        raise ValueError(f"{name}: character {e.start} ({value[e.start]!r}) cannot be sent as UTF-8") from None
    return value


def _set_input(name: str, value: TextOrIds, out: pb.Input) -> None:
    """Text (str, or UTF-8 bytes) or token ids (any iterable of integers) into `out`; None sets nothing."""
    if isinstance(value, (bytes, bytearray)):
        out.text = bytes(value)
    elif isinstance(value, str):
        try:
            out.text = value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, from bytes decoded with surrogateescape
            raise ValueError(f"{name}: character {e.start} ({value[e.start]!r}) cannot be sent as UTF-8") from None
    elif isinstance(value, Iterable):
        _check_id_sequence(name, value)
        out.token_ids.extend(integer(f"{name}[{i}]", token, INT64) for i, token in enumerate(value))
    elif value is not None:
        raise TypeError(f"{name}: must be text (str) or a sequence of token ids, not {value!r}")


def _check_id_sequence(name: str, value: Iterable) -> None:
    """Token ids are a sequence: a set's or a mapping's iteration order is none the caller chose (and a
    mapping's would send its keys); an array other than 1-D is a scalar or a batch."""
    if isinstance(value, (Set, Mapping)):
        raise TypeError(f"{name}: token ids must be a sequence (list, tuple, 1-D array), not a "
                        f"{type(value).__name__}: its order is not the tokens'")
    # numpy's and torch's arrays alike (a 0-d tensor, Captum's target=torch.tensor(id), failed to iterate).
    if getattr(value, "ndim", 1) != 1:
        raise TypeError(f"{name}: token ids must be a 1-D array, not one of shape {tuple(value.shape)}")


def _set_generation(g: GenerationSettings, out: pb.GenerationSettings) -> None:
    # Named as the keyword arguments that set them (max_new_tokens=5), not as generation.max_new_tokens.
    if not isinstance(g, GenerationSettings):
        raise TypeError(f"generation: must be a GenerationSettings, not {g!r}")
    out.max_new_tokens = integer("max_new_tokens", g.max_new_tokens, INT32)
    out.temperature = number("temperature", g.temperature)
    out.top_p = number("top_p", g.top_p)
    out.top_k = integer("top_k", g.top_k, INT32)
    if g.seed is not None:
        out.seed = integer("seed", g.seed, UINT64)
    out.stop_token_ids.extend(_ids("stop_token_ids", g.stop_token_ids))
    out.ignore_stop_tokens = _flag("ignore_stop_tokens", g.ignore_stop_tokens)


def _ids(name: str, value: Any) -> Sequence[int]:
    """A list of token ids, checked as _set_input checks a prompt's."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: must be a sequence of token ids, not {value!r}")
    ids = pb.Input()
    _set_input(name, value, ids)
    return list(ids.token_ids)


def _set_prompt_fields(o: Union[AttributeOptions, GenerateOptions, LogprobsOptions], out) -> None:
    out.model = _string("model", o.model)
    _set_input("prompt", o.prompt, out.prompt)
    out.no_special_tokens = _flag("no_special_tokens", o.no_special_tokens)
    out.priority = _lookup("priority", o.priority, PRIORITIES)


def _feature_range(value: Any, out: pb.FeatureGroup) -> None:
    try:
        begin, end = value
    except (TypeError, ValueError):
        raise TypeError(f"feature_range: must be a (begin, end) pair of token indices, not {value!r}") from None
    out.token_begin = integer("feature_range[0]", begin, INT64)
    out.token_end = integer("feature_range[1]", end, INT64)


def _set_baseline(value: Any, out: pb.AttributeRequest) -> None:
    """A baseline name, or a token id (an int, or its digits as text, as the CLI's --baseline takes it)."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):  # ASCII digits: "²" is a digit to isdigit()
        value = int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out.baseline = pb.TOKEN_ID
        out.baseline_token_id = integer("baseline", value, INT64)
    elif isinstance(value, str):
        out.baseline = _lookup("baseline", value, BASELINES)
    else:
        raise TypeError(f"baseline: must be a name ({', '.join(sorted(BASELINES))}) or a token id, not {value!r}")


def _list(name: str, value: Any) -> Sequence[Any]:
    """A list option given as a list: a str would be taken one character at a time."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: must be a list, not {value!r}")
    return list(value)


def attribute_request(o: AttributeOptions) -> pb.AttributeRequest:
    out = pb.AttributeRequest()
    _set_prompt_fields(o, out)
    # Only None leaves the target to be generated: "" or [] is sent set but empty, which the server refuses
    # naming the target, rather than attributing a target the caller did not ask for.
    if o.target is not None:
        out.target.SetInParent()
        _set_input("target", o.target, out.target)
    out.target_tokenization = _lookup("target_tokenization", o.target_tokenization, TOKENIZATIONS)
    out.include_special_tokens = _flag("include_special_tokens", o.include_special_tokens)
    _set_generation(o.generation, out.generation)
    out.method = _lookup("method", o.method, METHODS)
    out.quantity = _lookup("quantity", o.quantity, QUANTITIES)
    if o.foil is not None:  # "" or [] is sent and refused by the server, not read as "not contrastive"
        out.contrastive = True
        out.foil.SetInParent()
        _set_input("foil", o.foil, out.foil)
    for i, choice in enumerate(_list("choices", o.choices)):
        _set_answer(f"choices[{i}]", choice, out.choices.add())
    if o.feature_range is not None:
        _feature_range(o.feature_range, out.feature_range)
    for i, g in enumerate(_list("feature_groups", o.feature_groups)):
        if not isinstance(g, FeatureGroup):
            raise TypeError(f"feature_groups[{i}]: must be a FeatureGroup, not {g!r}")
        group = out.feature_groups.add(token_begin=integer(f"feature_groups[{i}].token_begin", g.token_begin, INT64),
                                       token_end=integer(f"feature_groups[{i}].token_end", g.token_end, INT64))
        if g.baseline is not None:  # given but empty ("" or []): the group is deleted
            group.baseline.SetInParent()
            _set_input(f"feature_groups[{i}].baseline", g.baseline, group.baseline)
    _set_baseline(o.baseline, out)
    out.n_steps = integer("n_steps", o.n_steps, INT32)
    out.completeness_tolerance = number("completeness_tolerance", o.completeness_tolerance)
    out.rule = _lookup("rule", o.rule, RULES)
    out.n_samples = integer("n_samples", o.n_samples, INT32)
    out.stdev = number("stdev", o.stdev)
    out.seed = integer("seed", o.seed, UINT64)
    if o.target is None and not out.generation.HasField("seed"):
        out.generation.seed = out.seed  # as attribution-cli's --seed: the generated target's too
    out.signed_saliency = _flag("signed_saliency", o.signed_saliency)
    out.want_token_matrix = _flag("want_token_matrix", o.want_token_matrix)
    out.want_faithfulness = _flag("want_faithfulness", o.want_faithfulness)
    return out


def _set_answer(name: str, value: AnswerToken, out: pb.Input) -> None:
    """An int (or a one-element id sequence) is a token id; text is tokenized by the server."""
    out.SetInParent()  # always present, as the C++ client sends it
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out.token_ids.append(integer(name, value, INT64))
    else:
        _set_input(name, value, out)


_PAIR_KEYS = ("clean", "clean_ids", "corrupted", "corrupted_ids")


def _prompt_pair(pair: Any, index: int) -> PromptPair:
    if isinstance(pair, PromptPair):
        return pair
    if isinstance(pair, Mapping):
        # As attribution-cli's --pairs: a key it does not read ("answer" of a batch row, a misspelling) was
        # passed over, and of "clean" and "clean_ids" one was silently dropped.
        for key in pair:
            if key not in _PAIR_KEYS:
                raise ValueError(f'pairs[{index}]: unknown key "{key}" (a pair is clean or clean_ids, corrupted or '
                                 "corrupted_ids; answer and wrong_answer are options of the call)")
        for key in ("clean", "corrupted"):
            if key in pair and f"{key}_ids" in pair:
                raise ValueError(f'pairs[{index}]: give "{key}" or "{key}_ids", not both')
        return PromptPair(clean=pair.get("clean", pair.get("clean_ids")),
                          corrupted=pair.get("corrupted", pair.get("corrupted_ids")))
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return PromptPair(clean=pair[0], corrupted=pair[1])
    raise TypeError(f"pairs[{index}]: a PromptPair or a (clean, corrupted) tuple, not {pair!r}")


def component_request(o: ComponentOptions) -> pb.AttributeComponentsRequest:
    out = pb.AttributeComponentsRequest()
    out.model = _string("model", o.model)
    for i, pair in enumerate(_list("pairs", o.pairs)):
        p = _prompt_pair(pair, i)
        added = out.pairs.add()
        added.clean.SetInParent()
        added.corrupted.SetInParent()
        _set_input(f"pairs[{i}].clean", p.clean, added.clean)
        _set_input(f"pairs[{i}].corrupted", p.corrupted, added.corrupted)
    out.no_special_tokens = _flag("no_special_tokens", o.no_special_tokens)
    _set_answer("answer", o.answer, out.answer)
    _set_answer("wrong_answer", o.wrong_answer, out.wrong_answer)
    out.metric = _lookup("metric", o.metric, COMPONENT_METRICS)
    out.method = _lookup("method", o.method, COMPONENT_METHODS)
    out.direction = _lookup("direction", o.direction, DIRECTIONS)
    sites = o.sites.split(",") if isinstance(o.sites, str) else _list("sites", o.sites)
    out.sites.extend(_lookup("sites", str(site).strip(), SITES) for site in sites)
    out.granularity = _lookup("granularity", o.granularity, GRANULARITIES)
    out.n_steps = integer("n_steps", o.n_steps, INT32)
    out.rule = _lookup("rule", o.rule, RULES)
    out.priority = _lookup("priority", o.priority, PRIORITIES)
    return out


def generate_request(o: GenerateOptions) -> pb.GenerateRequest:
    out = pb.GenerateRequest()
    _set_prompt_fields(o, out)
    _set_generation(o.generation, out.generation)
    if isinstance(o.stop, (str, bytes)) or not isinstance(o.stop, Iterable):
        raise TypeError(f"stop: must be a list of strings, not {o.stop!r}")
    out.stop.extend(_string(f"stop[{i}]", s) for i, s in enumerate(o.stop))
    return out


def logprobs_request(o: LogprobsOptions) -> pb.LogprobsRequest:
    out = pb.LogprobsRequest()
    _set_prompt_fields(o, out)
    _set_input("target", o.target, out.target)
    out.target_tokenization = _lookup("target_tokenization", o.target_tokenization, TOKENIZATIONS)
    out.top_k = integer("top_k", o.top_k, INT32)
    return out


def token(t: pb.Token) -> Token:
    return Token(id=t.id, text=t.text, bytes=t.token_bytes, char_begin=t.char_begin, char_end=t.char_end,
                 log_prob=t.log_prob, special=t.special)


def _tokens(tokens: Sequence[pb.Token]) -> List[Token]:
    return [token(t) for t in tokens]


def _stats(s: pb.RunStats) -> RunStats:
    return RunStats(rows=s.rows, forward_passes=s.forward_passes, backward_passes=s.backward_passes,
                    queue_seconds=s.queue_seconds, device_seconds=s.device_seconds, wall_seconds=s.wall_seconds,
                    server_build=s.server_build)


def _settings_used(s: pb.SettingsUsed) -> SettingsUsed:
    def given(name: str) -> Any:
        return getattr(s, name) if s.HasField(name) else None

    rule = None
    if s.HasField("rule"):
        rule = next((name for name, value in RULES.items() if value == s.rule), str(s.rule))
    baseline: Optional[Union[str, int]] = None
    if s.HasField("baseline"):
        baseline = "zero" if s.baseline == pb.ZERO_EMBEDDING else s.baseline_token_id
    return SettingsUsed(n_steps=given("n_steps"), rule=rule, n_samples=given("n_samples"), stdev=given("stdev"),
                        seed=given("seed"), baseline=baseline)


def attribution(r: pb.AttributeResponse, asked: Optional[pb.AttributeRequest] = None) -> Attribution:
    """The result; DataLoss naming the field if `r` has not the shapes the result's methods index by, or
    does not answer `asked`."""
    _response_checks.check_attribution(r, asked)
    faithfulness = None
    if r.HasField("faithfulness"):
        f = r.faithfulness
        faithfulness = Faithfulness(percents=list(f.percents), features_at=list(f.features_at), full=f.full,
                                    empty=f.empty, deletion=list(f.deletion), insertion=list(f.insertion),
                                    comprehensiveness_aopc=f.comprehensiveness_aopc,
                                    sufficiency_aopc=f.sufficiency_aopc)
    matrix = None
    if len(r.token_matrix) > 0:
        matrix = np.array([list(row.values) for row in r.token_matrix], dtype=np.float64)
    return Attribution(
        model=r.model, method=enum_name(pb.Method, r.method).lower(), prompt_tokens=_tokens(r.prompt_tokens),
        target_tokens=_tokens(r.target_tokens),
        features=[Feature(f.token_begin, f.token_end, f.text) for f in r.features],
        sequence=np.array(r.sequence_attribution, dtype=np.float64), token_matrix=matrix, objective=r.objective,
        fixed_tokens=list(r.fixed_tokens),
        convergence_delta=r.convergence_delta if r.HasField("convergence_delta") else None,
        integration_steps=r.integration_steps,
        tolerance_met=r.tolerance_met if r.HasField("tolerance_met") else None,
        faithfulness=faithfulness, stats=_stats(r.stats), model_digest=r.model_digest,
        foil_tokens=_tokens(r.foil_tokens), unread_settings=list(r.unread_settings),
        settings_used=_settings_used(r.settings_used))


def _grid(g: pb.ComponentGrid) -> ComponentGrid:
    return ComponentGrid(site=_name_of(g.site, SITES), granularity=_name_of(g.granularity, GRANULARITIES),
                         shape=tuple(g.shape), axes=list(g.axes), values=np.array(g.values, dtype=np.float64),
                         convergence_deltas=np.array(g.convergence_deltas, dtype=np.float64))


def component_attribution(r: pb.AttributeComponentsResponse) -> ComponentAttribution:
    """The result; DataLoss naming the field if a grid's shape or a pair's tokens do not fit together."""
    _response_checks.check_components(r)
    pairs = [PairComponents(clean_metric=p.clean_metric, corrupted_metric=p.corrupted_metric,
                            grids=[_grid(g) for g in p.grids], clean_tokens=_tokens(p.clean_tokens),
                            corrupted_tokens=_tokens(p.corrupted_tokens))
             for p in r.pairs]
    return ComponentAttribution(
        model=r.model, method=_name_of(r.method, COMPONENT_METHODS), metric=_name_of(r.metric, COMPONENT_METRICS),
        direction=_name_of(r.direction, DIRECTIONS), grids=[_grid(g) for g in r.grids], pairs=pairs,
        answer=token(r.answer), wrong_answer=token(r.wrong_answer), stats=_stats(r.stats),
        model_digest=r.model_digest, unread_settings=list(r.unread_settings),
        settings_used=_settings_used(r.settings_used))


def generation(r: pb.GenerateResponse, asked: Optional[pb.GenerateRequest] = None) -> Generation:
    _response_checks.check_generation(r, asked)
    return Generation(prompt_tokens=_tokens(r.prompt_tokens), tokens=_tokens(r.tokens), text=r.text,
                      text_bytes=r.text_bytes, stopped=r.stopped, seed=r.seed, stats=_stats(r.stats),
                      model_digest=r.model_digest)


def logprobs(r: pb.LogprobsResponse, asked: Optional[pb.LogprobsRequest] = None) -> Logprobs:
    _response_checks.check_logprobs(r, asked)
    target = [TokenLogprob(token=token(t.token),
                           top=[TopToken(id=x.id, text=x.text, log_prob=x.log_prob, bytes=x.token_bytes) for x in t.top])
              for t in r.target]
    return Logprobs(prompt_tokens=_tokens(r.prompt_tokens), target=target, total_log_prob=r.total_log_prob,
                    stats=_stats(r.stats), model_digest=r.model_digest)


def models(r: pb.ListModelsResponse) -> List[ModelInfo]:
    _response_checks.check_models(r.models)
    return [ModelInfo(name=m.name, architecture=m.architecture, dtype=m.dtype, quantization=m.quantization,
                      device=m.device, resident_weight_bytes=m.resident_weight_bytes, vocab_size=m.vocab_size,
                      num_layers=m.num_layers, hidden_size=m.hidden_size, max_steps=m.limits.max_steps,
                      max_samples=m.limits.max_samples, max_features=m.limits.max_features,
                      max_exact_shapley_features=m.limits.max_exact_shapley_features,
                      max_tokens=m.limits.max_tokens, max_new_tokens=m.limits.max_new_tokens,
                      max_top_k=m.limits.max_top_k, max_choices=m.limits.max_choices,
                      max_rows=m.limits.max_rows, max_pairs=m.limits.max_pairs,
                      max_queued_tokens=m.limits.max_queued_tokens, max_queued_bytes=m.limits.max_queued_bytes,
                      max_kv_cache_tokens=m.limits.max_kv_cache_tokens,
                      quantization_block_size=m.quantization_info.block_size,
                      double_quantization=m.quantization_info.double_quantization,
                      quantization_from_checkpoint=m.quantization_info.from_checkpoint,
                      checkpoint_compute_dtype=m.quantization_info.checkpoint_compute_dtype,
                      weights_digest=m.weights_digest, model_digest=m.model_digest)
            for m in r.models]
