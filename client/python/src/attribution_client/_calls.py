# SPDX-License-Identifier: Apache-2.0
"""What the sync and asyncio clients share: building options from keyword arguments, and turning
stream events into results."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Type, TypeVar, Union

from . import _channel, _convert
from ._generated.attribution.v1 import attribution_pb2 as pb
from .options import ClientOptions, GenerationSettings
from .results import Attribution, ComponentAttribution, Generation, Progress, Token

O = TypeVar("O")
_GENERATION_FIELDS = {f.name for f in dataclasses.fields(GenerationSettings)}

# Marks "the client's default timeout" apart from an explicit None (no deadline).
DEFAULT: Any = object()


def client_options(target: Union[str, ClientOptions, None], fields: Dict[str, Any]) -> ClientOptions:
    if isinstance(target, ClientOptions):
        options = dataclasses.replace(target, **fields)
    else:  # None or "": the default target; anything else _channel.check checks
        options = ClientOptions(**({} if target is None or target == "" else {"target": target}), **fields)
    _channel.check(options)
    return options


def build(cls: Type[O], options: Any, fields: Dict[str, Any]) -> O:
    """`options` with `fields` replaced (or cls(**fields)); GenerationSettings fields given flat
    (max_new_tokens=5) go into options.generation. `options` may instead be the prompt (text or token ids),
    as `client.generate("Once upon a time")`: dataclasses.replace failed on it with "replace() should be
    called on dataclass instances", which named neither the call nor the prompt."""
    own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if options is not None and not isinstance(options, cls):
        if dataclasses.is_dataclass(options) or "prompt" not in own:
            raise TypeError(f"{cls.__name__}: the first argument must be the options ({cls.__name__})"
                            f"{' or the prompt' if 'prompt' in own else ''}, not {type(options).__name__}")
        if "prompt" in fields:
            raise TypeError(f"{cls.__name__}: the prompt is given twice (as the first argument and as prompt=)")
        fields["prompt"] = options
        options = None
    flat = {k: fields.pop(k) for k in list(fields) if k not in own and k in _GENERATION_FIELDS}
    unknown = [k for k in fields if k not in own]
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}")
    built = cls(**fields) if options is None else dataclasses.replace(options, **fields)  # type: ignore[type-var]
    if flat:
        if not hasattr(built, "generation"):
            raise TypeError(f"{cls.__name__}: unknown option(s) {', '.join(flat)}")
        built.generation = dataclasses.replace(built.generation, **flat)  # type: ignore[attr-defined]
    return built


def attribute_event(event: pb.AttributeEvent, asked: pb.AttributeRequest) -> Union[Progress, Attribution]:
    kind = event.WhichOneof("event")
    if kind == "result":
        return _convert.attribution(event.result, asked)
    if kind == "queued":
        return Progress(rows_done=0, rows_total=0, queued=True)
    return Progress(rows_done=event.progress.rows_done, rows_total=event.progress.rows_total)


def component_event(event: pb.AttributeComponentsEvent, asked: pb.AttributeComponentsRequest
                    ) -> Union[Progress, ComponentAttribution]:
    del asked  # a component answer's shapes are checked, nothing of it against the request
    kind = event.WhichOneof("event")
    if kind == "result":
        return _convert.component_attribution(event.result)
    if kind == "queued":
        return Progress(rows_done=0, rows_total=0, queued=True)
    return Progress(rows_done=event.progress.rows_done, rows_total=event.progress.rows_total)


def generate_event(event: pb.GenerateEvent, asked: pb.GenerateRequest) -> Union[Token, Generation]:
    if event.WhichOneof("event") == "result":
        return _convert.generation(event.result, asked)
    return _convert.token(event.token)


def timeout(value: Any, default: Optional[float]) -> Optional[float]:
    """The call's deadline in seconds (None: none); ValueError naming `timeout` for NaN, 0 or a negative one."""
    return _convert.deadline("timeout", default if value is DEFAULT else value)
