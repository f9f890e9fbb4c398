# SPDX-License-Identifier: Apache-2.0
"""Exceptions of the client: one class per gRPC status code the server answers with.

Every failed call raises an AttributionError subclass carrying the gRPC code and the server's message
(which names the offending field, e.g. "n_steps: 5000 is outside [1, 1024]"):

    try:
        client.attribute(prompt="...", n_steps=5000)
    except attribution_client.InvalidArgument as e:
        print(e.code, e.message)
"""
from __future__ import annotations

from typing import Any, Dict, Type

import grpc


class AttributionError(Exception):
    """A call failed: `code` is the gRPC status code, `message` the server's (or gRPC's) message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(AttributionError, ValueError):
    """A request field is out of range or malformed; the message names the field."""


class NotFound(AttributionError, LookupError):
    """No such model (see list_models())."""


class FailedPrecondition(AttributionError):
    """The model cannot serve this request (e.g. text on a model without a tokenizer)."""


class ResourceExhausted(AttributionError):
    """The server's queue or a limit is full; retry later."""


class DeadlineExceeded(AttributionError, TimeoutError):
    """The call's deadline passed; the server dropped its queued work."""


class Cancelled(AttributionError):
    """The call was cancelled (by this client or the server)."""


class Unauthenticated(AttributionError, PermissionError):
    """No or a wrong bearer token. (A missing or untrusted client certificate never connects: Unavailable.)"""


class PermissionDenied(AttributionError, PermissionError):
    """The credentials are valid but not allowed this call."""


class Unavailable(AttributionError, ConnectionError):
    """The server could not be reached (after the retries) or is shutting down."""


class Internal(AttributionError):
    """A failure inside the server."""


class DataLoss(AttributionError):
    """The server's answer is malformed or incomplete (a buggy server, or a version skew): the message names
    the response field and what it should have held. Raised by the client itself, as the C++ client's
    DATA_LOSS status."""


_BY_CODE: Dict[grpc.StatusCode, Type[AttributionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


_UNPARSABLE_ANSWER = "Exception deserializing response!"


def rpc_name(method: Any) -> str:
    """The full name of the RPC a grpcio multicallable calls ("/attribution.v1.AttributionService/Generate"),
    for messages; grpcio keeps it in a private attribute, so "" where a version does not."""
    name = getattr(method, "_method", b"")
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def unparsable_answer(rpc: str) -> DataLoss:
    """DataLoss for an answer grpcio could not parse, naming the RPC as the C++ clients do."""
    return DataLoss(grpc.StatusCode.DATA_LOSS, f"the answer{' to ' + rpc if rpc else ''} does not parse (a string "
                                               "field that is not UTF-8, or bytes of another message)")


def from_grpc(error: grpc.RpcError, rpc: str = "") -> AttributionError:
    """The exception for a failed call (grpc.RpcError / grpc.aio.AioRpcError) of `rpc` (rpc_name)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.INTERNAL and message == _UNPARSABLE_ANSWER:  # grpcio's words for it
        return unparsable_answer(rpc)
    return error_for(code, message or "")


def error_for(code: grpc.StatusCode, message: str) -> AttributionError:
    """The exception class for `code`, built with `message`."""
    return _BY_CODE.get(code, AttributionError)(code, message)
