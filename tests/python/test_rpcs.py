# SPDX-License-Identifier: Apache-2.0
"""Every RPC through the Python package against the real server, equal to the C++ client's answer
(attribution-cli, which uses client/attribution_client.h) on the same requests; streams, deadlines,
cancellation and errors as Python exceptions."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import gc
import json
import pickle
import re
import signal
import sys
import threading
import time
from html import unescape

import grpc
import numpy as np
import pytest

import attribution_client as ac
from attribution_client import _channel, _convert
from conftest import DEFAULT_MODEL, PROMPT, Server, cli, cli_json

# One float32 ULP of the values involved, turned to float64 and printed: both clients read one answer.
# Both clients' calls run on the same server, but in batches whose shapes depend on the server's load
# and learned batch costs, which changes fp32 summation order (a few 1e-6 relative).
CLOSE = dict(rtol=2e-5, atol=1e-8)


@pytest.fixture(scope="module")
def client(server):
    with ac.AttributionClient(server.address) as c:
        yield c


def assert_tokens_equal(ours, theirs):
    assert [(t.id, t.text, t.special) for t in ours] == [(t["id"], t["text"], t["special"]) for t in theirs]
    np.testing.assert_allclose([t.log_prob for t in ours], [t["log_prob"] for t in theirs], **CLOSE)


def assert_attribution_equal(a: ac.Attribution, reference: dict):
    assert a.model == reference["model"] and a.method == reference["method"]
    assert_tokens_equal(a.prompt_tokens, reference["prompt_tokens"])
    assert_tokens_equal(a.target_tokens, reference["target_tokens"])
    assert [(f.token_begin, f.token_end, f.text) for f in a.features] == [
        (f["token_begin"], f["token_end"], f["text"]) for f in reference["features"]]
    assert a.fixed_tokens == reference["fixed_tokens"]
    np.testing.assert_allclose(a.sequence, reference["sequence_attribution"], **CLOSE)
    if reference["token_matrix"]:
        np.testing.assert_allclose(a.token_matrix, reference["token_matrix"], **CLOSE)
    else:
        assert a.token_matrix is None
    np.testing.assert_allclose(a.objective, reference["objective"], **CLOSE)
    if "convergence_delta" in reference:
        np.testing.assert_allclose(a.convergence_delta, reference["convergence_delta"], rtol=1e-6, atol=1e-7)
    assert a.integration_steps == reference.get("integration_steps", 0)


CASES = {
    "integrated_gradients": (dict(method="integrated_gradients", n_steps=16),
                             ["--method=integrated_gradients", "--n_steps=16"]),
    "ig_token_baseline_matrix": (dict(method="ig", n_steps=8, baseline="unk", want_token_matrix=True,
                                      rule="riemann_trapezoid"),
                                 ["--method=ig", "--n_steps=8", "--baseline=unk", "--matrix", "--rule=riemann_trapezoid"]),
    "feature_ablation_prob": (dict(method="feature_ablation", quantity="prob", want_token_matrix=True),
                              ["--method=feature_ablation", "--quantity=prob", "--matrix"]),
    "shapley_value_sampling": (dict(method="shapley_value_sampling", n_samples=3, seed=7, feature_range=(5, 12)),
                               ["--method=shapley_value_sampling", "--n_samples=3", "--seed=7", "--range=5:12"]),
    "kernel_shap_contrastive": (dict(method="kernel_shap", n_samples=40, seed=3, foil=" No"),
                                ["--method=kernel_shap", "--n_samples=40", "--seed=3", "--foil= No"]),
    "saliency_special_tokens": (dict(method="saliency", include_special_tokens=True),
                                ["--method=saliency", "--include_special_tokens"]),
    "attn_lrp_logit_matrix": (dict(method="attn_lrp", quantity="logit", want_token_matrix=True),
                              ["--method=attn_lrp", "--quantity=logit", "--matrix"]),
    "cp_lrp_contrastive": (dict(method="cp_lrp", foil=" No"), ["--method=cp_lrp", "--foil= No"]),
    "ig_prob_over_choices": (dict(method="ig", n_steps=8, quantity="prob", choices=[" Yes", " No", " red"]),
                             ["--method=ig", "--n_steps=8", "--quantity=prob", "--choices= Yes, No, red"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attribute_equals_cpp_client(client, server, case):
    fields, flags = CASES[case]
    ours = client.attribute(prompt=PROMPT, target=" Yes", **fields)
    reference = cli_json(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", *flags)
    assert_attribution_equal(ours, reference)


def test_contrastive_answers_name_their_foil(client, server):
    # A contrastive objective is the target's quantity minus the foil's, but answers carried only the target:
    # the CLI's heading read `target " Yes" (objective = ...)` as if the foil were not there.
    ours = client.attribute(prompt=PROMPT, target=" Yes", foil=" No", method="feature_ablation")
    no = client.logprobs(prompt=PROMPT, target=" No").target  # " No" as it follows the prompt
    assert [t.id for t in ours.foil_tokens] == [t.token.id for t in no]
    assert "".join(t.text for t in ours.foil_tokens) == " No"
    reference = cli_json(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", "--foil= No",
                         "--method=feature_ablation")
    assert [t["id"] for t in reference["foil_tokens"]] == [t.id for t in ours.foil_tokens]
    shown = cli(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", "--foil= No",
                "--method=feature_ablation")
    assert 'target " Yes" minus foil " No" (objective = ' in shown
    assert "minus foil <code> No</code>" in ours._repr_html_()
    assert client.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation").foil_tokens == []


def test_settings_a_method_does_not_read_are_named_and_change_nothing(client, server):
    # Saliency asked with IG's steps and GradientShap's noise answered as if they had been used, without a word.
    plain = client.attribute(prompt=PROMPT, target=" Yes", method="saliency")
    asked = client.attribute(prompt=PROMPT, target=" Yes", method="saliency", n_steps=64, stdev=0.5, seed=7,
                             baseline="eos")
    assert plain.unread_settings == []
    assert asked.unread_settings == ["n_steps", "stdev", "seed", "baseline"]
    np.testing.assert_array_equal(asked.sequence, plain.sequence)
    ig = client.attribute(prompt=PROMPT, target=" Yes", n_steps=8, rule="riemann_left", signed_saliency=True)
    assert ig.unread_settings == ["signed_saliency"]
    shown = cli(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", "--method=saliency",
                "--n_steps=64")
    assert "saliency does not read n_steps: they changed nothing" in shown
    assert cli_json(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", "--method=saliency",
                    "--n_steps=64")["unread_settings"] == ["n_steps"]
    # One seed for the attribution and its generated target: it decided the target, so it changed something; nor
    # is the default tokenization named beside no text (both were, whatever the target).
    generated = client.attribute(prompt=PROMPT, method="saliency", seed=9, max_new_tokens=2, temperature=5)
    assert generated.unread_settings == []
    assert "seed" not in cli(server.address, "attribute", f"--prompt={PROMPT}", "--method=saliency", "--seed=9",
                             "--max_new_tokens=2", "--temperature=5")


def test_the_answer_names_the_settings_it_ran_with_and_the_servers_build(client, server):
    kernel_shap = client.attribute(prompt=PROMPT, target=" Yes", method="kernel_shap", baseline="eos")
    assert kernel_shap.settings_used == ac.SettingsUsed(n_samples=25, seed=0, baseline=kernel_shap.settings_used.baseline)
    assert isinstance(kernel_shap.settings_used.baseline, int)
    assert kernel_shap.stats.server_build != ""
    ig = client.attribute(prompt=PROMPT, target=" Yes", baseline="zero", completeness_tolerance=0.01)
    assert ig.settings_used.rule == "fejer2" and ig.settings_used.baseline == "zero"
    assert ig.settings_used.n_samples is None
    shown = cli_json(server.address, "attribute", f"--prompt={PROMPT}", "--target= Yes", "--method=kernel_shap",
                     "--baseline=eos")
    assert shown["settings_used"] == {"n_samples": 25, "seed": 0, "baseline": str(kernel_shap.settings_used.baseline)}
    assert shown["stats"]["server_build"] == kernel_shap.stats.server_build


def test_attribute_with_faithfulness_and_generated_target(client, server):
    ours = client.attribute(prompt=PROMPT, method="feature_ablation", want_faithfulness=True, max_new_tokens=2)
    reference = cli_json(server.address, "attribute", f"--prompt={PROMPT}", "--method=feature_ablation",
                         "--faithfulness", "--max_new_tokens=2")
    assert_attribution_equal(ours, reference)
    f = reference["faithfulness"]
    np.testing.assert_allclose(ours.faithfulness.deletion, f["deletion"], **CLOSE)
    np.testing.assert_allclose(ours.faithfulness.comprehensiveness_aopc, f["comprehensiveness_aopc"], **CLOSE)


def test_generate_and_stream_equal_cpp_client(client, server):
    reference = cli_json(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=4")
    for generation in (client.generate(prompt=PROMPT, max_new_tokens=4),
                       client.generate_stream(prompt=PROMPT, max_new_tokens=4).result()):
        assert generation.text == reference["text"] and generation.stopped == reference["stopped"]
        assert [(t.id, t.text) for t in generation.tokens] == [(t["id"], t["text"]) for t in reference["tokens"]]
        np.testing.assert_allclose([t.log_prob for t in generation.tokens],
                                   [t["log_prob"] for t in reference["tokens"]], **CLOSE)
    streamed = list(client.generate_stream(prompt=PROMPT, max_new_tokens=4))
    assert [t.text for t in streamed] == [t["text"] for t in reference["tokens"]]


def test_generate_top_k_and_stop_strings_equal_cpp_client(client, server):
    # The CLI's --sample_top_k and --stop send what generate(top_k=..., stop=[...]) sends.
    reference = cli_json(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=12", "--temperature=1.5",
                         "--sample_top_k=3", "--seed=11", "--stop=e,zz")
    for generation in (client.generate(prompt=PROMPT, max_new_tokens=12, temperature=1.5, top_k=3, seed=11,
                                       stop=["e", "zz"]),
                       client.generate_stream(prompt=PROMPT, max_new_tokens=12, temperature=1.5, top_k=3, seed=11,
                                              stop=["e", "zz"]).result()):
        assert generation.text == reference["text"] and generation.stopped == reference["stopped"]
        assert [t.id for t in generation.tokens] == [t["id"] for t in reference["tokens"]]
        assert "e" not in generation.text
    # generate --stream printed the stop string and what its token held after it: the streamed text now ends
    # where the answer's text does.
    streamed = cli(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=12", "--temperature=1.5",
                   "--sample_top_k=3", "--seed=11", "--stop=e,zz", "--stream")
    assert reference["stopped"] and streamed == reference["text"] + "\n"
    # --stop reads C escapes: "\x65" is "e" (command_line_e2e_test checks escaped commas and bad escapes).
    escaped = cli_json(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=12", "--temperature=1.5",
                       "--sample_top_k=3", "--seed=11", "--stop=\\x65,zz")
    assert escaped["text"] == reference["text"] and escaped["tokens"] == reference["tokens"]
    assert _convert.generate_request(ac.GenerateOptions(prompt=PROMPT, stop=["a"])).stop == ["a"]
    assert _convert.generate_request(ac.GenerateOptions(prompt=PROMPT)).generation.top_k == 0
    with pytest.raises(ac.InvalidArgument, match=r"stop\[0\]"):
        client.generate(prompt=PROMPT, stop=[""])


def test_cli_top_p_reaches_the_request(client, server):
    # attribution-cli had no --top_p ("unknown flag"), though the README lists top_p among the sampling
    # settings and the Python client takes it. A nucleus this small keeps only the most likely token, so even
    # at temperature 5 the sample is the greedy continuation (12 tokens that chance would not repeat).
    prompt = "Once upon a time"
    greedy = [t.id for t in client.generate(prompt=prompt, max_new_tokens=12).tokens]
    reference = cli_json(server.address, "generate", f"--prompt={prompt}", "--max_new_tokens=12", "--temperature=5",
                         "--top_p=1e-6", "--seed=3")
    assert [t["id"] for t in reference["tokens"]] == greedy
    assert [t.id for t in client.generate(prompt=prompt, max_new_tokens=12, temperature=5, top_p=1e-6,
                                          seed=3).tokens] == greedy


def test_cli_stop_token_flags_reach_the_request(client, server):
    # attribution-cli had neither --ignore_stop_tokens nor --stop_token_ids, which the Python client takes.
    full = client.generate(prompt=PROMPT, max_new_tokens=12, ignore_stop_tokens=True)
    assert len(full.tokens) == 12
    reference = cli_json(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=12",
                         "--ignore_stop_tokens")
    assert [t["id"] for t in reference["tokens"]] == [t.id for t in full.tokens]
    # The third token's id as the only stop token: the generation ends there, as the Python client's does.
    stop = full.tokens[2].id
    stopped = client.generate(prompt=PROMPT, max_new_tokens=12, stop_token_ids=[stop])
    assert [t.id for t in stopped.tokens][-1] == stop and len(stopped.tokens) <= 3
    reference = cli_json(server.address, "generate", f"--prompt={PROMPT}", "--max_new_tokens=12",
                         f"--stop_token_ids={stop}")
    assert [t["id"] for t in reference["tokens"]] == [t.id for t in stopped.tokens]


def test_generate_seed_is_optional_and_the_seed_used_is_reported(client):
    # Unset, no seed goes on the wire (the server then draws one); 0 is a seed like any other.
    unseeded = _convert.generate_request(ac.GenerateOptions(prompt=PROMPT)).generation
    assert not unseeded.HasField("seed")
    assert _convert.generate_request(
        ac.GenerateOptions(prompt=PROMPT, generation=ac.GenerationSettings(seed=0))).generation.HasField("seed")
    sampling = dict(prompt=PROMPT, temperature=1.0, max_new_tokens=8, ignore_stop_tokens=True)
    drawn = client.generate(**sampling)
    again = client.generate(**sampling, seed=drawn.seed)
    assert again.seed == drawn.seed
    assert [t.id for t in again.tokens] == [t.id for t in drawn.tokens]
    streamed = client.generate_stream(**sampling, seed=drawn.seed).result()
    assert (streamed.seed, [t.id for t in streamed.tokens]) == (drawn.seed, [t.id for t in drawn.tokens])
    for seed in (0, 2 ** 64 - 1):
        assert client.generate(**sampling, seed=seed).seed == seed
    # Greedy decoding samples nothing: no seed is drawn, so none reads as if the tokens depended on it.
    assert client.generate(prompt=PROMPT, max_new_tokens=4).seed == 0
    assert client.generate(prompt=PROMPT, max_new_tokens=4, seed=9).seed == 9


def test_logprobs_equal_cpp_client(client, server):
    ours = client.logprobs(prompt=PROMPT, target=" Yes it is", top_k=3)
    text = cli(server.address, "logprobs", f"--prompt={PROMPT}", "--target= Yes it is", "--top_k=3")
    rows = [line for line in text.splitlines() if line.startswith('"')]
    assert len(rows) == len(ours.target) == 3
    for row, t in zip(rows, ours.target):
        token_text, value = re.match(r'"(.*)"\s+(-?[0-9.]+)', row).groups()
        assert token_text == t.token.text and float(value) == pytest.approx(t.token.log_prob, abs=5e-5)
        # Each alternative quoted, as the scored token: '"ow":-1.197  " No":-1.898'.
        assert [top.text for top in t.top] == re.findall(r'  "(.*?)":-?[0-9.]+', row)[-3:]
    total = float(re.search(r"total log-prob (-?[0-9.]+)", text).group(1))
    assert total == pytest.approx(ours.total_log_prob, abs=5e-5)
    assert ours.total_log_prob == pytest.approx(sum(ours.log_probs), abs=1e-5)
    assert list(ours.to_dataframe().columns) == ["id", "token", "log_prob", "prob"]


def test_list_models_and_health_equal_cpp_client(client, server):
    (model,) = client.list_models()
    line = cli(server.address, "models").split()
    assert [model.name, model.architecture, model.dtype, model.quantization, model.device,
            str(model.resident_weight_bytes)] == line[:6]
    assert (model.vocab_size, model.num_layers, model.hidden_size) == (int(line[8]), int(line[10]), int(line[12]))
    assert (model.max_top_k, model.max_choices, model.max_rows, model.max_pairs, model.max_queued_tokens,
            model.max_queued_bytes) == (20, 256, 1 << 16, 64, 1 << 24, 8 << 30)
    # engine.max_kv_cache_bytes (8 GiB) over the KV bytes a token the model's config implies (float32).
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_bytes_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4
    assert model.max_kv_cache_tokens == (8 << 30) // kv_bytes_per_token
    assert client.health() == cli(server.address, "health").strip() == "SERVING"


def test_answers_carry_the_model_digest_list_models_reports(client, server):
    (model,) = client.list_models()
    assert re.fullmatch("[0-9a-f]{64}", model.weights_digest) and re.fullmatch("[0-9a-f]{64}", model.model_digest)
    text = cli(server.address, "models")
    assert f"weights_digest: {model.weights_digest}  model_digest: {model.model_digest}" in text
    assert client.attribute(prompt=PROMPT, target=" Yes", method="saliency").model_digest == model.model_digest
    assert client.logprobs(prompt=PROMPT, target=" Yes").model_digest == model.model_digest
    assert client.generate(prompt=PROMPT, max_new_tokens=2).model_digest == model.model_digest


def test_attribute_stream_progress_is_monotone_and_ends_in_the_result(client):
    stream = client.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=32)
    events = list(stream)
    assert events[0].queued
    progress = [e for e in events if not e.queued]
    assert progress, "no progress events"
    totals = {e.rows_total for e in progress}
    assert len(totals) == 1 and totals.pop() > 0
    done = [e.rows_done for e in progress]
    assert done == sorted(done) and done[-1] == progress[-1].rows_total
    np.testing.assert_allclose(stream.result().sequence,
                               client.attribute(prompt=PROMPT, target=" Yes", n_steps=32).sequence, **CLOSE)
    seen = []
    a = client.attribute(prompt=PROMPT, target=" Yes", n_steps=32, progress=seen.append)
    assert seen and seen[-1].rows_done == seen[-1].rows_total and a.sequence.shape == (len(a.features),)
    assert client.attribute(prompt=PROMPT, target=" Yes", n_steps=32, progress=True).objective == a.objective


def test_async_client_matches_sync_client(client, server):
    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            a = await c.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation")
            stream = await c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=16)
            done = [p.rows_done async for p in stream if not p.queued]
            streamed = await stream.result()
            tokens = [t.text async for t in await c.generate_stream(prompt=PROMPT, max_new_tokens=3)]
            many = await asyncio.gather(*[c.logprobs(prompt=PROMPT, target=" Yes") for _ in range(4)])
            return a, done, streamed, tokens, many, await c.list_models(), await c.health(), await c.generate(
                prompt=PROMPT, max_new_tokens=3)

    a, done, streamed, tokens, many, models, health, generation = asyncio.run(run())
    np.testing.assert_allclose(a.sequence, client.attribute(prompt=PROMPT, target=" Yes",
                                                            method="feature_ablation").sequence, **CLOSE)
    assert done == sorted(done) and done[-1] > 0
    np.testing.assert_allclose(streamed.sequence, client.attribute(prompt=PROMPT, target=" Yes", n_steps=16).sequence,
                               **CLOSE)
    assert tokens == [t.text for t in generation.tokens]
    np.testing.assert_allclose([m.total_log_prob for m in many], many[0].total_log_prob, **CLOSE)
    assert models == client.list_models() and health == "SERVING"


def test_async_streams_are_iterated_directly_as_the_readme_says(client, server):
    # `async for` over the stream method's value: it was a coroutine (TypeError: 'async for' requires an
    # object with __aiter__); awaiting it first still works.
    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            tokens = [t.text async for t in c.generate_stream(prompt=PROMPT, max_new_tokens=3)]
            stream = c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=16)
            done = [p.rows_done async for p in stream if not p.queued]
            awaited = await c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=16)
            unstarted = c.generate_stream(prompt=PROMPT, max_new_tokens=3)
            unstarted.cancel()
            with pytest.raises(ac.Cancelled):
                await unstarted.result()
            with pytest.raises(TypeError, match="unknown option"):
                c.generate_stream(prompt=PROMPT, no_such_option=1)  # refused when called, not when iterated
            return tokens, done, await stream.result(), await awaited.result()

    tokens, done, streamed, awaited = asyncio.run(run())
    assert tokens == [t.text for t in client.generate(prompt=PROMPT, max_new_tokens=3).tokens]
    assert done == sorted(done) and done[-1] > 0
    np.testing.assert_allclose(streamed.sequence, awaited.sequence, **CLOSE)


def test_request_ids_reach_the_servers_log_lines(client, server):
    """request_id goes as x-request-id metadata on unary, streaming and asyncio calls; the server writes
    it in the call's log line (a JSON object per line)."""
    client.logprobs(prompt=PROMPT, target=" red", request_id="py-unary")
    client.attribute_stream(prompt=PROMPT, target=" red", method="saliency", request_id="py-stream").result()

    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            await c.generate(prompt=PROMPT, max_new_tokens=1, request_id="py-async")

    asyncio.run(run())
    expected = {"py-unary": "Logprobs", "py-stream": "AttributeStream", "py-async": "Generate"}

    def logged(lines):
        return {line["request_id"]: line["rpc"] for line in lines if "request_id" in line}

    lines = server.log_lines(until=lambda lines: all(k in logged(lines) for k in expected))[1]
    assert {k: logged(lines).get(k) for k in expected} == expected


