# SPDX-License-Identifier: Apache-2.0
"""The Python client against a fake server on loopback that sends malformed answers (as
tests/client/attribution_client_test.cc does for the C++ client): a response whose shapes break what the
results' methods and renderers index by raises DataLoss naming the field, on unary, streamed and asyncio
calls; enum values this client does not know (a newer server's) read as their numbers; a log_prob no
correct server sends does not make to_dataframe raise."""
from __future__ import annotations

import asyncio
import math
import re
from concurrent import futures
from typing import Callable, Dict

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import attribution_client as ac
from attribution_client._generated.attribution.v1 import attribution_pb2 as pb
from attribution_client._generated.attribution.v1 import attribution_pb2_grpc as pb_grpc


def _tokens(*texts: str):
    return [pb.Token(id=i, text=t) for i, t in enumerate(texts)]


def well_formed_attribution() -> pb.AttributeResponse:
    """3 prompt tokens, 2 target tokens, features [0, 1) and [1, 3), a [2 targets, 2 features] matrix."""
    r = pb.AttributeResponse(model="fake", method=pb.INTEGRATED_GRADIENTS, prompt_tokens=_tokens("a", "b", "c"),
                             target_tokens=_tokens("x", "y"), sequence_attribution=[0.5, -0.25])
    r.features.add(token_begin=0, token_end=1, text="a")
    r.features.add(token_begin=1, token_end=3, text="bc")
    r.token_matrix.add(values=[1, 2])
    r.token_matrix.add(values=[3, 4])
    r.faithfulness.percents.extend([0, 50, 100])
    r.faithfulness.features_at.extend([0, 1, 2])
    r.faithfulness.deletion.extend([1, 0.5, 0])
    r.faithfulness.insertion.extend([0, 0.5, 1])
    return r


def well_formed_components() -> pb.AttributeComponentsResponse:
    grid = pb.ComponentGrid(site=pb.ATTENTION_HEADS, granularity=pb.LAYER_HEAD, axes=["layer", "head"], shape=[2, 3],
                            values=[1, 2, 3, 4, 5, 6])
    r = pb.AttributeComponentsResponse(model="fake", method=pb.ACTIVATION_PATCHING, grids=[grid])
    r.pairs.add(grids=[grid], clean_tokens=_tokens("a", "b"), corrupted_tokens=_tokens("a", "c"))
    return r


