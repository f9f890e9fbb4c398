# SPDX-License-Identifier: Apache-2.0
"""The shapes a response must have before it becomes a result, as the C++ client checks them
(client/proto_mapping.cc): the results' methods and the renderers (to_dataframe, the HTML heatmap,
to_captum, ComponentGrid.to_numpy) index by them. A response that breaks one (a buggy or hostile server,
or a version skew) raises DataLoss naming the field and the numbers, instead of an IndexError or a numpy /
pandas error later, or rows silently left out of a table."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import grpc

from ._generated.attribution.v1 import attribution_pb2 as pb
from .errors import DataLoss

# The layouts of a component grid's axes the server sends (ComponentGrid in the proto).
_GRID_LAYOUTS = (("layer", "head"), ("layer", "position"), ("layer", "position", "head"))


def _malformed(field: str, what: str) -> DataLoss:
    return DataLoss(grpc.StatusCode.DATA_LOSS, f"{field}: {what}")


def _check_features(r: pb.AttributeResponse) -> None:
    """Features are non-empty spans of prompt tokens, disjoint and in order (the server refuses groups that
    are not); sequence_attribution holds one value per feature; fixed tokens lie in the prompt."""
    prompt = len(r.prompt_tokens)
    previous_end = 0
    for i, f in enumerate(r.features):
        field = f"AttributeResponse.features[{i}]"
        if f.token_begin < 0 or f.token_end > prompt or f.token_begin >= f.token_end:
            raise _malformed(field, f"tokens [{f.token_begin}, {f.token_end}) are not a non-empty span of the "
                                    f"{prompt} prompt tokens")
        if f.token_begin < previous_end:
            raise _malformed(field, f"starts at token {f.token_begin}, before the previous feature ends "
                                    f"({previous_end}): features are disjoint and in order")
        previous_end = f.token_end
    if len(r.sequence_attribution) != len(r.features):
        raise _malformed("AttributeResponse.sequence_attribution",
                         f"{len(r.sequence_attribution)} values, expected {len(r.features)} (one per feature)")
    for i, t in enumerate(r.fixed_tokens):
        if not 0 <= t < prompt:
            raise _malformed(f"AttributeResponse.fixed_tokens[{i}]", f"token {t} is outside the {prompt} prompt tokens")


def _check_token_matrix(r: pb.AttributeResponse) -> None:
    """The token matrix, when sent, is [target tokens][features]."""
    if len(r.token_matrix) == 0:
        return
    if len(r.token_matrix) != len(r.target_tokens):
        raise _malformed("AttributeResponse.token_matrix",
                         f"{len(r.token_matrix)} rows, expected {len(r.target_tokens)} (one per target token)")
    for t, row in enumerate(r.token_matrix):
        if len(row.values) != len(r.features):
            raise _malformed("AttributeResponse.token_matrix",
                             f"row {t} has {len(row.values)} values, expected {len(r.features)} (one per feature)")


def _check_faithfulness(r: pb.AttributeResponse) -> None:
    """The curves have one point per percent, each removing between none and all of the features."""
    if not r.HasField("faithfulness"):
        return
    f = r.faithfulness
    points = len(f.percents)
    for name, values in (("features_at", f.features_at), ("deletion", f.deletion), ("insertion", f.insertion)):
        if len(values) != points:
            raise _malformed(f"AttributeResponse.faithfulness.{name}",
                             f"{len(values)} values, expected {points} (one per percent)")
    for i, n in enumerate(f.features_at):
        if not 0 <= n <= len(r.features):
            raise _malformed(f"AttributeResponse.faithfulness.features_at[{i}]",
                             f"{n} features, outside [0, {len(r.features)}]")


# A log-probability is log_softmax's, <= 0 exactly; a choice-renormalised one may round a little above.
_LOG_PROB_SLACK = 1e-3


def _contradicts(field: str, what: str) -> DataLoss:
    return _malformed(field, f"{what} (the response does not answer this request)")


def _check_log_prob(value: float, field: str, terms: int = 1) -> None:
    if value > _LOG_PROB_SLACK * terms:  # NaN passes: a model served with --allow_nonfinite_weights computes it
        raise DataLoss(grpc.StatusCode.DATA_LOSS, f"{field} = {value}: a log-probability is at most 0")


def _method_name(value: int) -> str:
    try:
        return pb.Method.Name(value)
    except ValueError:
        return str(value)


def _check_target_ids(asked: Sequence[int], got: Sequence[int], field: str) -> None:
    """The target ids asked for, or (none given: a text or generated target) one token or more."""
    if not asked:
        if not got:
            raise _contradicts(field, "no target token")
    elif list(got) != list(asked):
        raise _contradicts(field, f"ids {list(got)}, asked for {list(asked)}")


def check_attribution(r: pb.AttributeResponse, asked: Optional[pb.AttributeRequest] = None) -> None:
    """Raises DataLoss unless `r` has the shapes Attribution's methods rely on and answers `asked` (the
    method asked for, the target ids given, log-probabilities <= 0), as the C++ client checks
    (client/answer_checks.cc)."""
    _check_features(r)
    _check_token_matrix(r)
    _check_faithfulness(r)
    if asked is None:
        return
    if asked.method != pb.METHOD_UNSPECIFIED and r.method != asked.method:
        raise _contradicts("AttributeResponse.method",
                           f"{_method_name(r.method)}, asked for {_method_name(asked.method)}")
    _check_target_ids(asked.target.token_ids, [t.id for t in r.target_tokens], "AttributeResponse.target_tokens")
    for i, t in enumerate(r.target_tokens):
        _check_log_prob(t.log_prob, f"AttributeResponse.target_tokens[{i}].log_prob")


def _check_grid(g: pb.ComponentGrid, field: str) -> None:
    """Axes are one of the server's layouts, shape has one size per axis, values one per component
    (row-major), convergence_deltas none or one per component."""
    axes = tuple(g.axes)
    if axes not in _GRID_LAYOUTS:
        raise _malformed(f"{field}.axes", f"[{', '.join(axes)}] is not [layer, head], [layer, position] or "
                                          "[layer, position, head]")
    if len(g.shape) != len(axes):
        raise _malformed(f"{field}.shape", f"{len(g.shape)} sizes, expected {len(axes)} (one per axis)")
    for d, size in enumerate(g.shape):
        # Every axis has a layer, a position or a head: a 0 beside sizes of 2^30 matched no values and
        # to_dataframe() then sized its table by the other axes (MemoryError).
        if size < 1:
            raise _malformed(f"{field}.shape[{d}]", f"{size} < 1")
    components = math.prod(g.shape)
    if len(g.values) != components:
        raise _malformed(f"{field}.values", f"{len(g.values)} values, expected the product of shape "
                                            f"[{', '.join(map(str, g.shape))}] = {components}")
    if len(g.convergence_deltas) not in (0, len(g.values)):
        raise _malformed(f"{field}.convergence_deltas", f"{len(g.convergence_deltas)} values, expected 0 or "
                                                        f"{len(g.values)} (one per component)")


def check_components(r: pb.AttributeComponentsResponse) -> None:
    """Every grid, and each pair's two prompts as long as each other (their tokens label the positions)."""
    for i, g in enumerate(r.grids):
        _check_grid(g, f"AttributeComponentsResponse.grids[{i}]")
    for k, p in enumerate(r.pairs):
        field = f"AttributeComponentsResponse.pairs[{k}]"
        for i, g in enumerate(p.grids):
            _check_grid(g, f"{field}.grids[{i}]")
        if len(p.corrupted_tokens) != len(p.clean_tokens):
            raise _malformed(f"{field}.corrupted_tokens", f"{len(p.corrupted_tokens)} tokens, expected "
                                                          f"{len(p.clean_tokens)} (as many as clean_tokens)")