def test_cancel_raises_cancelled(client):
    stream = client.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024, timeout=120)
    with pytest.raises(ac.Cancelled) as error:
        for p in stream:
            if p.rows_done > 0:
                stream.cancel()
    assert error.value.code == grpc.StatusCode.CANCELLED

    async def cancel_async():
        async with ac.AsyncAttributionClient(client.options.target) as c:
            s = await c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024)
            async for p in s:
                if p.rows_done > 0:
                    s.cancel()

    with pytest.raises(ac.Cancelled):
        asyncio.run(cancel_async())
    assert client.health() == "SERVING"  # the server goes on


def test_progress_that_raises_cancels_the_call_on_the_server(client, server, monkeypatch):
    # A notebook keeps the last exception's traceback (sys.last_traceback), and with it the stream in the
    # call's frame: gRPC cancels a call only once its stream is collected, so the server ran the whole request.
    # pytest.raises keeps each exception, and its traceback, as long as the test runs.
    class Stop(Exception):
        pass

    def stop_once_started(p):
        if p.rows_done > 0:
            raise Stop()

    slow = dict(prompt=PROMPT, target=" Yes", n_steps=1024)
    with pytest.raises(Stop) as error:
        client.attribute(**slow, progress=stop_once_started, request_id="progress-raises")

    tqdm_auto = pytest.importorskip("tqdm.auto")  # the [progress] extra

    class InterruptedBar(tqdm_auto.tqdm):  # Ctrl-C while the bar shows
        def update(self, n=1):
            if self.n + n > 0:
                raise KeyboardInterrupt
            return super().update(n)

    monkeypatch.setattr(tqdm_auto, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        client.attribute(**slow, progress=True, request_id="progress-bar-interrupted")
    ids = {"progress-raises", "progress-bar-interrupted", "async-progress-raises"}

    def ended(lines):
        return {line["request_id"]: line["code"] for line in lines if line.get("request_id") in ids}

    async def raise_in_async_progress():
        async with ac.AsyncAttributionClient(server.address) as c:
            with pytest.raises(Stop) as error:
                await c.attribute(**slow, progress=stop_once_started, request_id="async-progress-raises")
            # Closing the client would cancel the call: it stays open until the call has ended.
            return await asyncio.to_thread(server.log_lines, lambda lines: len(ended(lines)) == len(ids))

    _, lines = asyncio.run(raise_in_async_progress())
    assert ended(lines) == dict.fromkeys(ids, "CANCELLED")


def test_deadline_raises_deadline_exceeded(client, server):
    started = time.monotonic()
    with pytest.raises(ac.DeadlineExceeded) as error:
        client.attribute(prompt=PROMPT, target=" Yes", n_steps=1024, timeout=0.2, request_id="deadline-1")
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and isinstance(error.value, TimeoutError)
    assert time.monotonic() - started < 10
    with ac.AttributionClient(server.address, timeout=0.2) as short:
        with pytest.raises(ac.DeadlineExceeded):
            list(short.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024, request_id="deadline-2"))

    async def deadline_async():
        async with ac.AsyncAttributionClient(server.address) as c:
            await c.attribute(prompt=PROMPT, target=" Yes", n_steps=1024, timeout=0.2, request_id="deadline-3")

    with pytest.raises(ac.DeadlineExceeded):
        asyncio.run(deadline_async())
    # The server's log line (and metrics) say the deadline ended these calls, not a client's cancel: gRPC
    # cancels both alike.
    def ended(lines):
        return [line["code"] for line in lines if line.get("request_id", "").startswith("deadline-")]

    _, lines = server.log_lines(until=lambda lines: len(ended(lines)) >= 3)
    assert ended(lines) == ["DEADLINE_EXCEEDED"] * 3
    # What the engine ran for them, which their lines left out (only answered calls said): 0.2 s of 1,024 rows.
    ran = [line for line in lines if line.get("request_id", "").startswith("deadline-") and "rows" in line]
    assert ran and all(0 < line["rows"] < 1024 and line["device_s"] > 0 for line in ran)


