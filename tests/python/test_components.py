# SPDX-License-Identifier: Apache-2.0
"""AttributeComponents through the Python package against the real server, equal to the C++ client's
answer (attribution-cli components --json, which uses client/attribution_client.h) on the same requests;
progress streams, errors, the asyncio client and the grids' numpy / pandas forms."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attribution_client as ac
from conftest import cli_json

CLEAN = "Tom lives in Dover. The cup is red. Q: Is the cup warm? A:"
CORRUPTED = "Tom lives in Dover. The cup is blue. Q: Is the cup warm? A:"
# Both clients' calls run on the same server, but in batches whose sizes depend on the server's load and
# learned batch costs (a loaded CI machine makes them time-limited), which changes fp32 summation order
# (its layer_integrated_gradients case differed by up to 5.5e-7 in a loaded run). The metric is a
# logit difference of order 1, hence the absolute floor.
CLOSE = dict(rtol=2e-5, atol=1e-6)
LAYERS, HEADS = 4, 8  # the default model (models/tiny-qa-llama)

METHODS = {
    "activation_patching": ({}, []),
    "attribution_patching": ({}, []),
    "attribution_patching_star": ({}, []),
    "layer_integrated_gradients": (dict(n_steps=4), ["--n_steps=4"]),
}


@pytest.fixture(scope="module")
def client(server):
    with ac.AttributionClient(server.address) as c:
        yield c


def components(client, **fields):
    fields.setdefault("pairs", [(CLEAN, CORRUPTED)])
    return client.attribute_components(answer=" Yes", wrong_answer=" No", **fields)


def assert_grid_equal(grid: ac.ComponentGrid, reference: dict):
    assert (grid.site, grid.granularity, list(grid.shape), grid.axes) == (
        reference["site"], reference["granularity"], reference["shape"], reference["axes"])
    np.testing.assert_allclose(grid.values, reference["values"], **CLOSE)
    np.testing.assert_allclose(grid.convergence_deltas, reference["convergence_deltas"], **CLOSE)
    assert grid.to_numpy().shape == tuple(reference["shape"])


def assert_components_equal(ours: ac.ComponentAttribution, reference: dict):
    assert (ours.model, ours.method, ours.metric, ours.direction, ours.model_digest) == (
        reference["model"], reference["method"], reference["metric"], reference["direction"],
        reference["model_digest"])
    assert (ours.answer.id, ours.answer.text) == (reference["answer"]["id"], reference["answer"]["text"])
    assert (ours.wrong_answer.id, ours.wrong_answer.text) == (
        reference["wrong_answer"]["id"], reference["wrong_answer"]["text"])
    assert [g.site for g in ours.grids] == [g["site"] for g in reference["grids"]]
    for grid, ref in zip(ours.grids, reference["grids"]):
        assert_grid_equal(grid, ref)
    assert len(ours.pairs) == len(reference["pairs"])
    for pair, ref in zip(ours.pairs, reference["pairs"]):
        np.testing.assert_allclose([pair.clean_metric, pair.corrupted_metric],
                                   [ref["clean_metric"], ref["corrupted_metric"]], **CLOSE)
        assert [t.text for t in pair.clean_tokens] == ref["clean_tokens"]
        assert [t.text for t in pair.corrupted_tokens] == ref["corrupted_tokens"]
        assert [g.site for g in pair.grids] == [g["site"] for g in ref["grids"]]
        for grid, ref_grid in zip(pair.grids, ref["grids"]):
            assert_grid_equal(grid, ref_grid)
    assert ours.stats.rows == reference["stats"]["rows"]
    assert ours.stats.backward_passes == reference["stats"]["backward_passes"]


@pytest.mark.parametrize("method", list(METHODS))
def test_attribute_components_equals_cpp_client(client, server, method):
    fields, flags = METHODS[method]
    ours = components(client, method=method, sites=["heads", "mlp_out"], **fields)
    reference = cli_json(server.address, "components", f"--clean={CLEAN}", f"--corrupted={CORRUPTED}",
                         "--answer= Yes", "--wrong_answer= No", f"--component_method={method}",
                         "--sites=heads,mlp_out", *flags)
    assert_components_equal(ours, reference)
    assert [g.site for g in ours.grids] == ["heads", "mlp_out"]
    assert (ours.grid("heads").shape, ours.grid("heads").axes) == ((LAYERS, HEADS), ["layer", "head"])
    assert ours.grid("mlp_out").shape == (LAYERS, len(ours.pairs[0].clean_tokens))
    if method == "layer_integrated_gradients":
        assert ours.grid("heads").convergence_deltas.shape == (LAYERS * HEADS,)
    else:
        assert ours.grid("heads").convergence_deltas.size == 0


def test_options_objects_token_ids_and_names(client, server):
    by_text = components(client, metric="prob_difference", direction="noising")
    reference = cli_json(server.address, "components", f"--clean={CLEAN}", f"--corrupted={CORRUPTED}",
                         "--answer= Yes", "--wrong_answer= No", "--metric=prob_difference", "--direction=noising")
    assert_components_equal(by_text, reference)
    # Token ids: an int or a one-element sequence; pairs as PromptPair; a ComponentOptions with fields over it.
    options = ac.ComponentOptions(pairs=[ac.PromptPair(CLEAN, CORRUPTED)], answer=by_text.answer.id,
                                  wrong_answer=[by_text.wrong_answer.id], metric="prob_difference")
    by_id = client.attribute_components(options, direction="noising")
    assert options.direction == "denoising"  # the caller's options stay as they were
    assert by_id.model_digest == client.list_models()[0].model_digest
    assert (by_id.answer.id, by_id.wrong_answer.id) == (by_text.answer.id, by_text.wrong_answer.id)
    np.testing.assert_allclose(by_id.grid("heads").values, by_text.grid("heads").values, **CLOSE)
    ids = [t.id for t in by_text.pairs[0].clean_tokens], [t.id for t in by_text.pairs[0].corrupted_tokens]
    by_ids = components(client, pairs=[ids], metric="prob_difference", direction="noising", no_special_tokens=True)
    np.testing.assert_allclose(by_ids.grid("heads").values, by_text.grid("heads").values, **CLOSE)
    with pytest.raises(ValueError, match=r'metric: unknown value "logit_diff" \(one of: .*logit_difference'):
        components(client, metric="logit_diff")
    with pytest.raises(ValueError, match=r'sites: unknown value "mlp"'):
        components(client, sites=["heads", "mlp"])
    with pytest.raises(TypeError, match="answr"):
        client.attribute_components(pairs=[(CLEAN, CORRUPTED)], answr=" Yes")


def test_steps_and_rule_beside_a_method_without_steps_are_named_unread(client):
    patched = components(client, method="activation_patching", n_steps=8, rule="riemann_left")
    assert patched.unread_settings == ["n_steps", "rule"]
    assert patched.grids[0].values.tolist() == components(client, method="activation_patching").grids[0].values.tolist()
    assert components(client, method="layer_integrated_gradients", n_steps=4).unread_settings == []


def test_settings_used_name_what_layer_integrated_gradients_ran_with(client):
    layer_ig = components(client, method="layer_integrated_gradients")
    assert layer_ig.settings_used == ac.SettingsUsed(n_steps=16, rule="gausslegendre")
    assert layer_ig.stats.server_build != ""
    assert components(client, method="layer_integrated_gradients", n_steps=4, rule="fejer2").settings_used == \
        ac.SettingsUsed(n_steps=4, rule="fejer2")
    assert components(client, method="activation_patching", n_steps=8).settings_used == ac.SettingsUsed()


def test_components_stream_progress_is_monotone_and_ends_in_the_result(client):
    stream = client.attribute_components_stream(pairs=[(CLEAN, CORRUPTED)], answer=" Yes", wrong_answer=" No",
                                                method="layer_integrated_gradients", n_steps=4,
                                                sites=["heads", "mlp_out"])
    events = list(stream)
    assert events[0].queued
    progress = [e for e in events if not e.queued]
    assert progress, "no progress events"
    totals = {e.rows_total for e in progress}
    assert len(totals) == 1 and totals.pop() > 0
    done = [e.rows_done for e in progress]
    assert done == sorted(done) and done[-1] == progress[-1].rows_total
    result = stream.result()
    unary = components(client, method="layer_integrated_gradients", n_steps=4, sites=["heads", "mlp_out"])
    for ours, theirs in zip(result.grids, unary.grids):
        np.testing.assert_allclose(ours.values, theirs.values, **CLOSE)
    seen = []
    a = components(client, progress=seen.append)
    assert seen and seen[-1].rows_done == seen[-1].rows_total > 0
    b = components(client, progress=True)
    np.testing.assert_allclose(a.grid("heads").values, b.grid("heads").values, **CLOSE)


def test_pairs_of_different_lengths_raise_invalid_argument(client):
    with pytest.raises(ac.InvalidArgument, match=r"pairs\[0\]") as error:
        components(client, pairs=[(CLEAN, "Tom lives in Dover. Q: Is the cup warm? A:")])
    assert "pairs[0]" in error.value.message
    with pytest.raises(ac.InvalidArgument, match=r"pairs\[0\]"):
        list(client.attribute_components_stream(pairs=[(CLEAN, "Tom is here. A:")], answer=" Yes",
                                                wrong_answer=" No"))


def test_grids_convert_to_numpy_and_dataframe(client):
    a = components(client, sites="heads,mlp_out", granularity="default")
    heads = a.grid("heads")
    array = heads.to_numpy()
    assert array.shape == (LAYERS, HEADS) and array.dtype == np.float64
    np.testing.assert_array_equal(array.ravel(), heads.values)
    assert a.pairs[0].grid("heads").to_numpy().shape == (LAYERS, HEADS)
    frame = heads.to_dataframe()
    assert list(frame.index) == [f"L{i}" for i in range(LAYERS)]
    assert list(frame.columns) == [f"H{i}" for i in range(HEADS)]
    np.testing.assert_array_equal(frame.to_numpy(), array)
    positions = len(a.pairs[0].clean_tokens)
    assert list(a.grid("mlp_out").to_dataframe().columns) == [f"P{i}" for i in range(positions)]
    with pytest.raises(KeyError, match="resid_pre"):
        a.grid("resid_pre")
    per_position = components(client, granularity="layer_position_head")
    grid = per_position.grid("heads")
    assert grid.shape == (LAYERS, positions, HEADS) and grid.axes == ["layer", "position", "head"]
    assert grid.to_dataframe().shape == (LAYERS * positions, HEADS)


def test_async_client_matches_sync_client(client, server):
    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            unary = await c.attribute_components(pairs=[(CLEAN, CORRUPTED)], answer=" Yes", wrong_answer=" No",
                                                 method="attribution_patching")
            stream = await c.attribute_components_stream(pairs=[(CLEAN, CORRUPTED)], answer=" Yes",
                                                         wrong_answer=" No")
            done = [p.rows_done async for p in stream if not p.queued]
            streamed = await stream.result()
            seen = []
            with_progress = await c.attribute_components(pairs=[(CLEAN, CORRUPTED)], answer=" Yes",
                                                         wrong_answer=" No", progress=seen.append)
            try:
                await c.attribute_components(pairs=[(CLEAN, "Tom is here. A:")], answer=" Yes", wrong_answer=" No")
            except ac.InvalidArgument as e:
                error = e
            return unary, done, streamed, seen, with_progress, error

    unary, done, streamed, seen, with_progress, error = asyncio.run(run())
    np.testing.assert_allclose(unary.grid("heads").values,
                               components(client, method="attribution_patching").grid("heads").values, **CLOSE)
    assert done and done == sorted(done) and done[-1] > 0
    sync = components(client)
    for result in (streamed, with_progress):
        np.testing.assert_allclose(result.grid("heads").values, sync.grid("heads").values, **CLOSE)
    assert seen and seen[-1].rows_done == seen[-1].rows_total
    assert "pairs[0]" in error.message