class FakeService(pb_grpc.AttributionServiceServicer, health_pb2_grpc.HealthServicer):
    """Answers every call with the response the test set (the well-formed ones by default); a model it does
    not list is NOT_FOUND, as the real server answers it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.attribution = well_formed_attribution()
        self.components = well_formed_components()
        self.logprobs = pb.LogprobsResponse(target=[pb.TokenLogprob(token=pb.Token(id=1, text="x", log_prob=-0.5))])
        self.models = pb.ListModelsResponse(models=[pb.ModelInfo(name="fake")])
        self.health_status = health_pb2.HealthCheckResponse.SERVING

    def _check_model(self, request, context) -> None:
        if request.model not in [m.name for m in self.models.models]:
            context.abort(grpc.StatusCode.NOT_FOUND, f'model: no model named "{request.model}"')

    def Attribute(self, request, context):
        self._check_model(request, context)
        return self.attribution

    def AttributeStream(self, request, context):
        self._check_model(request, context)
        yield pb.AttributeEvent(progress=pb.AttributeEvent.Progress(rows_done=1, rows_total=1))
        yield pb.AttributeEvent(result=self.attribution)

    def AttributeComponents(self, request, context):
        self._check_model(request, context)
        return self.components

    def Logprobs(self, request, context):
        self._check_model(request, context)
        return self.logprobs

    def ListModels(self, request, context):
        return self.models

    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=self.health_status)


@pytest.fixture(scope="module")
def fake():
    service = FakeService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AttributionServiceServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.address = f"127.0.0.1:{port}"
    yield service
    server.stop(0)


@pytest.fixture
def client(fake):
    fake.reset()
    with ac.AttributionClient(fake.address, max_attempts=1, timeout=30) as c:
        yield c


def _set(field: str, values) -> Callable[[pb.AttributeResponse], None]:
    def mutate(r):
        del getattr(r, field)[:]
        getattr(r, field).extend(values)
    return mutate


def _add_row(values) -> Callable[[pb.AttributeResponse], None]:
    return lambda r: r.token_matrix.add(values=values)


def _feature(index: int, begin: int, end: int) -> Callable[[pb.AttributeResponse], None]:
    def mutate(r):
        r.features[index].token_begin, r.features[index].token_end = begin, end
    return mutate


def _drop_row(r):
    del r.token_matrix[1]


def _ragged(r):
    del r.token_matrix[1].values[-1]


def _long_rows(r):
    for row in r.token_matrix:
        row.values.append(9)


# Attribute answers the results would index out of bounds, raise numpy / pandas errors on, or silently
# shorten: (mutation of the well-formed answer, the message DataLoss must carry).
MALFORMED_ATTRIBUTIONS: Dict[str, tuple] = {
    "ragged_matrix": (_ragged, r"AttributeResponse\.token_matrix: row 1 has 1 values, expected 2 \(one per feature\)"),
    "matrix_rows_longer_than_features": (_long_rows, r"token_matrix: row 0 has 3 values, expected 2"),
    "too_few_matrix_rows": (_drop_row, r"token_matrix: 1 rows, expected 2 \(one per target token\)"),
    "too_many_matrix_rows": (_add_row([5, 6]), r"token_matrix: 3 rows, expected 2"),
    "short_sequence": (_set("sequence_attribution", [0.5]),
                       r"AttributeResponse\.sequence_attribution: 1 values, expected 2 \(one per feature\)"),
    "long_sequence": (_set("sequence_attribution", [1, 2, 3]), r"sequence_attribution: 3 values, expected 2"),
    "feature_past_the_prompt": (_feature(1, 1, 4), r"features\[1\]: tokens \[1, 4\) are not a non-empty span of the 3"),
    "empty_feature": (_feature(0, 1, 1), r"features\[0\]: tokens \[1, 1\) are not a non-empty span"),
    "negative_feature": (_feature(0, -1, 1), r"features\[0\]: tokens \[-1, 1\)"),
    "overlapping_features": (_feature(1, 0, 3), r"features\[1\]: starts at token 0, before the previous feature ends"),
    "fixed_token_outside_the_prompt": (_set("fixed_tokens", [0, 3]),
                                       r"fixed_tokens\[1\]: token 3 is outside the 3 prompt tokens"),
    "short_deletion_curve": (lambda r: r.faithfulness.deletion.pop(),
                             r"faithfulness\.deletion: 2 values, expected 3 \(one per percent\)"),
    "features_at_past_the_features": (lambda r: r.faithfulness.features_at.__setitem__(2, 3),
                                      r"faithfulness\.features_at\[2\]: 3 features, outside \[0, 2\]"),
}


@pytest.mark.parametrize("case", list(MALFORMED_ATTRIBUTIONS))
def test_a_malformed_attribution_is_data_loss_naming_the_field(fake, client, case):
    mutate, message = MALFORMED_ATTRIBUTIONS[case]
    mutate(fake.attribution)
    with pytest.raises(ac.DataLoss, match=message) as error:
        client.attribute(prompt="a b c", target=" x", model="fake")
    assert error.value.code == grpc.StatusCode.DATA_LOSS
    with pytest.raises(ac.DataLoss, match=message):
        client.attribute_stream(prompt="a b c", target=" x", model="fake").result()

    async def run():
        async with ac.AsyncAttributionClient(fake.address, max_attempts=1, timeout=30) as c:
            await c.attribute(prompt="a b c", target=" x", model="fake")

    with pytest.raises(ac.DataLoss, match=message):
        asyncio.run(run())


def _grid(**fields) -> Callable[[pb.AttributeComponentsResponse], None]:
    def mutate(r):
        for name, values in fields.items():
            del getattr(r.grids[0], name)[:]
            getattr(r.grids[0], name).extend(values)
    return mutate


def _pair_grid_values(r):
    r.pairs[0].grids[0].values.append(7)


def _short_corrupted(r):
    del r.pairs[0].corrupted_tokens[-1]


MALFORMED_COMPONENTS: Dict[str, tuple] = {
    "unknown_axes": (_grid(axes=["layer", "neuron"]),
                     r"grids\[0\]\.axes: \[layer, neuron\] is not \[layer, head\], \[layer, position\] or"),
    "no_axes": (_grid(axes=[]), r"grids\[0\]\.axes: \[\] is not"),
    "shape_without_an_axis": (_grid(shape=[2, 3, 1]), r"grids\[0\]\.shape: 3 sizes, expected 2 \(one per axis\)"),
    "negative_shape": (_grid(shape=[-2, -3]), r"grids\[0\]\.shape\[0\]: -2 < 1"),
    # A 0 beside 2^30: a product of 0 that no values matched, and to_dataframe() ran out of memory.
    "empty_axis": (_grid(shape=[2**30, 0], values=[], convergence_deltas=[]), r"grids\[0\]\.shape\[1\]: 0 < 1"),
    "values_not_the_product": (_grid(values=[1, 2, 3, 4]),
                               r"grids\[0\]\.values: 4 values, expected the product of shape \[2, 3\] = 6"),
    "huge_shape": (_grid(shape=[2**31, 2**31]), r"grids\[0\]\.values: 6 values, expected the product"),
    "convergence_deltas_not_per_value": (_grid(convergence_deltas=[0.1]),
                                         r"grids\[0\]\.convergence_deltas: 1 values, expected 0 or 6"),
    "pair_grid": (_pair_grid_values, r"pairs\[0\]\.grids\[0\]\.values: 7 values"),
    "pair_tokens": (_short_corrupted,
                    r"pairs\[0\]\.corrupted_tokens: 1 tokens, expected 2 \(as many as clean_tokens\)"),
}


@pytest.mark.parametrize("case", list(MALFORMED_COMPONENTS))
def test_a_malformed_component_grid_is_data_loss_naming_the_field(fake, client, case):
    mutate, message = MALFORMED_COMPONENTS[case]
    mutate(fake.components)
    with pytest.raises(ac.DataLoss, match=r"^DATA_LOSS: AttributeComponentsResponse\." + message):
        client.attribute_components(pairs=[("a b", "a c")], answer=1, wrong_answer=2, model="fake")


def test_malformed_logprobs_and_model_lists_are_data_loss(fake, client):
    fake.logprobs.target.add().top.add(id=3, text="z", log_prob=-1)
    with pytest.raises(ac.DataLoss, match=r"LogprobsResponse\.target\[1\]\.token: missing"):
        client.logprobs(prompt="a", target=" x", model="fake")
    fake.models.models.add(name="fake")
    with pytest.raises(ac.DataLoss, match=r'ListModelsResponse\.models\[1\]\.name: "fake" names an earlier model'):
        client.list_models()
    del fake.models.models[:]
    fake.models.models.add(name="")
    with pytest.raises(ac.DataLoss, match=r"ListModelsResponse\.models\[0\]\.name: empty"):
        client.list_models()


def test_well_formed_answers_convert_and_render(fake, client):
    a = client.attribute(prompt="a b c", target=" x", model="fake")
    assert a.method == "integrated_gradients" and a.to_dataframe().shape == (2, 6)
    assert "<table" in a._repr_html_()
    np.testing.assert_array_equal(a.token_matrix, [[1, 2], [3, 4]])
    components = client.attribute_components(pairs=[("a b", "a c")], answer=1, wrong_answer=2, model="fake")
    assert components.grid("heads").to_dataframe().shape == (2, 3)
    assert [m.name for m in client.list_models()] == ["fake"]


def test_a_first_model_the_server_no_longer_holds_is_asked_for_again(fake, client):
    # A call that names no model gets the server's first, which the client kept for its whole life: once the
    # server behind the address held other models (a restart), every such call was NOT_FOUND.
    assert client.logprobs(prompt="a", target=" x").target
    fake.models = pb.ListModelsResponse(models=[pb.ModelInfo(name="renamed")])
    assert client.logprobs(prompt="a", target=" x").target
    fake.models = pb.ListModelsResponse(models=[pb.ModelInfo(name="streamed")])
    assert client.attribute_stream(prompt="a", target=" x").result().sequence.size == 2
    with pytest.raises(ac.NotFound, match='no model named "gone"'):  # a model the caller named is not replaced
        client.logprobs(prompt="a", target=" x", model="gone")

    async def run() -> None:
        async with ac.AsyncAttributionClient(fake.address, max_attempts=1, timeout=30) as c:
            assert (await c.logprobs(prompt="a", target=" x")).target
            fake.models = pb.ListModelsResponse(models=[pb.ModelInfo(name="async")])
            assert (await c.logprobs(prompt="a", target=" x")).target
            fake.models = pb.ListModelsResponse(models=[pb.ModelInfo(name="async stream")])
            assert (await c.attribute_stream(prompt="a", target=" x").result()).sequence.size == 2
    asyncio.run(run())


def _cell_colours(fragment: str) -> list:
    return re.findall(r"background:(rgba\([^)]*\))", fragment)


def test_the_heatmap_scales_by_finite_values_and_greys_nan_and_inf(fake, client):
    """One NaN drew every cell at full strength (the NaN red, as if strongly negative); one inf blanked the
    finite ones. The C++ renderers grey them and scale by the largest finite |value|."""
    fake.attribution.ClearField("token_matrix")
    fake.attribution.sequence_attribution[:] = [0.5, float("nan")]
    shown = _cell_colours(client.attribute(prompt="a b c", target=" x", model="fake")._repr_html_())
    assert shown == ["rgba(71,114,179,0.850)", "rgba(128,128,128,0.35)"]
    fake.attribution.sequence_attribution[:] = [-0.25, float("inf")]
    shown = _cell_colours(client.attribute(prompt="a b c", target=" x", model="fake")._repr_html_())
    assert shown == ["rgba(208,54,91,0.850)", "rgba(128,128,128,0.35)"]


def test_enum_values_this_client_does_not_know_read_as_numbers(fake, client):
    """A newer server's component method, site or serving status: the answer is kept, as the C++ client's NameOf
    keeps it."""
    fake.components.method = 98
    fake.components.grids[0].site = 97
    fake.health_status = 42
    components = client.attribute_components(pairs=[("a b", "a c")], answer=1, wrong_answer=2, model="fake")
    assert components.method == "98" and components.grids[0].site == "97"
    assert client.health() == "42"

    async def run():
        async with ac.AsyncAttributionClient(fake.address, max_attempts=1, timeout=30) as c:
            return await c.health()

    assert asyncio.run(run()) == "42"


def test_answers_that_do_not_answer_the_request_are_data_loss(fake, client):
    """A server answering another method, other target ids than given, or a log-probability above 0 (which no
    model computes): a data-set job recorded such answers as ok (round 19's crafted server)."""
    fake.attribution.method = 99  # a newer server's method: this client cannot have asked for it
    with pytest.raises(ac.DataLoss, match=r"AttributeResponse\.method: 99, asked for INTEGRATED_GRADIENTS"):
        client.attribute(prompt="a b c", target=" x", model="fake")
    with pytest.raises(ac.DataLoss, match=r"AttributeResponse\.method: 99"):
        client.attribute_stream(prompt="a b c", target=" x", model="fake").result()
    fake.reset()
    with pytest.raises(ac.DataLoss, match=r"AttributeResponse\.target_tokens: ids \[0, 1\], asked for \[5\]"):
        client.attribute(prompt="a b c", target=[5], model="fake")
    fake.attribution.target_tokens[0].log_prob = 5
    with pytest.raises(ac.DataLoss, match=r"AttributeResponse\.target_tokens\[0\]\.log_prob = 5"):
        client.attribute(prompt="a b c", target=" x", model="fake")
    fake.attribution.target_tokens[0].log_prob = float("nan")  # a model with non-finite weights computes it
    assert math.isnan(client.attribute(prompt="a b c", target=" x", model="fake").target_tokens[0].log_prob)
    fake.logprobs.target[0].token.log_prob = 1e6
    with pytest.raises(ac.DataLoss, match=r"LogprobsResponse\.target\[0\]\.token\.log_prob = 1000000\.0"):
        client.logprobs(prompt="a", target=" x", model="fake")
    fake.reset()
    fake.logprobs.target[0].top.add(id=3, text="z", log_prob=-1)
    with pytest.raises(ac.DataLoss, match=r"LogprobsResponse\.target\[0\]\.top: 1 alternatives, asked for top_k = 0"):
        client.logprobs(prompt="a", target=" x", model="fake")
    assert client.logprobs(prompt="a", target=" x", model="fake", top_k=1).target[0].top[0].id == 3
    with pytest.raises(ac.DataLoss, match=r"LogprobsResponse\.target: ids \[1\], asked for \[1, 2\]"):
        client.logprobs(prompt="a", target=[1, 2], model="fake", top_k=1)

    async def run():
        async with ac.AsyncAttributionClient(fake.address, max_attempts=1, timeout=30) as c:
            await c.logprobs(prompt="a", target=[1, 2], model="fake", top_k=1)

    with pytest.raises(ac.DataLoss, match=r"LogprobsResponse\.target: ids \[1\], asked for \[1, 2\]"):
        asyncio.run(run())


class RawBytes(grpc.GenericRpcHandler):
    """Answers Generate, GenerateStream and ListModels with the bytes it holds, as a buggy server might send
    them."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def service(self, details):
        raw = {"request_deserializer": lambda b: b, "response_serializer": lambda b: b}
        if details.method == "/attribution.v1.AttributionService/GenerateStream":
            return grpc.unary_stream_rpc_method_handler(lambda request, context: iter([self.answer]), **raw)
        if details.method in ("/attribution.v1.AttributionService/Generate",
                              "/attribution.v1.AttributionService/ListModels"):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: self.answer, **raw)
        return None


def test_an_answer_that_does_not_parse_is_data_loss_naming_the_rpc():
    """An answer whose field 1 is not UTF-8 (a string in GenerateResponse and ListModels' ModelInfo, a message
    in GenerateEvent): grpcio's INTERNAL "Exception deserializing response!" is DataLoss naming the RPC, as
    the C++ client's DATA_LOSS, not a failure inside the server. grpc.aio logs it and hands back None, which
    raised AttributeError from the asyncio client's conversions."""
    model = b"a\xffb"
    answer = bytes([0x0A, len(model)]) + model
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((RawBytes(answer),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service = "/attribution.v1.AttributionService/"
    try:
        with ac.AttributionClient(f"127.0.0.1:{port}", max_attempts=1, timeout=30) as c:
            with pytest.raises(ac.DataLoss, match=f"the answer to {service}Generate does not parse"):
                c.generate(prompt="x", model="fake")
            with pytest.raises(ac.DataLoss, match=f"the answer to {service}GenerateStream does not parse"):
                list(c.generate_stream(prompt="x", model="fake"))

        async def run() -> None:
            async with ac.AsyncAttributionClient(f"127.0.0.1:{port}", max_attempts=1, timeout=30) as c:
                with pytest.raises(ac.DataLoss, match=f"the answer to {service}Generate does not parse"):
                    await c.generate(prompt="x", model="fake")
                with pytest.raises(ac.DataLoss, match=f"the answer to {service}ListModels does not parse"):
                    await c.list_models()
                with pytest.raises(ac.DataLoss, match=f"the answer to {service}GenerateStream does not parse"):
                    async for _ in c.generate_stream(prompt="x", model="fake"):
                        pass
        asyncio.run(run())
    finally:
        server.stop(grace=None)