def test_the_prompt_may_be_the_first_positional_argument(client, server):
    # client.generate("Once upon a time") raised "TypeError: replace() should be called on dataclass instances":
    # the first argument had to be an options object. It is now that or the prompt, on both clients.
    as_keyword = client.generate(prompt=PROMPT, max_new_tokens=3)
    assert [t.id for t in client.generate(PROMPT, max_new_tokens=3).tokens] == [t.id for t in as_keyword.tokens]
    assert [t.id for t in client.generate_stream(PROMPT, max_new_tokens=3).result().tokens] == \
        [t.id for t in as_keyword.tokens]
    np.testing.assert_allclose(client.logprobs(PROMPT, target=" Yes").total_log_prob,
                               client.logprobs(prompt=PROMPT, target=" Yes").total_log_prob, **CLOSE)
    np.testing.assert_allclose(client.attribute(PROMPT, target=" Yes", method="feature_ablation").sequence,
                               client.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation").sequence,
                               **CLOSE)
    ids = [t.id for t in as_keyword.prompt_tokens]
    assert [t.id for t in client.logprobs(ids, target=" Yes").prompt_tokens] == ids
    with pytest.raises(TypeError, match="prompt is given twice"):
        client.generate(PROMPT, prompt=PROMPT)
    with pytest.raises(TypeError, match=r"the first argument must be the options \(AttributeOptions\) or the prompt, "
                                        "not GenerateOptions"):
        client.attribute(ac.GenerateOptions(prompt=PROMPT))
    with pytest.raises(TypeError, match=r"the first argument must be the options \(ComponentOptions\), not str"):
        client.attribute_components(PROMPT)

    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            streamed = [t.id async for t in c.generate_stream(PROMPT, max_new_tokens=3)]
            return (await c.generate(PROMPT, max_new_tokens=3)).tokens, streamed

    tokens, streamed = asyncio.run(run())
    assert [t.id for t in tokens] == streamed == [t.id for t in as_keyword.tokens]


