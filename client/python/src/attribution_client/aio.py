# SPDX-License-Identifier: Apache-2.0
"""The asyncio client: the same calls as AttributionClient, awaitable, on grpc.aio.

    async with AsyncAttributionClient("localhost:50051") as client:
        stream = client.attribute_stream(prompt="...", target=" Yes")
        async for p in stream:
            print(p.rows_done, p.rows_total)
        a = await stream.result()
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, Generic, List, Optional, TypeVar, Union

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _calls, _channel, _convert
from ._generated.attribution.v1 import attribution_pb2 as pb
from ._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc
from .errors import AttributionError, NotFound, error_for, from_grpc, rpc_name, unparsable_answer
from .options import AttributeOptions, ClientOptions, ComponentOptions, GenerateOptions, LogprobsOptions, TextOrIds
from .results import Attribution, ComponentAttribution, Generation, Logprobs, ModelInfo, Progress, Token

Item = TypeVar("Item")
Result = TypeVar("Result")
ProgressCallback = Callable[[Progress], Union[None, Awaitable[None]]]  # a plain or an async def function


def _task_cancelled() -> bool:
    """Whether the running task was asked to stop (task.cancel()): its CancelledError must go on as it is.
    Python 3.10 has no Task.cancelling() and cannot tell: False there, so a task cancelled while its client
    closes raises Cancelled instead."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


def _cancelled_by_client(cancelled: bool, closed: bool) -> Optional[AttributionError]:
    """Cancelled for a call's asyncio.CancelledError that this client caused (the stream's cancel(), or
    close() with the call in flight: grpc.aio ends those calls with CancelledError); None for the task's own
    cancellation, which propagates."""
    if _task_cancelled():
        return None
    if cancelled:
        return error_for(grpc.StatusCode.CANCELLED, "cancelled by the client")
    if closed:
        return error_for(grpc.StatusCode.CANCELLED, "the client was closed during the call")
    return None


