# SPDX-License-Identifier: Apache-2.0
"""Options to request protos and response protos to results: the one place that knows both."""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Mapping, Sequence, TypeVar, Union

import numpy as np

from ._generated.attribution.v1 import attribution_pb2 as pb
from .options import (AnswerToken, AttributeOptions, ComponentOptions, GenerateOptions, GenerationSettings,
                      LogprobsOptions, PromptPair, TextOrIds)
from .results import (Attribution, ComponentAttribution, ComponentGrid, Faithfulness, Feature, Generation, Logprobs,
                      ModelInfo, PairComponents, RunStats, Token, TokenLogprob, TopToken)

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
TOKENIZATIONS: Dict[str, int] = {"continuation": pb.CONTINUATION, "separate": pb.SEPARATE}
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


def _set_input(value: TextOrIds, out: pb.Input) -> None:
    if isinstance(value, (bytes, bytearray)):
        out.text = bytes(value)
    elif isinstance(value, str):
        out.text = value.encode("utf-8")
    elif value is not None:
        out.token_ids.extend(int(i) for i in value)


def _given(value: TextOrIds) -> bool:
    return value is not None and len(value) > 0


def _set_generation(g: GenerationSettings, out: pb.GenerationSettings) -> None:
    out.max_new_tokens = g.max_new_tokens
    out.temperature = g.temperature
    out.top_p = g.top_p
    out.seed = g.seed
    out.stop_token_ids.extend(g.stop_token_ids)
    out.ignore_stop_tokens = g.ignore_stop_tokens


def _set_prompt_fields(o: Union[AttributeOptions, GenerateOptions, LogprobsOptions], out) -> None:
    out.model = o.model
    _set_input(o.prompt, out.prompt)
    out.no_special_tokens = o.no_special_tokens
    out.priority = _lookup("priority", o.priority, PRIORITIES)


def attribute_request(o: AttributeOptions) -> pb.AttributeRequest:
    out = pb.AttributeRequest()
    _set_prompt_fields(o, out)
    if _given(o.target):
        _set_input(o.target, out.target)
    out.target_tokenization = _lookup("target_tokenization", o.target_tokenization, TOKENIZATIONS)
    out.include_special_tokens = o.include_special_tokens
    _set_generation(o.generation, out.generation)
    out.method = _lookup("method", o.method, METHODS)
    out.quantity = _lookup("quantity", o.quantity, QUANTITIES)
    if _given(o.foil):
        out.contrastive = True
        _set_input(o.foil, out.foil)
    for choice in o.choices:
        _set_input([choice] if isinstance(choice, int) else choice, out.choices.add())
    if o.feature_range is not None:
        out.feature_range.token_begin, out.feature_range.token_end = o.feature_range
    for g in o.feature_groups:
        group = out.feature_groups.add(token_begin=g.token_begin, token_end=g.token_end)
        if _given(g.baseline):
            _set_input(g.baseline, group.baseline)
    if isinstance(o.baseline, int) or str(o.baseline).lstrip("-").isdigit():
        out.baseline = pb.TOKEN_ID
        out.baseline_token_id = int(o.baseline)
    else:
        out.baseline = _lookup("baseline", str(o.baseline), BASELINES)
    out.n_steps = o.n_steps
    out.completeness_tolerance = o.completeness_tolerance
    out.rule = _lookup("rule", o.rule, RULES)
    out.n_samples = o.n_samples
    out.stdev = o.stdev
    out.seed = o.seed
    out.signed_saliency = o.signed_saliency
    out.want_token_matrix = o.want_token_matrix
    out.want_faithfulness = o.want_faithfulness
    return out


def _set_answer(value: AnswerToken, out: pb.Input) -> None:
    """An int (or a one-element id sequence) is a token id; text is tokenized by the server."""
    out.SetInParent()  # always present, as the C++ client sends it
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out.token_ids.append(int(value))
    else:
        _set_input(value, out)


def _prompt_pair(pair: Any, index: int) -> PromptPair:
    if isinstance(pair, PromptPair):
        return pair
    if isinstance(pair, Mapping):
        return PromptPair(clean=pair.get("clean", pair.get("clean_ids")),
                          corrupted=pair.get("corrupted", pair.get("corrupted_ids")))
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return PromptPair(clean=pair[0], corrupted=pair[1])
    raise TypeError(f"pairs[{index}]: a PromptPair or a (clean, corrupted) tuple, not {pair!r}")


def component_request(o: ComponentOptions) -> pb.AttributeComponentsRequest:
    out = pb.AttributeComponentsRequest()
    out.model = o.model
    for i, pair in enumerate(o.pairs):
        p = _prompt_pair(pair, i)
        added = out.pairs.add()
        added.clean.SetInParent()
        added.corrupted.SetInParent()
        _set_input(p.clean, added.clean)
        _set_input(p.corrupted, added.corrupted)
    out.no_special_tokens = o.no_special_tokens
    _set_answer(o.answer, out.answer)
    _set_answer(o.wrong_answer, out.wrong_answer)
    out.metric = _lookup("metric", o.metric, COMPONENT_METRICS)
    out.method = _lookup("method", o.method, COMPONENT_METHODS)
    out.direction = _lookup("direction", o.direction, DIRECTIONS)
    sites = o.sites.split(",") if isinstance(o.sites, str) else o.sites
    out.sites.extend(_lookup("sites", site.strip(), SITES) for site in sites)
    out.granularity = _lookup("granularity", o.granularity, GRANULARITIES)
    out.n_steps = o.n_steps
    out.rule = _lookup("rule", o.rule, RULES)
    out.priority = _lookup("priority", o.priority, PRIORITIES)
    return out