def test_server_errors_carry_code_and_message(client):
    with pytest.raises(ac.InvalidArgument, match=r"n_steps") as error:
        client.attribute(prompt=PROMPT, target=" Yes", n_steps=100000)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and "1024" in error.value.message
    with pytest.raises(ac.NotFound) as error:
        client.logprobs(model="no-such-model", prompt=PROMPT, target=" Yes")
    assert error.value.code == grpc.StatusCode.NOT_FOUND and "no-such-model" in error.value.message
    with pytest.raises(ValueError, match=r'method: unknown value "ablation" \(one of: .*feature_ablation'):
        client.attribute(prompt=PROMPT, target=" Yes", method="ablation")
    with pytest.raises(TypeError, match="n_stepz"):
        client.attribute(prompt=PROMPT, n_stepz=3)


def test_an_empty_target_or_foil_is_refused_not_taken_as_not_given(client):
    # target="" attributed a generated target and foil="" turned contrast off, silently: only None is "not
    # given", and the server names the empty field.
    for empty in ("", [], np.array([], dtype=np.int64)):
        with pytest.raises(ac.InvalidArgument, match=r"^INVALID_ARGUMENT: target: is set but empty"):
            client.attribute(prompt=PROMPT, target=empty, method="saliency")
        with pytest.raises(ac.InvalidArgument, match=r"^INVALID_ARGUMENT: foil: is set but empty"):
            client.attribute(prompt=PROMPT, target=" Yes", foil=empty, method="saliency")
    with pytest.raises(ac.InvalidArgument, match=r"target: is set but empty"):
        client.attribute_stream(prompt=PROMPT, target="", method="saliency").result()
    with pytest.raises(ac.InvalidArgument, match=r"^INVALID_ARGUMENT: choices\[1\]: is empty"):  # as choices were
        client.attribute(prompt=PROMPT, target=" Yes", choices=[" Yes", ""], quantity="prob", method="saliency")


def test_seed_seeds_a_generated_target_as_the_clis_seed_does(client, server):
    # attribution-cli's --seed seeds the generated target too: seed= seeded only the method, so the same
    # request sampled another target than the CLI's.
    story = "Once upon a time"  # QA prompts sample " Yes" or " No" whatever the seed
    sampled = dict(temperature=1.0, max_new_tokens=8)
    reference = cli_json(server.address, "attribute", f"--prompt={story}", "--method=saliency", "--seed=7",
                         "--temperature=1.0", "--max_new_tokens=8")
    a = client.attribute(prompt=story, method="saliency", seed=7, **sampled)
    assert_tokens_equal(a.target_tokens, reference["target_tokens"])
    # A generation seed of the caller's own is kept, and beside a given target nothing is generated to seed.
    own = client.attribute(prompt=story, method="saliency", seed=7, generation=ac.GenerationSettings(seed=0, **sampled))
    seed_0 = [t.id for t in client.attribute(prompt=story, method="saliency", seed=0, **sampled).target_tokens]
    assert [t.id for t in own.target_tokens] == seed_0 != [t.id for t in a.target_tokens]
    assert "generation" not in client.attribute(prompt=PROMPT, target=" Yes", method="saliency", seed=7).unread_settings