class AsyncStream(Generic[Item, Result]):
    """A server-streaming call: `async for` its events, then `await result()`; cancel() ends it (the
    iteration then raises Cancelled). The call starts with the first event asked for (choosing the
    server's first model needs a call of its own); `await`ing the stream starts it and gives it back,
    as the stream methods' coroutines did before. A stream left unfinished ends its call when it is
    collected; `async with stream:` (or aclose()) ends it at once."""

    def __init__(self, start: Callable[[], Awaitable[Any]], convert: Callable[[Any], Union[Item, Result]],
                 result_type: type, closed: Callable[[], bool] = lambda: False, rpc: str = "",
                 reopen: Optional[Callable[[], Awaitable[Any]]] = None) -> None:
        self._start = start
        # For a NOT_FOUND before the first event: the call made again (None: the error stands).
        self._reopen = reopen
        self._rpc = rpc
        self._starting: Optional[asyncio.Future] = None  # one start, however many tasks wait for it
        self._call: Any = None
        self._convert = convert
        self._result_type = result_type
        self._result: Optional[Result] = None
        self._cancelled = False
        self._closed = closed  # whether the client that made the call is closed
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # the loop the call runs in, once started

    async def _started(self) -> Any:
        if self._call is None:
            if self._cancelled:
                raise error_for(grpc.StatusCode.CANCELLED, "the call was cancelled")
            if self._starting is None:
                self._loop = asyncio.get_running_loop()
                self._starting = asyncio.ensure_future(self._start())
            call = await asyncio.shield(self._starting)
            if self._call is None:
                self._call = call
                if self._cancelled:  # cancel() came while the call was starting
                    call.cancel()
        return self._call

    def __await__(self) -> Generator[Any, None, "AsyncStream[Item, Result]"]:
        async def started() -> "AsyncStream[Item, Result]":
            await self._started()
            return self
        return started().__await__()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        call = await self._started()
        while True:
            try:
                event = await call.read()
            except grpc.RpcError as e:
                reopened = await self._reopened_after(e)
                if reopened is None:
                    raise from_grpc(e, self._rpc) from None
                call = reopened
                continue
            except asyncio.CancelledError:
                error = _cancelled_by_client(self._cancelled, self._closed())
                if error is not None:
                    raise error from None
                raise
            if event is None:  # grpc.aio logs an answer it cannot parse and hands back None
                call.cancel()  # the server would go on computing what no one reads
                raise unparsable_answer(self._rpc)
            if event is grpc.aio.EOF:
                if self._result is None:
                    raise error_for(grpc.StatusCode.DATA_LOSS, "the stream ended without a result")
                raise StopAsyncIteration
            self._reopen = None
            item = self._convert(event)
            if isinstance(item, self._result_type):
                self._result = item  # type: ignore[assignment]
                continue
            return item  # type: ignore[return-value]

    async def _reopened_after(self, error: grpc.RpcError) -> Any:
        if self._reopen is None or error.code() != grpc.StatusCode.NOT_FOUND:
            return None
        reopen, self._reopen = self._reopen, None
        call = await reopen()
        if call is not None:
            self._call = call  # before the check: a cancel() from now on reaches the new call
            if self._cancelled:  # cancel() came while the call was made again
                call.cancel()
        return call

    async def result(self) -> Result:
        async for _ in self:
            pass
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
        elif self._starting is not None:
            # The start may finish for nobody (its task cancelled while awaiting it: the call ran on the server
            # to its end): the call is cancelled once it exists.
            self._starting.add_done_callback(_cancel_started_call)
        # else _started() cancels it once it exists

    async def aclose(self) -> None:
        """Ends the call if it is still open (for `async with stream:` and contextlib.aclosing)."""
        if self._call is None or not self._call.done():
            self.cancel()

    async def __aenter__(self) -> "AsyncStream[Item, Result]":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A stream left unfinished (an `async for` that returned at its first event, a started stream never
        # read): grpc.aio keeps its call open until the channel closes, the server computing the whole request
        # for no one and the call holding one of its max_concurrent_requests slots. The collector may run this on
        # any thread: the cancel goes to the call's loop.
        loop = self.__dict__.get("_loop")
        if loop is None or loop.is_closed():  # never started, or its loop is gone and its calls with it
            return
        try:
            loop.call_soon_threadsafe(_cancel_left_call, self._call, self._starting)
        except RuntimeError:  # the loop closed meanwhile
            pass


def _cancel_started_call(starting: "asyncio.Future[Any]") -> None:
    if not starting.cancelled() and starting.exception() is None:
        starting.result().cancel()


def _cancel_left_call(call: Any, starting: "Optional[asyncio.Future[Any]]") -> None:
    if call is not None:
        call.cancel()  # a no-op for a call already done
    elif starting is not None:
        # Started for a task cancelled while it waited: the call exists once the start is done.
        starting.add_done_callback(_cancel_started_call)  # runs at once when it is done already


def _check_progress(progress: Any) -> None:
    if not callable(progress):
        raise TypeError(f"progress: must be a function called with each Progress (plain or async def), not "
                        f"{progress!r} (the sync client's progress=True draws a bar)")


async def _with_progress(stream: AsyncStream[Progress, Result], progress: ProgressCallback) -> Result:
    """The stream's result, calling `progress` with each Progress. Whatever leaves early (the callback's
    exception, the task's cancellation) cancels the call at once: a kept traceback (a notebook's
    sys.last_traceback) keeps the stream, which would end it only once collected."""
    try:
        async for p in stream:
            called = progress(p)
            if inspect.isawaitable(called):  # an async def callback
                await called
        return await stream.result()
    except BaseException:
        stream.cancel()
        raise


class AsyncAttributionClient:
    """AttributionClient's asyncio twin; create it inside the event loop that will use it."""

    def __init__(self, target: Union[str, ClientOptions, None] = None, **options: Any) -> None:
        self.options = _calls.client_options(target, options)
        credentials = _channel.credentials(self.options)
        args = _channel.channel_args(self.options)
        self._channel = (grpc.aio.secure_channel(self.options.target, credentials, args) if credentials
                         else grpc.aio.insecure_channel(self.options.target, args))
        self._stub = pb_grpc.AttributionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = _channel.metadata(self.options)
        self._default_model: Optional[str] = None
        self._closed = False  # close() was called: calls in flight end as Cancelled, new ones are refused

    async def close(self) -> None:
        """Closes the channel: calls in flight raise Cancelled, and so does any call made afterwards."""
        self._closed = True
        await self._channel.close()

    def _check_open(self) -> None:
        if self._closed:  # grpc.aio would raise its UsageError
            raise error_for(grpc.StatusCode.CANCELLED, "the client is closed")
        # grpc.aio's channel belongs to the loop it was made in; elsewhere its calls fail deep inside grpc
        # ("attached to a different loop", "Event loop is closed").
        made_in = getattr(self._channel, "_loop", None)
        if made_in is not None and made_in is not asyncio.get_running_loop():
            raise RuntimeError("AsyncAttributionClient: made in another event loop than the one calling it; create "
                               "the client inside the loop that uses it (async with AsyncAttributionClient(...))")

    def _stream(self, method: Any, options: Any, to_request: Callable[[Any], Any], timeout: Any,
                convert: Callable[[Any, Any], Any], result_type: type) -> AsyncStream:
        """A stream whose request is built now (bad options raise here) and sent on first use, once the
        model is known (a closed client raises Cancelled then, as its other calls do when awaited)."""
        request = to_request(options)
        model_defaulted = not options.model

        def call() -> Any:
            self._check_open()
            request.model = options.model
            return method(request, timeout=_calls.timeout(timeout, self.options.timeout),
                          metadata=_channel.with_request_id(self._metadata, options.request_id))

        async def start() -> Any:
            self._check_open()
            await self._model(options, timeout)
            return call()

        async def reopen() -> Any:
            return call() if await self._first_model_changed(options, timeout) else None
        return AsyncStream(start, lambda event: convert(event, request), result_type, lambda: self._closed,
                           rpc_name(method), reopen if model_defaulted else None)

    async def __aenter__(self) -> "AsyncAttributionClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _answer(self, method: Any, request: Any, timeout: Any, request_id: str,
                      convert: Callable[[Any, Any], Any]) -> Any:
        """The call's response as a result that answers `request` (DataLoss otherwise)."""
        return convert(await self._unary(method, request, timeout, request_id), request)

    async def _unary(self, method: Any, request: Any, timeout: Any, request_id: str = "") -> Any:
        self._check_open()
        try:
            response = await method(request, timeout=_calls.timeout(timeout, self.options.timeout),
                                    metadata=_channel.with_request_id(self._metadata, request_id))
        except grpc.RpcError as e:
            raise from_grpc(e, rpc_name(method)) from None
        except asyncio.CancelledError:
            error = _cancelled_by_client(False, self._closed)
            if error is not None:
                raise error from None
            raise
        if response is None:  # grpc.aio logs an answer it cannot parse and hands back None, status OK
            raise unparsable_answer(rpc_name(method))
        return response

    async def _model(self, options: Any, timeout: Any) -> Any:
        if not options.model:
            if self._default_model is None:
                models = await self.list_models(timeout=timeout)
                if not models:
                    raise error_for(grpc.StatusCode.NOT_FOUND, "the server holds no model")
                self._default_model = models[0].name
            options.model = self._default_model
        return options

    async def _first_model_changed(self, options: Any, timeout: Any) -> bool:
        """As AttributionClient._first_model_changed."""
        stale = options.model
        self._default_model = None
        options.model = ""
        return (await self._model(options, timeout)).model != stale

    async def _unary_with_model(self, options: Any, timeout: Any, call: Callable[[Any], Awaitable[Result]]) -> Result:
        """As AttributionClient._unary_with_model."""
        if options.model:
            return await call(options)
        await self._model(options, timeout)
        try:
            return await call(options)
        except NotFound:
            if not await self._first_model_changed(options, timeout):
                raise
        return await call(options)

    async def attribute(self, options: Union[AttributeOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                        progress: Optional[ProgressCallback] = None, **fields: Any) -> Attribution:
        """As AttributionClient.attribute; `progress`, when given, is called with each Progress."""
        o = _calls.build(AttributeOptions, options, fields)
        if progress is not None:
            _check_progress(progress)
            return await _with_progress(self.attribute_stream(o, timeout=timeout), progress)

        return await self._unary_with_model(o, timeout, lambda o: self._answer(
            self._stub.Attribute, _convert.attribute_request(o), timeout, o.request_id, _convert.attribution))

    def attribute_stream(self, options: Union[AttributeOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                         **fields: Any) -> AsyncStream[Progress, Attribution]:
        """`async for` its Progress, then `await result()`."""
        return self._stream(self._stub.AttributeStream, _calls.build(AttributeOptions, options, fields),
                            _convert.attribute_request, timeout, _calls.attribute_event, Attribution)

    async def attribute_components(self, options: Optional[ComponentOptions] = None, *,
                                   timeout: Any = _calls.DEFAULT, progress: Optional[ProgressCallback] = None,
                                   **fields: Any) -> ComponentAttribution:
        """As AttributionClient.attribute_components; `progress`, when given, is called with each Progress."""
        o = _calls.build(ComponentOptions, options, fields)
        if progress is not None:
            _check_progress(progress)
            return await _with_progress(self.attribute_components_stream(o, timeout=timeout), progress)

        async def attribute_components(o: ComponentOptions) -> ComponentAttribution:
            return _convert.component_attribution(await self._unary(
                self._stub.AttributeComponents, _convert.component_request(o), timeout, o.request_id))
        return await self._unary_with_model(o, timeout, attribute_components)

    def attribute_components_stream(self, options: Optional[ComponentOptions] = None, *,
                                    timeout: Any = _calls.DEFAULT,
                                    **fields: Any) -> AsyncStream[Progress, ComponentAttribution]:
        """`async for` its Progress, then `await result()`."""
        return self._stream(self._stub.AttributeComponentsStream, _calls.build(ComponentOptions, options, fields),
                            _convert.component_request, timeout, _calls.component_event, ComponentAttribution)

    async def generate(self, options: Union[GenerateOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                       **fields: Any) -> Generation:
        o = _calls.build(GenerateOptions, options, fields)
        return await self._unary_with_model(o, timeout, lambda o: self._answer(
            self._stub.Generate, _convert.generate_request(o), timeout, o.request_id, _convert.generation))

    def generate_stream(self, options: Union[GenerateOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                        **fields: Any) -> AsyncStream[Token, Generation]:
        """`async for` its Tokens as they come, then `await result()`."""
        return self._stream(self._stub.GenerateStream, _calls.build(GenerateOptions, options, fields),
                            _convert.generate_request, timeout, _calls.generate_event, Generation)

    async def logprobs(self, options: Union[LogprobsOptions, TextOrIds] = None, *, timeout: Any = _calls.DEFAULT,
                       **fields: Any) -> Logprobs:
        o = _calls.build(LogprobsOptions, options, fields)
        return await self._unary_with_model(o, timeout, lambda o: self._answer(
            self._stub.Logprobs, _convert.logprobs_request(o), timeout, o.request_id, _convert.logprobs))

    async def list_models(self, *, timeout: Any = _calls.DEFAULT) -> List[ModelInfo]:
        return _convert.models(await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def health(self, service: str = "", *, timeout: Any = _calls.DEFAULT) -> str:
        response = await self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return _convert.enum_name(health_pb2.HealthCheckResponse.ServingStatus, response.status)
