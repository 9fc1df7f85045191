"""generation.py: the sampler's filters and normaliser, the padding mask, and the Engine against plain
uncached generation (greedy and seeded sampling, past block_size), GPT.generate, prefix reuse after a
rollback against a fresh prefill, stop conditions, and the greedy ids of a checkpoint written by an
earlier version (tests/fixtures/run_v0)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from generation import Engine, build_normalizer, common_prefix, mask_padding, sample_next, sampling_probs
from model import GPT
from run_dir import load_run
from variations.registry import create

from conftest import ROOT, tiny_config

FIXTURE = ROOT / "tests" / "fixtures" / "run_v0"
# (attention, position, output normaliser): the paths the cache takes through the model
MODELS = [("causal", "learned", "softmax"), ("causal", "rope", "relumax"), ("causal", "alibi", "softmax"),
          ("linear", "rope", "softmax")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Models this small run one token at a time; thread hand-offs would cost more than the maths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                       vocab_limit=None) -> torch.Tensor:
    """Generation written out without a cache: each step runs the last block_size ids (nanoGPT)."""
    normalizer = create("softmax", model.config.softmax_variant_output, model.config)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.block_size:])
            last = logits[:, -1, :].clone()  # (B, V)
            if vocab_limit is not None:
                last[:, vocab_limit:] = float("-inf")
            idx = torch.cat((idx, sample_next(last, temperature, top_k, top_p, generator, normalizer)), dim=1)
    return idx


def tiny_model(attention="causal", position="learned", output="softmax", **kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(tiny_config(attention_variant=attention, position_variant=position, softmax_variant_output=output,
                            n_kv_head=2, **kw)).eval()
    with torch.no_grad():  # sharper than GPT-2 init: greedy ids far from ties, sampled ids still varied
        model.lm_head.weight.mul_(5)
    return model


# ---------------------------------------------------------------------------------------- sampling
def test_sample_next_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert sample_next(logits, temperature=0).item() == 0
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(300)}
    assert draws == {0, 1}
    draws = {sample_next(logits, 1.0, top_p=0.7, generator=gen).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    draws = {sample_next(logits, 1.0, top_p=0.4, generator=gen).item() for _ in range(100)}
    assert draws == {0}
    draws = {sample_next(logits, 1.0, generator=gen).item() for _ in range(2000)}
    assert draws == {0, 1, 2, 3}


def test_sampling_probs_filters_and_renormalises():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.testing.assert_close(sampling_probs(logits), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.testing.assert_close(sampling_probs(logits, top_k=2), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(sampling_probs(logits, top_p=0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    hot = sampling_probs(logits, temperature=2.0)
    want = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    torch.testing.assert_close(hot, (want / want.sum())[None])


def test_output_normaliser_with_all_zero_weights_falls_back_to_softmax():
    relumax = create("softmax", "relumax", tiny_config())
    logits = torch.tensor([[-3.0, -1.0, -2.0]])  # relu of every logit is 0
    draws = {sample_next(logits, 1.0, normalizer=relumax, generator=torch.Generator().manual_seed(0)).item()
             for _ in range(50)}
    assert draws <= {0, 1, 2} and 1 in draws


def test_mask_padding():
    logits = torch.zeros(2, 5)
    masked = mask_padding(logits, 3)
    assert torch.isinf(masked[:, 3:]).all() and (masked[:, :3] == 0).all() and (logits == 0).all()  # a copy
    assert mask_padding(logits, 5) is logits and mask_padding(logits, None) is logits


def test_generate_respects_vocab_limit():
    m = GPT(tiny_config()).eval()
    with torch.no_grad():
        m.lm_head.weight[30:] += 5.0  # make the padding ids the most likely
    out = m.generate(torch.zeros(1, 1, dtype=torch.long), 20, temperature=1.0, vocab_limit=30)
    assert out.max() < 30


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, None, None), (1.0, None, None), (2.0, 40, 0.99)])
def test_padding_mask_never_emits_a_padding_id(use_cache, temperature, top_k, top_p):
    m = GPT(tiny_config()).eval()
    with torch.no_grad():
        m.lm_head.weight[30:] += 5.0  # the padding ids are the most likely
    engine = Engine(m, vocab_limit=30, use_cache=use_cache)
    ids, _ = engine.generate(torch.zeros(3, 2, dtype=torch.long), 40, temperature, top_k, top_p,
                             torch.Generator().manual_seed(0))  # 42 > block_size 16: the window slides
    assert ids.max() < 30


# ---------------------------------------------------------------------------------------- engine = reference
@pytest.mark.parametrize("attention,position,output", MODELS)
@pytest.mark.parametrize("prompt_len", [3, 16, 21])  # within, exactly at and past block_size 16
def test_engine_equals_uncached_reference_greedy_and_sampled(attention, position, output, prompt_len):
    model = tiny_model(attention, position, output)
    prompt = torch.randint(0, 37, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n_new = model.config.block_size + 8  # runs past the context window, where the window slides
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 10, "top_p": 0.9}):
        want = reference_generate(model, prompt, n_new, generator=torch.Generator().manual_seed(1),
                                  vocab_limit=30, **sampling)
        for use_cache in (True, False):
            engine = Engine(model, vocab_limit=30, use_cache=use_cache)
            got, why = engine.generate(prompt, n_new, generator=torch.Generator().manual_seed(1), **sampling)
            assert torch.equal(got, want), (use_cache, sampling)
            assert why == "max_new_tokens"
            via_model = model.generate(prompt, n_new, use_cache=use_cache, vocab_limit=30,
                                       generator=torch.Generator().manual_seed(1), **sampling)
            assert torch.equal(via_model, want), (use_cache, sampling)
        if sampling["temperature"]:
            assert len(set(want[0, prompt_len:].tolist())) > 3  # really sampled


def test_step_by_step_equals_generate_and_spends_no_forward_after_the_last_token():
    model = tiny_model()
    prompt = torch.randint(0, 37, (1, 5))
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        engine = Engine(model)
        first = engine.prefill(prompt)  # (1, V)
        steps = [engine.step(temperature=0.0) for _ in range(4)]
    finally:
        hook.remove()
    assert len(calls) == 1 + 3  # the prompt, then one position per step but the last
    torch.testing.assert_close(steps[0][0], first)
    want = model.generate(prompt, 4, temperature=0)
    assert torch.equal(engine.ids, want) and torch.equal(torch.cat([s[1] for s in steps], 1), want[:, 5:])
    assert engine.cached.size(1) == 5 + 3 and torch.equal(engine.cached, want[:, :8])


# ---------------------------------------------------------------------------------------- prefix reuse
@pytest.mark.parametrize("attention,position,output", MODELS)
def test_prefix_reuse_after_rollback_equals_a_fresh_prefill(attention, position, output):
    model = tiny_model(attention, position, output)
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(0, 37, (1, 6), generator=gen)
    engine = Engine(model, vocab_limit=30)
    ids, _ = engine.generate(first, 5, temperature=1.0, generator=gen)  # 6 + 5 ids; the last never cached
    assert engine.cached.size(1) == 10

    def check(prompt: torch.Tensor, reused: int):
        logits = engine.prefill(prompt)
        fresh = Engine(model, vocab_limit=30)
        torch.testing.assert_close(logits, fresh.prefill(prompt), rtol=0, atol=1e-5)
        assert (engine.reused, engine.prefilled) == (reused, prompt.size(1) - reused)
        assert fresh.reused == 0
        for sampling in ({"temperature": 0.0}, {"temperature": 1.0}):  # the same ids from here on, too
            a, _ = engine.generate(prompt, 8, generator=torch.Generator().manual_seed(2), **sampling)
            b, _ = fresh.generate(prompt, 8, generator=torch.Generator().manual_seed(2), **sampling)
            assert torch.equal(a, b)
            engine.prefill(prompt)  # back to the prompt for the next round

    # the next turn extends the context: everything cached is reused
    longer = torch.cat((ids, torch.randint(0, 30, (1, 3), generator=gen)), dim=1)
    check(longer, reused=10)
    # a prompt that differs after 4 ids: rolled back to them
    other = torch.cat((longer[:, :4], (longer[:, 4:9] + 1) % 30), dim=1)
    check(other, reused=4)
    # a prefix of the cached ids: the last one is rerun for its logits
    check(other[:, :7], reused=6)
    # an explicit rollback keeps the first n ids
    engine.prefill(longer)
    logits = engine.rollback(5)
    assert torch.equal(engine.ids, longer[:, :5]) and engine.reused == 4
    torch.testing.assert_close(logits, Engine(model).prefill(longer[:, :5]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot roll back to 6"):
        engine.rollback(6)


def test_prefill_after_the_window_slid_and_with_a_new_batch_size():
    model = tiny_model()
    engine = Engine(model)
    prompt = torch.randint(0, 37, (2, 20))  # past block_size 16: the cache holds the last 16 ids
    engine.generate(prompt, 6, temperature=0)
    assert torch.equal(engine.cached, prompt[:, -16:])
    again = prompt[:, 4:14]  # the start of what the cache holds
    torch.testing.assert_close(engine.prefill(again), Engine(model).prefill(again), rtol=0, atol=1e-5)
    assert engine.reused == 9
    single = prompt[:1, 4:10]  # one row: new caches
    torch.testing.assert_close(engine.prefill(single), Engine(model).prefill(single), rtol=0, atol=1e-5)
    assert engine.reused == 0 and engine.cached.shape == (1, 6)


def test_common_prefix():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6]])
    assert common_prefix(a, a) == 4 and common_prefix(a, a[:, :2]) == 2
    assert common_prefix(a, torch.tensor([[1, 2, 3, 9], [1, 9, 5, 6]])) == 1
    assert common_prefix(a, a[:1]) == 0  # another batch size
    assert common_prefix(a[:, :0], a) == 0


# ---------------------------------------------------------------------------------------- stops
def test_stop_ids_and_on_step():
    model = tiny_model()
    prompt = torch.randint(0, 37, (1, 4))
    greedy = model.generate(prompt, 10, temperature=0)[0, 4:].tolist()
    stop = greedy[3]
    first = greedy.index(stop)
    seen = []
    ids, why = Engine(model).generate(prompt, 10, temperature=0, stop_ids=[stop],
                                      on_step=lambda logits, next_ids: seen.append(next_ids.item()))
    assert why == "stop" and ids[0, 4:].tolist() == greedy[:first + 1]  # the stop id ends the output
    assert seen == greedy[:first]  # on_step never saw it
    calls = []
    ids, why = Engine(model).generate(prompt, 10, temperature=0,
                                      on_step=lambda logits, next_ids: calls.append(1) or len(calls) == 2)
    assert why == "stop" and ids[0, 4:].tolist() == greedy[:2]
    ids, why = Engine(model).generate(prompt, 3, temperature=0, stop_ids=[37])
    assert why == "max_new_tokens" and ids[0, 4:].tolist() == greedy[:3]
    # a batch stops when every row has sampled a stop id
    batch = torch.cat((prompt, torch.randint(0, 37, (1, 4))))
    rows = model.generate(batch, 10, temperature=0)[:, 4:].tolist()
    stops = {rows[0][2], rows[1][5]}
    ids, why = Engine(model).generate(batch, 10, temperature=0, stop_ids=stops)
    n = max(min(i for i, t in enumerate(r) if t in stops) for r in rows) + 1
    assert why == "stop" and ids[:, 4:].tolist() == [r[:n] for r in rows]


def test_errors_and_normaliser():
    model = tiny_model(output="relumax")
    engine = Engine(model)
    assert engine.normalizer.registry_name == "relumax" == build_normalizer(model).registry_name
    with pytest.raises(ValueError, match="prefill a prompt"):
        engine.step()
    with pytest.raises(ValueError, match="empty prompt"):
        engine.prefill([])
    assert engine.prefill([1, 2, 3]).shape == (1, 37)  # a list of ints is one row


# ---------------------------------------------------------------------------------------- old checkpoint
def test_checkpoint_of_an_earlier_version_gives_its_greedy_ids():
    """tests/fixtures/run_v0 was written by main at d118a6c, with the greedy ids of its GPT.generate:
    the prompt, then 12 new ids; block_size 16, so the window slides after 3 of them."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    model, tok, _ = load_run(FIXTURE)
    prompt = tok.encode(expected["prompt"])
    assert model.config.block_size < len(prompt) + 12
    with torch.no_grad():  # the forward pass first: a mismatch there is no generation bug
        logits, _ = model(torch.tensor([prompt]), all_logits=True)  # (1, T, V)
    assert logits.sum().item() == pytest.approx(expected["logits_sum"], abs=1e-4)
    torch.testing.assert_close(logits[0, 0, :8], torch.tensor(expected["logits_first"]), rtol=0, atol=1e-5)
    for use_cache in (True, False):
        engine = Engine(model, vocab_limit=tok.vocab_size, use_cache=use_cache)
        ids, _ = engine.generate(prompt, 12, temperature=0)
        assert ids[0].tolist() == expected["greedy_ids"]
        out = model.generate(torch.tensor([prompt]), 12, temperature=0, use_cache=use_cache)
        assert out[0].tolist() == expected["greedy_ids"]