# Misuse the client catches before sending: (call, options, exception, message). Without these checks, protobuf
# truncated floats (prompt=[1.5, 2] went out as token 1) or refused with a message that names no field
# ("Value out of range: -1", "'int' object is not iterable").
MISUSE = {
    "float_token_id": ("attribute", dict(prompt=[1.5, 2], target=" Yes"), TypeError, r"prompt\[0\]: .*integer.*1\.5"),
    "bool_token_id": ("attribute", dict(prompt=[5, True], target=" Yes"), TypeError, r"prompt\[1\]: .*True"),
    "float_target_id": ("logprobs", dict(prompt=PROMPT, target=[np.float64(3.0)]), TypeError, r"target\[0\]"),
    "text_as_ids": ("attribute", dict(prompt=["a", "b"], target=" Yes"), TypeError, r"prompt\[0\]"),
    "int_prompt": ("attribute", dict(prompt=123, target=" Yes"), TypeError, r"prompt: .*text .*token ids"),
    "int_target": ("attribute", dict(prompt=PROMPT, target=5), TypeError, r"target: "),
    "huge_token_id": ("attribute", dict(prompt=[10**30], target=" Yes"), ValueError, r"prompt\[0\]: .* is outside"),
    "text_n_steps": ("attribute", dict(prompt=PROMPT, target=" Yes", n_steps="8"), TypeError, r"^n_steps: "),
    "huge_n_steps": ("attribute", dict(prompt=PROMPT, target=" Yes", n_steps=2**40), ValueError,
                     r"^n_steps: .*outside"),
    "float_n_samples": ("attribute", dict(prompt=PROMPT, target=" Yes", n_samples=2.5), TypeError, r"^n_samples: "),
    "negative_seed": ("attribute", dict(prompt=PROMPT, target=" Yes", seed=-1), ValueError, r"^seed: -1 is outside"),
    "text_seed": ("attribute", dict(prompt=PROMPT, target=" Yes", seed="x"), TypeError, r"^seed: "),
    "text_stdev": ("attribute", dict(prompt=PROMPT, target=" Yes", stdev="0.1"), TypeError, r"^stdev: "),
    "huge_baseline": ("attribute", dict(prompt=PROMPT, target=" Yes", baseline=10**30), ValueError, r"^baseline: "),
    "bool_baseline": ("attribute", dict(prompt=PROMPT, target=" Yes", baseline=True), TypeError, r"^baseline: "),
    # str.isdigit() let these through to int(), whose message names no option.
    "double_minus_baseline": ("attribute", dict(prompt=PROMPT, target=" Yes", baseline="--5"), ValueError,
                              r"^baseline: "),
    "superscript_baseline": ("attribute", dict(prompt=PROMPT, target=" Yes", baseline="²"), ValueError,
                             r"^baseline: "),
    "short_feature_range": ("attribute", dict(prompt=PROMPT, target=" Yes", feature_range=(3,)), TypeError,
                            r"^feature_range: "),
    "text_choices": ("attribute", dict(prompt=PROMPT, choices=" Yes"), TypeError, r"^choices: .*list"),
    "text_matrix_flag": ("attribute", dict(prompt=PROMPT, target=" Yes", want_token_matrix="yes"), TypeError,
                         r"^want_token_matrix: "),
    "surrogate_prompt": ("attribute", dict(prompt="a\udc80", target=" Yes"), ValueError, r"^prompt: character 1"),
    "text_top_k": ("logprobs", dict(prompt=PROMPT, target=" red", top_k="3"), TypeError, r"^top_k: "),
    "float_max_new_tokens": ("generate", dict(prompt=PROMPT, max_new_tokens=2.0), TypeError, r"^max_new_tokens: "),
    "float_stop_token": ("generate", dict(prompt=PROMPT, stop_token_ids=[1.5]), TypeError, r"^stop_token_ids\[0\]: "),
    "int_model": ("generate", dict(prompt=PROMPT, model=3), TypeError, r"^model: "),
    "float_sampling_top_k": ("generate", dict(prompt=PROMPT, top_k=1.5), TypeError, r"^top_k: "),
    "text_stop": ("generate", dict(prompt=PROMPT, stop="###"), TypeError, r"^stop: .*list"),
    "int_stop": ("generate", dict(prompt=PROMPT, stop=["a", 3]), TypeError, r"^stop\[1\]: "),
    # protobuf raised a bare UnicodeEncodeError naming no option.
    "surrogate_stop": ("generate", dict(prompt=PROMPT, stop=["###", "a\udc80"]), ValueError,
                       r"^stop\[1\]: character 1"),
    "surrogate_model": ("generate", dict(prompt=PROMPT, model="m\udc80"), ValueError, r"^model: character 1"),
    # len() of a 0-d array raised "len() of unsized object"; a 2-D one went out as ids row by row.
    "zero_d_array_target": ("attribute", dict(prompt=PROMPT, target=np.array(5)), TypeError,
                            r"^target: .*1-D array.*shape \(\)"),
    "two_d_array_prompt": ("attribute", dict(prompt=np.array([[5, 6]]), target=" Yes"), TypeError,
                           r"^prompt: .*1-D array.*shape \(1, 2\)"),
    # A set's (or a mapping's keys') order is not one the caller chose.
    "set_prompt": ("attribute", dict(prompt={5, 6, 7}, target=" Yes"), TypeError, r"^prompt: .*not a set"),
    "dict_stop_tokens": ("generate", dict(prompt=PROMPT, stop_token_ids={2: "eos"}), TypeError,
                         r"^stop_token_ids: .*not a dict"),
    "count_as_flag": ("attribute", dict(prompt=PROMPT, target=" Yes", want_token_matrix=2), TypeError,
                      r"^want_token_matrix: .*not 2"),
    "bool_answer": ("attribute_components", dict(pairs=[("a", "b")], answer=True), TypeError, r"^answer: "),
    # As attribution-cli --pairs refuses them: a pair's other keys were passed over, one of two spellings dropped.
    "unknown_pair_key": ("attribute_components", dict(pairs=[{"clean": "a", "corrupted": "b", "answer": " x"}],
                                                      answer=" x"), ValueError, r'^pairs\[0\]: unknown key "answer"'),
    "pair_clean_twice": ("attribute_components", dict(pairs=[("a", "b"), {"clean": "a", "clean_ids": [5],
                                                                          "corrupted": "b"}], answer=" x"),
                         ValueError, r'^pairs\[1\]: give "clean" or "clean_ids", not both'),
    "text_component_steps": ("attribute_components", dict(pairs=[("a", "b")], answer=" x", n_steps="4"), TypeError,
                             r"^n_steps: "),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_misused_options_raise_naming_the_option_before_sending(client, server, case):
    call, options, error, message = MISUSE[case]
    with pytest.raises(error, match=message):
        getattr(client, call)(**options)


def test_a_request_id_gRPC_cannot_carry_is_a_value_error_naming_it(client, capfd):
    """gRPC metadata values are printable ASCII; gRPC itself refuses others as INTERNAL (a server failure,
    to the caller) and prints its own trace to stderr."""
    for bad in ("line\nbreak", "caf\u00e9", "tab\there"):
        with pytest.raises(ValueError, match=r"^request_id: character \d+ .*printable ASCII"):
            client.logprobs(prompt=PROMPT, target=" red", request_id=bad)
        with pytest.raises(ValueError, match=r"^request_id: "):
            client.attribute_stream(prompt=PROMPT, target=" red", method="saliency", request_id=bad).result()
    assert "x-request-id" not in capfd.readouterr().err
    with pytest.raises(ValueError, match=r"^bearer_token: "):
        ac.AttributionClient("127.0.0.1:1", bearer_token="token\n")
    assert client.logprobs(prompt=PROMPT, target=" red", request_id="ok id ~!").target


def test_request_ids_and_tokens_too_long_for_a_calls_metadata_are_refused_naming_them(client, server):
    """Metadata over the server's limit (gRPC's 8 KiB) makes gRPC drop the connection, failing the other calls
    on the channel too (RESOURCE_EXHAUSTED): request ids over 1 KiB and bearer tokens over 4 KiB are refused."""
    long_id = "x" * 1025
    with pytest.raises(ValueError, match=r"^request_id: 1025 characters, more than the 1024"):
        client.logprobs(prompt=PROMPT, target=" red", request_id=long_id)
    with pytest.raises(ValueError, match=r"^request_id: 1025 characters"):
        client.attribute_stream(prompt=PROMPT, target=" red", method="saliency", request_id=long_id)

    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            await c.generate(prompt=PROMPT, max_new_tokens=1, request_id=long_id)

    with pytest.raises(ValueError, match=r"^request_id: 1025 characters"):
        asyncio.run(run())
    with pytest.raises(ValueError, match=r"^bearer_token: 4097 characters, more than the 4096"):
        ac.AttributionClient(server.address, bearer_token="t" * 4097)
    assert client.logprobs(prompt=PROMPT, target=" red", request_id="y" * 1024).target


def test_a_target_that_is_not_text_is_a_type_error_naming_it():
    for bad in (53101, b"127.0.0.1:1", ac.ClientOptions(target=53101)):
        with pytest.raises(TypeError, match=r"^target: must be a str"):
            ac.AttributionClient(bad)

    async def run():
        ac.AsyncAttributionClient(53101)

    with pytest.raises(TypeError, match=r"^target: must be a str"):
        asyncio.run(run())


def test_an_async_stream_cancelled_while_it_starts_ends_cancelled(server):
    # A stream without a model asks ListModels first; a cancel() then used to be lost: the call started
    # after it and ran to its end.
    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            stream = c.generate_stream(prompt=PROMPT, max_new_tokens=8)
            result = asyncio.ensure_future(stream.result())
            await asyncio.sleep(0)  # the task now waits in the start, for ListModels' answer
            stream.cancel()
            with pytest.raises(ac.Cancelled):
                await result

    asyncio.run(run())


def test_closing_the_async_client_ends_its_calls_as_cancelled(client, server):
    """grpc.aio ends the calls a close() finds in flight with asyncio.CancelledError, which reads as the
    caller's task being cancelled, and refuses later calls with its UsageError: both are Cancelled. A task's
    own cancellation still raises asyncio.CancelledError."""
    slow = dict(model="default", prompt=PROMPT, target=" Yes", n_steps=1024)

    async def until_blocked():  # each call's task runs until it waits for the server's answer
        for _ in range(10):
            await asyncio.sleep(0)

    async def run():
        c = ac.AsyncAttributionClient(server.address, max_attempts=1)
        await c.health()
        unary = asyncio.ensure_future(c.attribute(**slow))
        stream = await c.attribute_stream(**slow)
        streamed = asyncio.ensure_future(stream.result())
        cancelled = asyncio.ensure_future(c.attribute(**slow))
        await until_blocked()
        cancelled.cancel()
        if sys.version_info < (3, 11):  # no Task.cancelling(): a cancel while closing reads as Cancelled
            await asyncio.gather(cancelled, return_exceptions=True)
        await c.close()
        outcomes = await asyncio.gather(unary, streamed, cancelled, return_exceptions=True)
        after = await asyncio.gather(c.health(), c.generate_stream(prompt=PROMPT), return_exceptions=True)
        return outcomes, after

    (unary, streamed, cancelled), after = asyncio.run(run())
    for error in (unary, streamed):
        assert isinstance(error, ac.Cancelled) and error.message == "the client was closed during the call", error
    assert isinstance(cancelled, asyncio.CancelledError)
    for error in after:
        assert isinstance(error, ac.Cancelled) and error.message == "the client is closed", error
    closed = ac.AttributionClient(server.address)
    closed.close()
    with pytest.raises(ac.Cancelled, match="the client is closed"):  # gRPC's own: a bare ValueError
        closed.health()
    assert client.health() == "SERVING"


def test_nan_or_negative_timeouts_are_refused_and_infinite_means_no_deadline(client, server):
    for bad in (float("nan"), -1.0, 0):  # 0 expired every call at once, DEADLINE_EXCEEDED naming nothing
        with pytest.raises(ValueError, match=r"^timeout: "):
            client.health(timeout=bad)
        with pytest.raises(ValueError, match=r"^timeout: "):
            client.attribute_stream(prompt=PROMPT, target=" Yes", timeout=bad)
        with pytest.raises(ValueError, match=r"^timeout: "):
            ac.AttributionClient(server.address, timeout=bad)
    with pytest.raises(TypeError, match=r"^timeout: "):
        client.health(timeout="5")
    with pytest.raises(ValueError, match=r"^connect_timeout: "):
        ac.AttributionClient(server.address, connect_timeout=float("nan"))

    async def nan_async():
        async with ac.AsyncAttributionClient(server.address) as c:
            await c.health(timeout=float("nan"))

    with pytest.raises(ValueError, match=r"^timeout: "):
        asyncio.run(nan_async())
    # gRPC turns now + inf into a deadline already past; the CLI and attribution-batch read it as none.
    assert client.health(timeout=float("inf")) == "SERVING"
    with ac.AttributionClient(server.address, timeout=1e300) as patient:
        assert patient.health() == "SERVING"


def test_backoffs_under_a_millisecond_are_refused_and_small_ones_are_written_as_decimals(server):
    # gRPC keeps whole milliseconds of a retry backoff: a zero one (or "1e-05s", not a duration to it) fails
    # every call of the channel with "Failed to create channel".
    for name in ("initial_backoff", "max_backoff", "connect_timeout"):
        with pytest.raises(ValueError, match=rf"^{name}: "):
            ac.AttributionClient(server.address, max_attempts=3, **{name: 0.0005})
    policy = json.loads(_channel.service_config(ac.ClientOptions(initial_backoff=0.00002 + 0.002)))
    assert policy["methodConfig"][0]["retryPolicy"]["initialBackoff"] == "0.002s"
    with ac.AttributionClient(server.address, max_attempts=3, initial_backoff=0.002, max_backoff=0.002) as c:
        assert c.health() == "SERVING"


def test_options_grpc_would_take_for_others_are_refused(server):
    """gRPC clamped max_attempts to [1, 5], took backoffs out of order, and read a port modulo 2**16
    ("127.0.0.1:112636" reached port 47100), as the C++ client's Connect refuses them."""
    for attempts in (0, 6):
        with pytest.raises(ValueError, match=rf"^max_attempts: {attempts} is outside \[1, 5\]"):
            ac.AttributionClient(server.address, max_attempts=attempts)
    with pytest.raises(ValueError, match=r"^initial_backoff: 3 s is above max_backoff \(2 s\)"):
        ac.AttributionClient(server.address, initial_backoff=3, max_backoff=2)
    port = server.address.rpartition(":")[2]
    wrapped = int(port) + 65536  # the server's port, modulo 2**16
    with pytest.raises(ValueError, match=rf"^target: port {wrapped} is outside \[1, 65535\]"):
        ac.AttributionClient(f"127.0.0.1:{wrapped}")
    with ac.AttributionClient(f"dns:///127.0.0.1:{port}") as c:
        assert c.health() == "SERVING"


def test_unavailable_is_retried_then_raised():
    config = json.loads(_channel.service_config(ac.ClientOptions(max_attempts=4)))
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 4
    retried = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    service = "attribution.v1.AttributionService"
    assert retried == {(service, "Attribute"), (service, "Generate"), (service, "Logprobs"),
                       (service, "AttributeComponents"), (service, "ListModels"), ("grpc.health.v1.Health", "Check"),
                       ("grpc.health.v1.Health", "List")}
    # Nothing listens on port 1: every attempt is UNAVAILABLE, so the call takes the backoffs.
    with ac.AttributionClient("127.0.0.1:1", max_attempts=3, initial_backoff=0.2, max_backoff=0.2) as c:
        started = time.monotonic()
        with pytest.raises(ac.Unavailable) as error:
            c.health(timeout=20)
        assert isinstance(error.value, ConnectionError)
        assert time.monotonic() - started >= 0.2


def test_a_stream_whose_server_dies_before_its_first_event_raises():
    # With a retry policy on streams, grpcio's blocking stream waited forever here, past its deadline and its
    # cancel(): streams are not retried. The server dies while it prefills a long prompt (1-2 s on 2 cores).
    dying = Server()
    events, outcome = [], {}
    try:
        with ac.AttributionClient(dying.address, max_attempts=4) as c:
            assert c.health() == "SERVING"  # connected
            stream = c.generate_stream("Once upon a time " * 700, max_new_tokens=4, timeout=5)

            def consume():
                try:
                    for event in stream:
                        events.append(event)
                except ac.AttributionError as e:
                    outcome["error"] = e

            reader = threading.Thread(target=consume, daemon=True)
            reader.start()
            time.sleep(0.3)
            dying.process.kill()
            assert not events, "the prompt's prefill ended before the kill: the test needs a longer prompt"
            reader.join(timeout=30)
            assert not reader.is_alive(), "the stream still waits 30 s after its server died (deadline 5 s)"
    finally:
        dying.stop()
    assert isinstance(outcome.get("error"), (ac.Unavailable, ac.DeadlineExceeded)), outcome


def test_the_default_models_lookup_keeps_to_the_calls_timeout():
    # A call that names no model asks ListModels first: with the client's own timeout (120 s), a call's 1 s
    # waited 120 s on a hung server, sync and async.
    hung = Server()
    try:
        with ac.AttributionClient(hung.address) as c:
            assert c.health() == "SERVING"  # connected
            hung.pause()
            started = time.monotonic()
            with pytest.raises(ac.DeadlineExceeded):
                c.generate(PROMPT, max_new_tokens=2, timeout=1)
            assert time.monotonic() - started < 10

            async def async_call():
                async with ac.AsyncAttributionClient(hung.address) as a:
                    stream = a.generate_stream(PROMPT, max_new_tokens=2, timeout=1)
                    async for _ in stream:
                        pass

            started = time.monotonic()
            with pytest.raises(ac.DeadlineExceeded):
                asyncio.run(async_call())
            assert time.monotonic() - started < 10
    finally:
        hung.process.send_signal(signal.SIGCONT)
        hung.stop()


def test_an_async_stream_cancelled_while_it_starts_ends_its_call(server):
    # A task cancelled while the stream was starting left the call to nobody: cancel() then did not reach it,
    # and the server ran the whole attribution (3 s), or until the client closed.
    async def cancel_while_starting():
        async with ac.AsyncAttributionClient(server.address) as c:
            stream = c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024, model="default",
                                        request_id="cancelled-while-starting")

            async def consume():
                async for _ in stream:
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0)
            task.cancel()
            stream.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(2)  # the client stays open: only cancel() can end the call

    asyncio.run(cancel_while_starting())

    def ended(lines):
        return [line for line in lines if line.get("request_id") == "cancelled-while-starting"]

    # Cancelled as it started, the call may not have reached the server at all: then it has no line.
    _, lines = server.log_lines(until=lambda lines: ended(lines), seconds=5)
    for line in ended(lines):
        assert line["code"] == "CANCELLED" and line["wall_s"] < 1, line


