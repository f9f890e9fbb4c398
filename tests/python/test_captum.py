# SPDX-License-Identifier: Apache-2.0
"""Captum interoperability on the committed default model: to_captum() equals the LLMAttributionResult
Captum's own LLMAttribution computes in-process with transformers, its plots render headless; and
Captum's RemoteLLMAttribution with AttributionProvider (the server's Generate / Logprobs) equals
Captum's local LLMAttribution (FeatureAblation, ShapleyValueSampling with a fixed seed).

Captum's local reference runs with use_cached_outputs=False: its default KV-cache path
(_update_model_kwargs_for_generation) scores later target tokens wrongly under transformers 5.23 (on
this model FeatureAblation's attributions move by up to 6 nats), while the uncached token-by-token
path and the one-pass teacher-forced path (forward_in_tokens=False) agree with each other and with
transformers' own log-softmax."""
from __future__ import annotations

import io
import itertools
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from captum.attr import (FeatureAblation, IntegratedGradients, LLMAttribution, LLMAttributionResult,  # noqa: E402
                         RemoteLLMAttribution, ShapleyValueSampling, TextTemplateInput, TextTokenInput)

import attribution_client as ac  # noqa: E402
from attribution_client.captum import AttributionProvider  # noqa: E402
from conftest import DEFAULT_MODEL, PROMPT  # noqa: E402

TEMPLATE = "{} lives in {}. The kettle is {}. The box is huge. Q: Is the kettle {}? A:"
VALUES = ["Ann", "York", "red", "warm"]
BASELINES = ["Bob", "Leeds", "blue", "big"]


@pytest.fixture(scope="module")
def model():
    m = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def client(server):
    with ac.AttributionClient(server.address) as c:
        yield c


def assert_results_equal(ours: LLMAttributionResult, theirs: LLMAttributionResult, atol: float) -> None:
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens
    assert ours.seq_attr.shape == theirs.seq_attr.shape and ours.seq_attr.dtype == theirs.seq_attr.dtype
    torch.testing.assert_close(ours.seq_attr, theirs.seq_attr, atol=atol, rtol=0)
    if theirs.token_attr is None:
        assert ours.token_attr is None
    else:
        assert ours.token_attr.shape == theirs.token_attr.shape
        torch.testing.assert_close(ours.token_attr, theirs.token_attr, atol=atol, rtol=0)


@pytest.mark.parametrize("special_tokens_as_features", [False, True])
def test_to_captum_equals_captum_llm_attribution(client, model, tokenizer, special_tokens_as_features):
    target = [tokenizer.convert_tokens_to_ids("▁Yes"), tokenizer.eos_token_id]
    ours = client.attribute(prompt=PROMPT, target=target, method="feature_ablation", want_token_matrix=True,
                            include_special_tokens=special_tokens_as_features)
    skip = None if special_tokens_as_features else [tokenizer.bos_token_id]
    theirs = LLMAttribution(FeatureAblation(model), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer, skip_tokens=skip), target=torch.tensor(target), use_cached_outputs=False)
    assert [t.id for t in ours.prompt_tokens] == tokenizer.encode(PROMPT)
    assert_results_equal(ours.to_captum(tokenizer), theirs, atol=1e-5)
    # Without a tokenizer: the server's readable token texts, the same numbers.
    plain = ours.to_captum()
    assert plain.input_tokens == ours.feature_texts and plain.output_tokens == [" Yes", "</s>"]
    torch.testing.assert_close(plain.seq_attr, theirs.seq_attr, atol=1e-5, rtol=0)
    # output_probs (Captum's LLMAttribution leaves it unset): p(token | before), as transformers has it.
    with torch.no_grad():
        ids = torch.tensor([tokenizer.encode(PROMPT) + target])
        log_probs = torch.log_softmax(model(ids).logits[0, -len(target) - 1:-1], dim=-1)
    expected = log_probs[torch.arange(len(target)), torch.tensor(target)].exp()
    torch.testing.assert_close(plain.output_probs, expected, atol=1e-5, rtol=0)


def test_captum_plots_render_headless(client, tokenizer):
    result = client.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation",
                              want_token_matrix=True).to_captum(tokenizer)
    for plot in (result.plot_seq_attr, result.plot_token_attr):
        figure, axes = plot()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG") and axes.get_xticklabels()
        matplotlib.pyplot.close(figure)


