# SPDX-License-Identifier: Apache-2.0
"""The synchronous client: every RPC of attribution.v1 plus the standard health check.

    client = AttributionClient("localhost:50051")
    a = client.attribute(prompt="Q: Is the kettle warm? A:", target=" Yes", method="feature_ablation")
    a.to_dataframe()

Thread-safe (one gRPC channel shared by every call). Failed calls raise AttributionError subclasses
(errors.py); deadlines come from ClientOptions.timeout or a call's `timeout=`.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, List, Optional, TypeVar, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _calls, _channel, _convert
from ._generated.attribution.v1 import attribution_pb2 as pb
from ._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc
from .errors import AttributionError, NotFound, error_for, from_grpc, rpc_name
from .options import AttributeOptions, ClientOptions, ComponentOptions, GenerateOptions, LogprobsOptions, TextOrIds
from .results import Attribution, ComponentAttribution, Generation, Logprobs, ModelInfo, Progress, Token

Item = TypeVar("Item")
Result = TypeVar("Result")
ProgressArg = Union[bool, Callable[[Progress], None]]


class Stream(Generic[Item, Result]):
    """A server-streaming call: iterate for its events (Progress / Token), then result(); cancel()
    from any thread ends it (the iteration then raises Cancelled)."""

    def __init__(self, call: Any, convert: Callable[[Any], Union[Item, Result]], result_type: type,
                 rpc: str = "", reopen: Optional[Callable[[], Any]] = None) -> None:
        self._call = call
        self._rpc = rpc
        self._convert = convert
        self._result_type = result_type
        self._result: Optional[Result] = None
        # For a NOT_FOUND before the first event: the call made again (None: the error stands).
        self._reopen = reopen
        self._cancelled = False

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        while True:
            try:
                event = next(self._call)
            except StopIteration:
                if self._result is None:
                    raise error_for(grpc.StatusCode.DATA_LOSS, "the stream ended without a result") from None
                raise
            except grpc.RpcError as e:
                reopened = self._reopened_after(e)
                if reopened is None:
                    raise from_grpc(e, self._rpc) from None
                continue
            self._reopen = None
            item = self._convert(event)
            if isinstance(item, self._result_type):
                self._result = item  # type: ignore[assignment]
                continue
            return item  # type: ignore[return-value]

    def result(self) -> Result:
        """Reads the stream to its end and returns the final answer."""
        for _ in self:
            pass
        assert self._result is not None
        return self._result

    def _reopened_after(self, error: grpc.RpcError) -> Any:
        if self._reopen is None or error.code() != grpc.StatusCode.NOT_FOUND:
            return None
        reopen, self._reopen = self._reopen, None
        call = reopen()
        if call is not None:
            self._call = call  # before the check: a cancel() from now on reaches the new call
            if self._cancelled:  # cancel() came while the call was made again
                call.cancel()
        return call

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "Stream[Item, Result]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._call.cancel()  # no-op once finished


AttributeStream = Stream[Progress, Attribution]
ComponentStream = Stream[Progress, ComponentAttribution]
GenerateStream = Stream[Token, Generation]


def _progress_bar(stream: "Stream[Progress, Result]", description: str) -> Result:
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # an optional dependency: pip install attribution-client[progress]
        raise ImportError("progress=True needs tqdm (pip install tqdm)") from e
    with tqdm(desc=description, unit="row") as bar:
        for p in stream:
            if p.rows_total and bar.total != p.rows_total:
                bar.total = p.rows_total
            bar.update(p.rows_done - bar.n)
        return stream.result()


def _with_progress(stream: "Stream[Progress, Result]", progress: ProgressArg, description: str) -> Result:
    """The stream's result, reporting its progress. Whatever leaves early (the callback's exception, Ctrl-C)
    cancels the call: gRPC ends it only once the stream is collected, and a kept traceback (a notebook's
    sys.last_traceback) keeps it, the server computing the whole request for no one."""
    with stream:
        if callable(progress):
            for p in stream:
                progress(p)
            return stream.result()
        return _progress_bar(stream, description)


class AttributionClient:
    """Calls one attribution server (or a balanced set of replicas). `target` is a ClientOptions or
    a gRPC target; keyword arguments set ClientOptions fields (tls=True, bearer_token=..., ...)."""

    def __init__(self, target: Union[str, ClientOptions, None] = None, **options: Any) -> None:
        self.options = _calls.client_options(target, options)
        credentials = _channel.credentials(self.options)
        args = _channel.channel_args(self.options)
        self._channel = (grpc.secure_channel(self.options.target, credentials, args) if credentials
                         else grpc.insecure_channel(self.options.target, args))
        self._stub = pb_grpc.AttributionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = _channel.metadata(self.options)
        self._default_model: Optional[str] = None
        self._closed = False  # close() was called: new calls are refused (gRPC would raise a bare ValueError)

    def close(self) -> None:
        """Closes the channel: calls in flight raise Cancelled, and so does any call made afterwards."""
        self._closed = True
        self._channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise error_for(grpc.StatusCode.CANCELLED, "the client is closed")

    def _stream(self, method: Any, options: Any, to_request: Callable[[Any], Any], timeout: Any,
                convert: Callable[[Any, Any], Any], result_type: type) -> Stream:
        self._check_open()
        model_defaulted = not options.model
        self._model(options, timeout)

        asked = [None]  # the request last sent, which the result must answer

        def call() -> Any:
            self._check_open()
            asked[0] = to_request(options)
            return method(asked[0], timeout=_calls.timeout(timeout, self.options.timeout),
                          metadata=_channel.with_request_id(self._metadata, options.request_id))

        def reopen() -> Any:
            return call() if self._first_model_changed(options, timeout) else None
        return Stream(call(), lambda event: convert(event, asked[0]), result_type, rpc_name(method),
                      reopen if model_defaulted else None)

    def __enter__(self) -> "AttributionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _answer(self, method: Any, request: Any, timeout: Any, request_id: str,
                convert: Callable[[Any, Any], Any]) -> Any:
        """The call's response as a result that answers `request` (DataLoss otherwise)."""
        return convert(self._unary(method, request, timeout, request_id), request)

    def _unary(self, method: Any, request: Any, timeout: Any, request_id: str = "") -> Any:
        self._check_open()
        try:
            return method(request, timeout=_calls.timeout(timeout, self.options.timeout),
                          metadata=_channel.with_request_id(self._metadata, request_id))
        except grpc.RpcError as e:
            raise from_grpc(e, rpc_name(method)) from None

    def _model(self, options: Any, timeout: Any) -> Any:
        """Fills an empty model with the server's first one (as the CLI does), asking for it within the call's
        `timeout` (with the client's own, a call's 2 s waited 120 s on a hung server)."""
        if not options.model:
            if self._default_model is None:
                models = self.list_models(timeout=timeout)
                if not models:
                    raise error_for(grpc.StatusCode.NOT_FOUND, "the server holds no model")
                self._default_model = models[0].name
            options.model = self._default_model
        return options

    def _first_model_changed(self, options: Any, timeout: Any) -> bool:
        """options.model, the server's first model as this client knew it, was NOT_FOUND: the server behind the
        address may hold other models since (a restart). Asks again, puts the first model now in `options` and
        says whether it is another one, worth making the call again with."""
        stale = options.model
        self._default_model = None
        options.model = ""
        return self._model(options, timeout).model != stale

    def _unary_with_model(self, options: Any, timeout: Any, call: Callable[[Any], Result]) -> Result:
        """call(options) with the model filled in; made once more, with the server's new first model, when
        the one this client chose is NOT_FOUND."""
        if options.model:
            return call(options)
        self._model(options, timeout)
        try:
            return call(options)
        except NotFound:
            if not self._first_model_changed(options, timeout):
                raise
        return call(options)

    def attribute(self, options: Union[AttributeOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                  progress: ProgressArg = False, **fields: Any) -> Attribution:
        """Attributes the target's scored quantity to the prompt's features. progress=True shows a
        tqdm bar (through AttributeStream); a callable gets each Progress. Whatever the progress raises
        (KeyboardInterrupt too) cancels the call on the server."""
        o = _calls.build(AttributeOptions, options, fields)
        if progress:
            return _with_progress(self.attribute_stream(o, timeout=timeout), progress, o.method)
        return self._unary_with_model(o, timeout, lambda o: self._answer(
            self._stub.Attribute, _convert.attribute_request(o), timeout, o.request_id, _convert.attribution))

    def attribute_stream(self, options: Union[AttributeOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                         **fields: Any) -> AttributeStream:
        """Iterate for Progress events (queued, then rows done / total), then call result()."""
        return self._stream(self._stub.AttributeStream, _calls.build(AttributeOptions, options, fields),
                            _convert.attribute_request, timeout, _calls.attribute_event, Attribution)

    def attribute_components(self, options: Optional[ComponentOptions] = None, *, timeout: Any = _calls.DEFAULT,
                             progress: ProgressArg = False, **fields: Any) -> ComponentAttribution:
        """Attributes the metric's change between clean and corrupted prompts to model components
        (attention heads, attention / MLP outputs, the residual stream) per layer. progress=True shows a
        tqdm bar (through ComponentStream); a callable gets each Progress. Whatever the progress raises
        (KeyboardInterrupt too) cancels the call on the server."""
        o = _calls.build(ComponentOptions, options, fields)
        if progress:
            return _with_progress(self.attribute_components_stream(o, timeout=timeout), progress, o.method)
        return self._unary_with_model(o, timeout, lambda o: _convert.component_attribution(
            self._unary(self._stub.AttributeComponents, _convert.component_request(o), timeout, o.request_id)))

    def attribute_components_stream(self, options: Optional[ComponentOptions] = None, *,
                                    timeout: Any = _calls.DEFAULT, **fields: Any) -> ComponentStream:
        """Iterate for Progress events (queued, then rows done / total), then call result()."""
        return self._stream(self._stub.AttributeComponentsStream, _calls.build(ComponentOptions, options, fields),
                            _convert.component_request, timeout, _calls.component_event, ComponentAttribution)

    def generate(self, options: Union[GenerateOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                 **fields: Any) -> Generation:
        return self._unary_with_model(_calls.build(GenerateOptions, options, fields), timeout, lambda o: self._answer(
            self._stub.Generate, _convert.generate_request(o), timeout, o.request_id, _convert.generation))

    def generate_stream(self, options: Union[GenerateOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                        **fields: Any) -> GenerateStream:
        """Iterate for each new Token (text and log_prob) as the server makes it, then result()."""
        return self._stream(self._stub.GenerateStream, _calls.build(GenerateOptions, options, fields),
                            _convert.generate_request, timeout, _calls.generate_event, Generation)

    def logprobs(self, options: Union[LogprobsOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                 **fields: Any) -> Logprobs:
        """Log-probabilities of the target's tokens after the prompt, with top_k alternatives."""
        return self._unary_with_model(_calls.build(LogprobsOptions, options, fields), timeout, lambda o: self._answer(
            self._stub.Logprobs, _convert.logprobs_request(o), timeout, o.request_id, _convert.logprobs))

    def list_models(self, *, timeout: Any = _calls.DEFAULT) -> List[ModelInfo]:
        return _convert.models(self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def health(self, service: str = "", *, timeout: Any = _calls.DEFAULT) -> str:
        """The standard health check: "SERVING", "NOT_SERVING", ... (service "" = the whole server); a
        status this client does not know reads as its number."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return _convert.enum_name(health_pb2.HealthCheckResponse.ServingStatus, response.status)


__all__ = ["AttributionClient", "AttributeStream", "ComponentStream", "GenerateStream", "Stream", "AttributionError"]