def test_an_async_stream_left_unfinished_ends_its_call(server):
    # An `async for` that returned at its first progress event left the call open until the client closed:
    # the server computed the whole request for no one, and the call held a max_concurrent_requests slot.
    async def leave_streams_unfinished():
        async with ac.AsyncAttributionClient(server.address) as c:
            async def peek(request_id):
                async for p in c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024, model="default",
                                                  request_id=request_id):
                    if p.rows_done:
                        return p

            await peek("left-unfinished")
            gc.collect()
            async with c.attribute_stream(prompt=PROMPT, target=" Yes", n_steps=1024, model="default",
                                          request_id="left-async-with") as stream:
                async for p in stream:
                    if p.rows_done:
                        break
            await asyncio.sleep(4)  # the client stays open: before, the calls ran to their end (OK) meanwhile

    asyncio.run(leave_streams_unfinished())
    names = {"left-unfinished", "left-async-with"}

    def ended(lines):
        return [line for line in lines if line.get("request_id") in names]

    _, lines = server.log_lines(until=lambda lines: len(ended(lines)) == 2, seconds=5)
    assert len(ended(lines)) == 2, lines
    for line in ended(lines):
        assert line["code"] == "CANCELLED" and line["wall_s"] < 3, line


def test_results_compare_equal_by_their_values(client):
    # The generated __eq__ asked a numpy array for one truth value: `a == b` raised ValueError, even for a
    # result and its copy, and so did `a in results`.
    a = client.attribute(prompt=PROMPT, target=" Yes", method="saliency", want_token_matrix=True)
    assert a == pickle.loads(pickle.dumps(a)) and a in [a]
    assert a != dataclasses.replace(a, sequence=a.sequence + 1)
    grid = ac.ComponentGrid(site="heads", granularity="layer_head", shape=(1, 2), axes=["layer", "head"],
                            values=np.array([0.5, np.nan]))
    assert grid == copy.deepcopy(grid) and grid in [grid]
    assert grid != dataclasses.replace(grid, values=np.array([0.5, 1.0]))
    assert grid != dataclasses.replace(grid, values=np.array([[0.5, np.nan]]))