@pytest.mark.parametrize("method", ["feature_ablation", "shapley_value_sampling"])
def test_remote_llm_attribution_equals_local(client, model, tokenizer, method):
    def run(attribution_class, forward, *extra):
        algorithm = (FeatureAblation(forward) if method == "feature_ablation" else ShapleyValueSampling(forward))
        llm = attribution_class(algorithm, tokenizer, *extra)
        torch.manual_seed(1234)
        kwargs = {} if method == "feature_ablation" else {"n_samples": 4}
        if attribution_class is LLMAttribution:
            kwargs["use_cached_outputs"] = False
        return llm.attribute(TextTemplateInput(TEMPLATE, values=VALUES, baselines=BASELINES), target="Yes it is",
                             **kwargs)

    provider = AttributionProvider(client)
    remote = run(RemoteLLMAttribution, RemoteLLMAttribution.placeholder_model, provider)
    local = run(LLMAttribution, model)
    assert remote.input_tokens == local.input_tokens == VALUES
    assert remote.output_tokens == local.output_tokens
    assert remote.seq_attr.abs().max() > 0.1  # the explanation says something
    torch.testing.assert_close(remote.seq_attr, local.seq_attr, atol=1e-4, rtol=0)
    torch.testing.assert_close(remote.token_attr, local.token_attr, atol=1e-4, rtol=0)


def test_provider_answers_as_the_service(client, tokenizer):
    provider = AttributionProvider(client, "default")
    assert provider.api_url == client.options.target
    assert provider.generate(PROMPT, max_new_tokens=3, do_sample=False) == client.generate(
        prompt=PROMPT, max_new_tokens=3).text
    log_probs = provider.get_logprobs(PROMPT, "Yes it is", tokenizer)
    assert len(log_probs) == len(tokenizer.encode("Yes it is", add_special_tokens=False))
    np.testing.assert_allclose(log_probs, client.logprobs(prompt=PROMPT, target="Yes it is",
                                                          target_tokenization="separate").log_probs)
    with pytest.raises(ValueError):
        provider.get_logprobs(PROMPT, "", tokenizer)


def test_provider_sends_captums_tokens_and_refuses_generate_arguments_it_cannot_honour(client, tokenizer):
    provider = AttributionProvider(client, "default")
    # The prompt as Captum's tokenizer reads it, whatever the server's own reading of the text, with one bos: a
    # remote TextTokenInput arrives as "<s> Ann ...", which the server read as two bos and a "▁" more than
    # transformers.
    for text, ids in [("<s> " + PROMPT, tokenizer.encode(PROMPT)), (" " + PROMPT, tokenizer.encode(" " + PROMPT))]:
        np.testing.assert_allclose(provider.get_logprobs(text, "Yes", tokenizer),
                                   client.logprobs(prompt=ids,
                                                   target=tokenizer.encode("Yes", add_special_tokens=False)).log_probs)
    # Dropped before: num_beams, repetition_penalty answered greedily; max_new_tokens=0 became 25, and
    # do_sample with temperature 0 sampled at 1.
    for gen_args, named in [({"num_beams": 2, "repetition_penalty": 5.0}, "num_beams, repetition_penalty"),
                            ({"max_new_tokens": 0}, "max_new_tokens"),
                            ({"do_sample": True, "temperature": 0.0}, "temperature")]:
        with pytest.raises(ValueError, match=named):
            provider.generate(PROMPT, **gen_args)
    # Captum's defaults, transformers' harmless pad_token_id, and eos_token_id as the stop tokens.
    assert provider.generate(PROMPT, max_new_tokens=3, do_sample=False, temperature=None, top_p=None,
                             pad_token_id=tokenizer.eos_token_id) == client.generate(prompt=PROMPT,
                                                                                     max_new_tokens=3).text
    assert AttributionProvider._generation({"eos_token_id": 7}).stop_token_ids == [7]
    assert AttributionProvider._generation({"eos_token_id": [7, 9]}).stop_token_ids == [7, 9]
    assert AttributionProvider._generation({"eos_token_id": torch.tensor([7, 9])}).stop_token_ids == [7, 9]
    with pytest.raises(TypeError, match="eos_token_id"):  # int() took tensor(2.0) as 2
        AttributionProvider._generation({"eos_token_id": torch.tensor(2.0)})