def test_generation_does_not_import_the_model():
    """model.py imports generation.py (GPT.generate), so the reverse would be an import circle."""
    tree = ast.parse(Path(ROOT / "generation.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"model", "sample", "chat"} & imported


# ---------------------------------------------------------------------------------------- sampling settings
@pytest.mark.parametrize("name, value, message", [
    ("temperature", "nan", "needs a number >= 0 (0: greedy), got 'nan'"),
    ("temperature", float("inf"), "needs a number >= 0 (0: greedy), got inf"),
    ("temperature", -1.0, "needs a number >= 0 (0: greedy), got -1.0"),
    ("top_k", -5, "needs an integer >= 0 (0: every token), got -5"),
    ("top_k", "2.5", "needs an integer >= 0 (0: every token), got '2.5'"),
    ("top_p", float("nan"), "needs a number in (0, 1], got nan"),
    ("top_p", 0.0, "needs a number in (0, 1], got 0.0"),
    ("max_new_tokens", 10**12, "needs an integer from 1 to 1,000,000, got 1000000000000"),
    ("max_new_tokens", "1e12", "needs an integer from 1 to 1,000,000, got '1e12'"),
    ("max_new_tokens", 0, "needs an integer from 1 to 1,000,000, got 0"),
])
def test_check_sampling_refuses_in_one_line(name, value, message):
    from errors import UserError
    from generation import check_sampling
    with pytest.raises(UserError) as e:
        check_sampling(name, value)
    assert str(e.value) == message


def test_check_sampling_accepts_and_converts():
    from generation import MAX_NEW_TOKENS, check_sampling
    assert check_sampling("temperature", "0") == 0.0 and check_sampling("temperature", 2) == 2.0
    assert check_sampling("top_k", "0") == 0  # 0 keeps meaning every token
    assert check_sampling("top_p", None) is None and check_sampling("top_p", 1) == 1.0
    assert check_sampling("max_new_tokens", str(MAX_NEW_TOKENS)) == MAX_NEW_TOKENS