def test_async_progress_takes_plain_and_async_functions_and_refuses_the_rest(server):
    async def run():
        async with ac.AsyncAttributionClient(server.address) as c:
            seen = []

            async def async_progress(p):
                seen.append(p)

            await c.attribute(prompt=PROMPT, target=" Yes", n_steps=64, progress=async_progress)
            with pytest.raises(TypeError, match="progress"):  # a bool was called: 'bool' object is not callable
                await c.attribute(prompt=PROMPT, target=" Yes", progress=True)
            return seen

    assert asyncio.run(run())  # an async def callback was never awaited: 0 calls and a RuntimeWarning


def test_an_async_client_used_in_another_event_loop_says_so(server):
    async def make():
        return ac.AsyncAttributionClient(server.address)

    client = asyncio.run(make())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(client.health())


def test_integer_tensors_are_taken_as_integers():
    # Captum's attribute(target=torch.tensor(ids)): "target[0]: must be an integer, not tensor(5)".
    torch = pytest.importorskip("torch")
    assert _convert.integer("n_steps", torch.tensor(5), (1, 10)) == 5
    for bad in (torch.tensor(5.0), torch.tensor(True)):
        with pytest.raises(TypeError, match="n_steps"):
            _convert.integer("n_steps", bad, (1, 10))
    assert _convert._ids("target", torch.tensor([3, 4])) == [3, 4]
    for not_ids in (torch.tensor(3), torch.tensor([[3, 4]])):  # "iteration over a 0-d tensor"
        with pytest.raises(TypeError, match="target: token ids must be a 1-D array"):
            _convert._ids("target", not_ids)