def test_tolerance_driven_integrated_gradients_reaches_captums_512_steps(client, model, tokenizer):
    # Seed 001 asks Captum for 512 Gauss-Legendre steps; with a tolerance the server refines nested
    # orders of Fejér's second rule (the rule when none is given) until it is sure of 1e-3, computing each point
    # once.
    target = [tokenizer.convert_tokens_to_ids("▁Yes")]
    ours = client.attribute(prompt=PROMPT, target=target, method="integrated_gradients", baseline=0,
                            include_special_tokens=True, completeness_tolerance=1e-3, n_steps=512)
    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    embed = model.get_input_embeddings()
    model.requires_grad_(False)

    def target_log_prob(prompt_embeds):  # [n, P, hidden] -> [n]
        n, p = prompt_embeds.shape[0], prompt.shape[1]
        x = torch.cat([prompt_embeds, embed(torch.tensor([target])).expand(n, -1, -1)], 1)
        return torch.log_softmax(model(inputs_embeds=x).logits[:, p - 1], -1)[:, target[0]]

    theirs = IntegratedGradients(target_log_prob).attribute(
        embed(prompt), baselines=embed(torch.zeros_like(prompt)), n_steps=512, method="gausslegendre",
        internal_batch_size=128).sum(-1)[0].detach().numpy()
    assert ours.tolerance_met
    assert np.abs(ours.to_numpy() - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert ours.integration_steps in (7, 15, 31, 63, 127, 255, 511)
    assert ours.stats.rows == ours.integration_steps + 2  # every point once, and the path's two ends scored


def target_log_prob(model, prompt_ids, target):
    """log p(target | prompt) by one transformers forward (the reference for span replacement)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([prompt_ids + target])).logits[0], dim=-1)
    return sum(log_probs[len(prompt_ids) - 1 + t, token].item() for t, token in enumerate(target))


def test_contrastive_answers_give_the_foils_log_probs_where_the_objective_scores_them(client, model, tokenizer):
    # The objective subtracts each foil token's log-prob where the target's token is scored (after the target's
    # tokens before it); the answer gave the target's log-probs only, so the two terms could not be told apart.
    ids = tokenizer.encode(PROMPT)
    target = [tokenizer.convert_tokens_to_ids("▁Yes"), tokenizer.eos_token_id]
    foil = [tokenizer.convert_tokens_to_ids("▁No"), tokenizer.convert_tokens_to_ids("▁red")]
    ours = client.attribute(prompt=PROMPT, target=target, foil=foil, method="feature_ablation")
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids + target])).logits[0].double(), dim=-1)
    positions = [len(ids) - 1 + t for t in range(len(target))]
    expected_target = [log_probs[p, token].item() for p, token in zip(positions, target)]
    expected_foil = [log_probs[p, token].item() for p, token in zip(positions, foil)]
    assert [t.id for t in ours.foil_tokens] == foil
    np.testing.assert_allclose([t.log_prob for t in ours.target_tokens], expected_target, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose([t.log_prob for t in ours.foil_tokens], expected_foil, atol=1e-4, rtol=1e-5)
    assert abs(ours.objective - (sum(expected_target) - sum(expected_foil))) < 1e-4


def test_an_empty_group_baseline_deletes_the_span(client, model, tokenizer):
    # A group's baseline given but empty ("" or []) deletes the span: the reference scores the prompt
    # without it. Beside it: a baseline of another length, and none (token 0 once per position).
    ids = tokenizer.encode(PROMPT)
    target = [tokenizer.convert_tokens_to_ids("▁Yes"), tokenizer.eos_token_id]
    blue = tokenizer.encode(" blue", add_special_tokens=False)
    groups = [ac.FeatureGroup(1, 6), ac.FeatureGroup(9, 11, baseline=""),
              ac.FeatureGroup(11, 15, baseline=blue), ac.FeatureGroup(20, 22, baseline=[])]
    replaced = [[0] * 5, [], blue, []]
    ours = client.attribute(prompt=PROMPT, target=target, method="feature_ablation", feature_groups=groups)
    full = target_log_prob(model, ids, target)

    def ablated(begin, end, baseline):
        return full - target_log_prob(model, ids[:begin] + baseline + ids[end:], target)

    expected = [ablated(g.token_begin, g.token_end, r) for g, r in zip(groups, replaced)]
    # " kettle warm" matters when deleted, not when replaced by token 0 (what an empty baseline was read as).
    assert abs(expected[3]) > 0.05 and abs(expected[3] - ablated(20, 22, [0, 0])) > 0.05
    np.testing.assert_allclose(ours.sequence, expected, atol=1e-5, rtol=0)


def test_deleting_every_feature_leaves_the_special_tokens(client, model, tokenizer):
    # Exact Shapley values over three groups that delete the whole prompt but its bos: the empty
    # coalition scores the target after bos alone, and the faithfulness curves' `empty` is that row.
    ids = tokenizer.encode(PROMPT)
    assert ids[0] == tokenizer.bos_token_id
    target = [tokenizer.convert_tokens_to_ids("▁Yes")]
    cuts = [(1, 6), (6, 15), (15, len(ids))]
    ours = client.attribute(prompt=PROMPT, target=target, method="shapley_values", want_faithfulness=True,
                            feature_groups=[ac.FeatureGroup(b, e, baseline=[]) for b, e in cuts])

    def value(present):
        kept = ids[:1] + [t for (b, e), p in zip(cuts, present) if p for t in ids[b:e]]
        return target_log_prob(model, kept, target)

    n = len(cuts)
    expected = np.zeros(n)
    for coalition in itertools.product([False, True], repeat=n):
        for f in range(n):
            if coalition[f]:
                continue
            size = sum(coalition)
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            expected[f] += weight * (value([c or g == f for g, c in enumerate(coalition)]) - value(coalition))
    np.testing.assert_allclose(ours.sequence, expected, atol=1e-5, rtol=0)
    assert ours.faithfulness.empty == pytest.approx(math.exp(value([False] * n)), abs=1e-6)


def _sample_seed(seed: int, sample: int) -> int:
    """The server's per-sample noise seed (engine/scheduler/path_embeddings.cc SampleSeed), as torch takes it."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15 * (sample + 1)) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return z - (1 << 64) if z >= 1 << 63 else z


def test_gradient_shap_moves_every_feature_as_captums_rule_does(client, model, tokenizer):
    """Captum's GradientShap: E[(x + e - b) . grad f(b + a (x + e - b))], the noise e on every input it attributes.
    The server's own draws (alphas from the seed, each sample's noise from SampleSeed) put through that rule in
    PyTorch give its answer; a token equal to its baseline is moved too (it got no noise, and exactly 0)."""
    prompt = tokenizer(PROMPT)["input_ids"]
    target = tokenizer(PROMPT + " Yes")["input_ids"][len(prompt):]
    baseline, stdev, seed, n = prompt[4], 0.3, 12345, 4
    assert prompt.count(baseline) >= 1
    result = client.attribute(model="default", prompt=prompt, target=target, method="gradient_shap",
                              baseline=baseline, stdev=stdev, seed=seed, n_samples=n, include_special_tokens=True)
    embed = model.get_input_embeddings()
    target_embeds = embed(torch.tensor([target])).detach()

    def objective(prompt_embeds):
        logits = model(inputs_embeds=torch.cat([prompt_embeds, target_embeds], 1)).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        return log_probs[torch.arange(len(target)), torch.tensor(target)].sum()

    x = embed(torch.tensor(prompt)).detach()
    b = embed(torch.full((len(prompt),), baseline)).detach()
    alphas = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = torch.zeros(len(prompt))
    for s in range(n):
        noise = torch.randn(len(prompt) + len(target), x.size(1),
                            generator=torch.Generator().manual_seed(_sample_seed(seed, s)))[:len(prompt)]
        end = x + stdev * noise
        point = (b + alphas[s].float() * (end - b)).unsqueeze(0).requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(point), point)
        expected += ((end - b) * gradient[0]).sum(-1).detach() / n
    ours = torch.tensor(result.sequence, dtype=torch.float32)
    torch.testing.assert_close(ours, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)
    assert abs(ours[4].item()) > 1e-3  # the token equal to its baseline


def test_deletions_that_leave_no_prompt_or_a_gradient_method_are_refused(client, tokenizer):
    # Without bos nothing is left before the target: INVALID_ARGUMENT, not a row without a prompt.
    with pytest.raises(ac.InvalidArgument, match=r"feature_groups\[\]\.baseline: .*leave the prompt empty"):
        client.attribute(prompt=PROMPT, no_special_tokens=True, target=" Yes", method="feature_ablation",
                         feature_groups=[ac.FeatureGroup(0, len(tokenizer.encode(PROMPT)) - 1, baseline="")])
    # Gradient methods interpolate one baseline token per position: an empty baseline is none.
    with pytest.raises(ac.InvalidArgument, match=r"feature_groups\[0\]\.baseline: gradient methods need one"):
        client.attribute(prompt=PROMPT, target=" Yes", method="integrated_gradients",
                         feature_groups=[ac.FeatureGroup(1, 3, baseline=[])])