def check_logprobs(r: pb.LogprobsResponse, asked: Optional[pb.LogprobsRequest] = None) -> None:
    """Every target entry carries its token; the target ids given (one or more otherwise), every
    log-probability <= 0, at most top_k alternatives."""
    for i, t in enumerate(r.target):
        if not t.HasField("token"):
            raise _malformed(f"LogprobsResponse.target[{i}].token", "missing")
    if asked is None:
        return
    _check_target_ids(asked.target.token_ids, [t.token.id for t in r.target], "LogprobsResponse.target")
    for i, t in enumerate(r.target):
        field = f"LogprobsResponse.target[{i}]"
        _check_log_prob(t.token.log_prob, f"{field}.token.log_prob")
        if len(t.top) > asked.top_k:
            raise _contradicts(f"{field}.top", f"{len(t.top)} alternatives, asked for top_k = {asked.top_k}")
        for k, top in enumerate(t.top):
            _check_log_prob(top.log_prob, f"{field}.top[{k}].log_prob")
    _check_log_prob(r.total_log_prob, "LogprobsResponse.total_log_prob", len(r.target))


def check_generation(r: pb.GenerateResponse, asked: Optional[pb.GenerateRequest] = None) -> None:
    """At most max_new_tokens tokens (when asked), each log-probability <= 0."""
    if asked is None:
        return
    most = asked.generation.max_new_tokens
    if most > 0 and len(r.tokens) > most:
        raise _contradicts("GenerateResponse.tokens", f"{len(r.tokens)} tokens, asked for max_new_tokens = {most}")
    for i, t in enumerate(r.tokens):
        _check_log_prob(t.log_prob, f"GenerateResponse.tokens[{i}].log_prob")


def check_models(models: Sequence[pb.ModelInfo]) -> None:
    """Callers pick a model by its name (the first one's, or one given): each must name exactly one."""
    names = set()
    for i, m in enumerate(models):
        field = f"ListModelsResponse.models[{i}].name"
        if not m.name:
            raise _malformed(field, "empty")
        if m.name in names:
            raise _malformed(field, f'"{m.name}" names an earlier model too')
        names.add(m.name)