def generate_request(o: GenerateOptions) -> pb.GenerateRequest:
    out = pb.GenerateRequest()
    _set_prompt_fields(o, out)
    _set_generation(o.generation, out.generation)
    return out


def logprobs_request(o: LogprobsOptions) -> pb.LogprobsRequest:
    out = pb.LogprobsRequest()
    _set_prompt_fields(o, out)
    _set_input(o.target, out.target)
    out.target_tokenization = _lookup("target_tokenization", o.target_tokenization, TOKENIZATIONS)
    out.top_k = o.top_k
    return out


def token(t: pb.Token) -> Token:
    return Token(id=t.id, text=t.text, bytes=t.token_bytes, char_begin=t.char_begin, char_end=t.char_end,
                 log_prob=t.log_prob, special=t.special)


def _tokens(tokens: Sequence[pb.Token]) -> List[Token]:
    return [token(t) for t in tokens]


def _stats(s: pb.RunStats) -> RunStats:
    return RunStats(rows=s.rows, forward_passes=s.forward_passes, backward_passes=s.backward_passes,
                    queue_seconds=s.queue_seconds, device_seconds=s.device_seconds, wall_seconds=s.wall_seconds)


def attribution(r: pb.AttributeResponse) -> Attribution:
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
        model=r.model, method=pb.Method.Name(r.method).lower(), prompt_tokens=_tokens(r.prompt_tokens),
        target_tokens=_tokens(r.target_tokens),
        features=[Feature(f.token_begin, f.token_end, f.text) for f in r.features],
        sequence=np.array(r.sequence_attribution, dtype=np.float64), token_matrix=matrix, objective=r.objective,
        fixed_tokens=list(r.fixed_tokens),
        convergence_delta=r.convergence_delta if r.HasField("convergence_delta") else None,
        integration_steps=r.integration_steps,
        tolerance_met=r.tolerance_met if r.HasField("tolerance_met") else None,
        faithfulness=faithfulness, stats=_stats(r.stats))


def _grid(g: pb.ComponentGrid) -> ComponentGrid:
    return ComponentGrid(site=_name_of(g.site, SITES), granularity=_name_of(g.granularity, GRANULARITIES),
                         shape=tuple(g.shape), axes=list(g.axes), values=np.array(g.values, dtype=np.float64),
                         convergence_deltas=np.array(g.convergence_deltas, dtype=np.float64))


def component_attribution(r: pb.AttributeComponentsResponse) -> ComponentAttribution:
    pairs = [PairComponents(clean_metric=p.clean_metric, corrupted_metric=p.corrupted_metric,
                            grids=[_grid(g) for g in p.grids], clean_tokens=_tokens(p.clean_tokens),
                            corrupted_tokens=_tokens(p.corrupted_tokens))
             for p in r.pairs]
    return ComponentAttribution(
        model=r.model, method=_name_of(r.method, COMPONENT_METHODS), metric=_name_of(r.metric, COMPONENT_METRICS),
        direction=_name_of(r.direction, DIRECTIONS), grids=[_grid(g) for g in r.grids], pairs=pairs,
        answer=token(r.answer), wrong_answer=token(r.wrong_answer), stats=_stats(r.stats))


def generation(r: pb.GenerateResponse) -> Generation:
    return Generation(prompt_tokens=_tokens(r.prompt_tokens), tokens=_tokens(r.tokens), text=r.text,
                      text_bytes=r.text_bytes, stopped=r.stopped, stats=_stats(r.stats))


def logprobs(r: pb.LogprobsResponse) -> Logprobs:
    target = [TokenLogprob(token=token(t.token),
                           top=[TopToken(id=x.id, text=x.text, log_prob=x.log_prob, bytes=x.token_bytes) for x in t.top])
              for t in r.target]
    return Logprobs(prompt_tokens=_tokens(r.prompt_tokens), target=target, total_log_prob=r.total_log_prob,
                    stats=_stats(r.stats))


def models(r: pb.ListModelsResponse) -> List[ModelInfo]:
    return [ModelInfo(name=m.name, architecture=m.architecture, dtype=m.dtype, quantization=m.quantization,
                      device=m.device, resident_weight_bytes=m.resident_weight_bytes, vocab_size=m.vocab_size,
                      num_layers=m.num_layers, hidden_size=m.hidden_size, max_steps=m.limits.max_steps,
                      max_samples=m.limits.max_samples, max_features=m.limits.max_features,
                      max_exact_shapley_features=m.limits.max_exact_shapley_features,
                      max_tokens=m.limits.max_tokens, max_new_tokens=m.limits.max_new_tokens,
                      max_top_k=m.limits.max_top_k,
                      quantization_block_size=m.quantization_info.block_size,
                      double_quantization=m.quantization_info.double_quantization,
                      quantization_from_checkpoint=m.quantization_info.from_checkpoint,
                      checkpoint_compute_dtype=m.quantization_info.checkpoint_compute_dtype)
            for m in r.models]