def test_a_slow_handshake_is_waited_for_up_to_the_connect_timeout(server):
    # A stopped server still completes TCP connections (the kernel's backlog) but sends no HTTP/2
    # SETTINGS until it runs again, as a busy or distant server answers late.
    # The server runs again after `stopped_for` seconds, or as soon as the call has returned. The impatient
    # call gets a long stop, so a loaded machine that starts its connection late cannot make it succeed.
    def call_while_stopped(stopped_for, **options):
        with ac.AttributionClient(server.address, max_attempts=1, **options) as c:
            server.pause()
            resume = threading.Timer(stopped_for, server.process.send_signal, (signal.SIGCONT,))
            resume.start()
            try:
                return c.health(timeout=20)
            finally:
                resume.cancel()
                server.process.send_signal(signal.SIGCONT)

    call_while_stopped(1.5)
    with pytest.raises(ac.Unavailable):
        call_while_stopped(15, connect_timeout=0.2)


def test_results_convert_to_numpy_dataframe_and_html(client):
    a = client.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation", want_token_matrix=True)
    assert a.to_numpy().shape == (len(a.features),) and a.to_numpy().dtype == np.float64
    frame = a.to_dataframe()
    assert list(frame.columns[:4]) == ["feature", "token_begin", "token_end", "attribution"]
    assert list(frame["feature"]) == a.feature_texts and frame.shape == (len(a.features), 5)
    np.testing.assert_array_equal(frame["attribution"].to_numpy(), a.sequence)
    html = a._repr_html_()
    assert " red" in html and "rgba(" in html and "<table" in html and "<script" not in html
    # LIME's lasso answers -0 for the features it drops; the table showed them as -0.000, as if negative.
    lime = client.attribute(prompt=PROMPT, target=" Yes", method="lime")
    assert np.any((lime.to_numpy() == 0) & np.signbit(lime.to_numpy()))
    assert "-0.000<" not in lime._repr_html_() and '"-0"' not in lime._repr_html_()


def test_a_notebooks_html_shows_a_large_token_matrix_in_part(client):
    # Every cell went into the notebook: 1,000 features x 2,000 target tokens made 273 MB of HTML.
    a = client.attribute(prompt=PROMPT, target=" Yes", method="saliency", want_token_matrix=True)
    features = [dataclasses.replace(a.features[0], text=f"f{i}") for i in range(1000)]
    tokens = [dataclasses.replace(a.target_tokens[0], text=f"t{i}") for i in range(2000)]
    large = dataclasses.replace(a, features=features, target_tokens=tokens, sequence=np.zeros(1000),
                                token_matrix=np.ones((2000, 1000)))
    html = large._repr_html_()
    assert len(html) < 3_000_000 and "the first 20 of 2000 target tokens" in html
    assert "the first" not in a._repr_html_()


def test_the_heatmap_shows_the_fixed_tokens_grey_as_the_clis_report_does(client):
    # Tokens outside feature_range were left out of the heatmap, which read as if the prompt were shorter.
    a = client.attribute(prompt=PROMPT, target=" Yes", method="saliency", feature_range=(5, 12))
    assert a.fixed_tokens and len(a.features) == 7
    heatmap = a._repr_html_().split("</table>")[0]
    shown = [unescape(text).replace("\xa0", " ") for text in re.findall(r"<td[^>]*>(.*?)<br>", heatmap)]
    assert shown == [t.text for t in a.prompt_tokens]
    fixed = re.findall(r'<td style="background:#eee;[^"]*" title="fixed: not a feature">', heatmap)
    assert len(fixed) == len(a.fixed_tokens)


def test_bytes_that_do_not_parse_are_invalid_argument_naming_the_type_and_field(client, server):
    """gRPC's callback API answers a request that does not parse before any handler runs (UNIMPLEMENTED,
    no message); the server makes that INVALID_ARGUMENT naming the message type and the field."""
    raw = grpc.insecure_channel(server.address)
    attribute = raw.unary_unary("/attribution.v1.AttributionService/Attribute")
    stream = raw.unary_stream("/attribution.v1.AttributionService/GenerateStream")
    bad_utf8_model = b"\x0a\x02\xff\xfe"  # field 1 (model, a string): two bytes that are not UTF-8
    truncated = b"\x0a\x05ab"  # field 1 says 5 bytes, 2 follow
    for call, request, expected in [
            (attribute, bad_utf8_model,
             "does not parse as attribution.v1.AttributeRequest: string field attribution.v1.AttributeRequest.model "
             "is not valid UTF-8"),
            (attribute, truncated, "does not parse as attribution.v1.AttributeRequest: its protobuf encoding is "
                                   "malformed"),
            (lambda r, timeout: list(stream(r, timeout=timeout)), bad_utf8_model,
             "does not parse as attribution.v1.GenerateRequest: string field attribution.v1.GenerateRequest.model")]:
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert expected in error.value.details()
    # A call cancelled before its message arrives reaches the server without one too: no bad input. A
    # client stream that never sends its message is one (the server reads Logprobs' single message).
    never_sent = threading.Event()

    def no_message():
        never_sent.wait()
        yield b""

    waiting = raw.stream_unary("/attribution.v1.AttributionService/Logprobs").future(no_message(), timeout=30)
    time.sleep(0.5)
    waiting.cancel()
    never_sent.set()
    for _ in range(100):  # and calls cancelled at once, some before their message left
        raw.unary_unary("/attribution.v1.AttributionService/Logprobs").future(b"\x0a\x01x", timeout=30).cancel()
    raw.close()
    assert client.logprobs(prompt=PROMPT, target=" red").target  # the server goes on

    def refused(lines):
        return [line for line in lines
                if line.get("code") == "INVALID_ARGUMENT" and "does not parse" in line.get("message", "")]

    def cancelled_early(lines):
        return any(line.get("code") == "CANCELLED" and "before its request message arrived" in line.get("message", "")
                   for line in lines)

    text, lines = server.log_lines(until=lambda lines: len(refused(lines)) >= 3 and cancelled_early(lines))
    assert sorted(line["rpc"] for line in refused(lines)) == ["Attribute", "Attribute", "GenerateStream"]
    assert cancelled_early(lines)
    assert "invalid UTF-8" not in text.replace("not valid UTF-8", "")  # protobuf's own complaint stays off stderr


def test_calls_to_this_machine_bypass_a_proxy_from_the_environment(server, monkeypatch):
    # Nothing listens on port 1: a call sent through the proxy would fail UNAVAILABLE (as the C++ client's did).
    for variable in ("http_proxy", "https_proxy", "grpc_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:1")
    for host in ("127.0.0.1", "localhost", "LOCALHOST", "[::ffff:127.0.0.1]"):
        with ac.AttributionClient(server.address.replace("127.0.0.1", host), max_attempts=1, timeout=20) as proxied:
            assert proxied.health() == "SERVING", host
    # Only this machine's addresses: a name that starts like one still follows the proxy rules.
    from attribution_client import _channel
    assert not _channel.is_loopback("127.example.com:50051")
    assert not _channel.is_loopback("dns:///replicas.svc:50051")
    assert not _channel.is_loopback("ipv4:127.0.0.1:1,10.0.0.2:2")
    assert _channel.is_loopback("ipv6:[::1]:50051") and _channel.is_loopback("unix:/tmp/attribution.sock")
