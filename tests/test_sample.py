"""sample.py and sample_analysis.py: rebuild from a run directory alone, deterministic sampling, KV cache on
and off; per-token records against a direct recomputation from the model's logits, colourised output,
heatmaps and JSON, interactive prompts, stop strings, --eval_only against a direct cross-entropy, errors."""
from __future__ import annotations

import io
import json
import math
import re
from argparse import Namespace

import numpy as np
import pytest
import torch

from run_dir import load_run
import sample
import sample_analysis
import train
from data.prepare import prepare
from data.tokenizer import CharTokenizer
from errors import UserError
from model import GPT
from variations.registry import create

from conftest import SAMPLE_TEXT, bad_ids_copy, run_script, tiny_config

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="session")
def run_dir(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                "--max_iters", "30", "--learning_rate", "3e-3"])
    return out


@pytest.fixture
def plain_terminal(monkeypatch):
    """rich honours these variables over isatty(); a CI that sets them must not turn colour on here."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def cpu(run_dir, *flags: str) -> list[str]:
    return ["--out_dir", str(run_dir), "--device", "cpu", *flags]


# ------------------------------------------------------------------------------------ plain sampling

def test_sample_is_reproducible_and_cache_independent(run_dir, capsys):
    args = cpu(run_dir, "--start", "HAMLET", "--max_new_tokens", "40")
    a = sample.main(args + ["--seed", "3"])
    b = sample.main(args + ["--seed", "3", "--no-kv_cache"])
    c = sample.main(args + ["--seed", "4"])
    assert a == b and a != c
    assert a[0].startswith("HAMLET") and len(a[0]) == len("HAMLET") + 40
    greedy = sample.main(args + ["--temperature", "0", "--num_samples", "2"])
    assert greedy[0] == greedy[1]
    assert "HAMLET" in capsys.readouterr().out


def test_start_from_file(run_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("To be, or not")
    out = sample.main(cpu(run_dir, "--start", f"FILE:{prompt}", "--max_new_tokens", "5", "--top_p", "0.9",
                          "--ckpt", "last"))
    assert out[0].startswith("To be, or not")


def test_sample_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="run directory .* not found"):
        sample.main(["--out_dir", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="character"):
        sample.main(cpu(run_dir, "--start", "\u2603"))  # not in the vocabulary
    with pytest.raises(UserError, match="cannot read"):
        sample.main(["--out_dir", str(run_dir), "--start", f"FILE:{tmp_path / 'missing.txt'}"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt_best.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="corrupt or truncated"):
        sample.main(["--out_dir", str(broken)])


@pytest.mark.slow
def test_sample_cli_prints_text(run_dir):
    r = run_script("sample.py", "--out_dir", str(run_dir), "--max_new_tokens", "20", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) >= 20


# ------------------------------------------------------------------------------------ per-token records

def direct_distribution(row: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                        base: float = math.e) -> torch.Tensor:
    """The sampling distribution written out independently of generation.sampling_probs: (V,) raw logits ->
    probabilities of softmax with base `base` (strongermax; e = softmax) after temperature, top-k, top-p."""
    z = row.double() / temperature
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k:
        keep &= z >= torch.topk(z, top_k).values[-1]
    p = torch.softmax((z * math.log(base)).masked_fill(~keep, -math.inf), dim=-1)
    if top_p is not None and top_p < 1:
        sorted_p, order = torch.sort(p, descending=True)
        before = sorted_p.cumsum(0) - sorted_p  # mass of the more probable tokens
        keep[order[before >= top_p]] = False
        p = torch.softmax((z * math.log(base)).masked_fill(~keep, -math.inf), dim=-1)
    return p


def check_records(tokens: list[dict], logits: torch.Tensor, chosen: list[int], temperature, top_k, top_p,
                  k: int, base: float = math.e):
    """tokens: the recorded dicts; logits (n, V): the model's raw logits predicting each chosen token."""
    assert [t["token_id"] for t in tokens] == chosen
    for t, row, c in zip(tokens, logits, chosen):
        p = direct_distribution(row, temperature or 1.0, top_k, top_p, base)  # greedy: recorded at temperature 1
        assert t["probability"] == pytest.approx(p[c].item(), abs=1e-5)
        assert t["logit"] == pytest.approx(row[c].item(), abs=1e-4)
        assert t["rank"] == int((row > row[c]).sum())
        nz = p[p > 0]
        assert t["entropy"] == pytest.approx(-(nz * nz.log()).sum().item(), abs=1e-4)
        top = torch.topk(p, k)
        assert [x["probability"] for x in t["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert {x["token_id"] for x in t["top_k"] if x["probability"] > 1e-4} == \
            {i for i, q in zip(top.indices.tolist(), top.values.tolist()) if q > 1e-4}


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, None), (1.3, 0, 0.8), (0.0, 0, None)])
def test_records_equal_a_direct_computation(run_dir, tmp_path, temperature, top_k, top_p):
    out = tmp_path / "s.json"
    flags = ["--start", "HAMLET", "--max_new_tokens", "20", "--seed", "1", "--temperature", str(temperature),
             "--top_k", str(top_k), "--output_json", str(out), "--colorize_topk", "4"]
    texts = sample.main(cpu(run_dir, *flags, *(["--top_p", str(top_p)] if top_p else [])))
    report = json.loads(out.read_text())
    s = report["samples"][0]
    assert s["text"] == texts[0] and s["prompt"] == "HAMLET" and s["stop_string"] is None
    assert s["prompt_text"] + "".join(t["text"] for t in s["tokens"]) == texts[0]
    assert report["settings"]["temperature"] == temperature and report["run"]["iter_num"] == 30
    assert set(report["definitions"]) == {"probability", "logit", "rank", "entropy", "top_k"}

    model, tok, _ = load_run(run_dir, device="cpu")
    ids = tok.encode(texts[0])  # 26 tokens: within block_size 32, so one forward pass sees every step's context
    with torch.no_grad():
        logits, _ = model(torch.tensor(ids[:-1])[None], all_logits=True)  # (1, T - 1, V)
    logits = logits[0, len("HAMLET") - 1:].clone()  # (20, V): the rows that predicted the generated tokens
    logits[:, tok.vocab_size:] = -math.inf  # padding ids are barred when sampling
    check_records(s["tokens"], logits, ids[len("HAMLET"):], temperature, top_k, top_p, k=4)
    if temperature == 0:
        assert all(t["rank"] == 0 for t in s["tokens"])  # greedy takes the top logit


def test_records_use_the_output_normaliser():
    """A model whose --softmax_variant_output is strongermax (base 3): records follow softmax(ln 3 * z)."""
    torch.manual_seed(0)
    cfg = tiny_config(softmax_variant_output="strongermax", strongermax_base=3.0)
    model = GPT(cfg).eval()
    tok = CharTokenizer([chr(ord("a") + i) for i in range(26)] + list("0123456789 "))  # 37 = vocab_size
    args = sample.build_parser().parse_args(["--temperature", "0.9", "--top_k", "10", "--max_new_tokens", "6",
                                             "--colorize_topk", "3"])
    sample.check_args(args)
    normalizer = create("softmax", cfg.softmax_variant_output, cfg)
    ids = tok.encode("hello")
    s = sample.draw_sample(model, tok, ids, args, torch.Generator().manual_seed(0), normalizer, record=True)
    full = tok.encode(s["text"])
    with torch.no_grad():
        logits, _ = model(torch.tensor(full[:-1])[None], all_logits=True)
    check_records(s["tokens"], logits[0, len(ids) - 1:], full[len(ids):], 0.9, 10, None, k=3, base=3.0)


# ------------------------------------------------------------------------------------ rendering and files

@pytest.mark.parametrize("mode", list(sample_analysis.COLOR_MODES))
def test_colorized_output_is_plain_text_when_captured(run_dir, capsys, plain_terminal, mode):
    texts = sample.main(cpu(run_dir, "--start", "HAMLET", "--max_new_tokens", "12", "--colorize_mode", mode))
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert texts[0] in out and texts[0].startswith("HAMLET")
    if mode == "topk":
        assert "top-k candidates per step" in out and "*" in out
    else:
        assert f"colour = {sample_analysis.COLOR_MODES[mode].description}" in out


def test_colour_scales():
    tokens = [{"probability": 0.5, "logit": 2.0, "rank": 0, "entropy": 1.0},
              {"probability": 0.1, "logit": -2.0, "rank": 3, "entropy": 0.0}]
    assert sample_analysis.logit_scale(tokens).scores == [1.0, 0.0]
    assert sample_analysis.rank_scale(tokens).scores == [1.0, 0.0]
    assert sample_analysis.entropy_scale(tokens).scores == [0.0, 1.0]
    assert sample_analysis.gradient_color(0.0).triplet == sample_analysis.GRADIENT[0]
    assert sample_analysis.gradient_color(1.0).triplet == sample_analysis.GRADIENT[-1]


def test_heatmaps_and_json_files(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_analysis, "HEATMAP_POSITIONS", 8)  # small figures: 10 positions need two
    out = tmp_path / "out.json"
    texts = sample.main(cpu(run_dir, "--start", "HAMLET", "--max_new_tokens", "10", "--num_samples", "2",
                            "--colorize_topk", "3", "--show_heatmaps", "--sample_name", "t1", "--output_json", str(out)))
    folder = run_dir / "samples" / "t1"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["sample_0_topk_0.png", "sample_0_topk_1.png", "sample_1_topk_0.png", "sample_1_topk_1.png",
                     "samples.json", "summary.png"]  # two heatmaps per sample, no temporary files left
    assert all((folder / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith(".png"))
    report = json.loads((folder / "samples.json").read_text())
    assert report == json.loads(out.read_text())
    assert [s["text"] for s in report["samples"]] == texts
    assert all(len(s["tokens"]) == 10 and len(s["tokens"][0]["top_k"]) == 3 for s in report["samples"])
    assert report["settings"]["sample_name"] == "t1" and report["run"] == {"out_dir": str(run_dir), "ckpt": "best",
                                                                            "iter_num": 30}


# ------------------------------------------------------------------------------------ interactive, stops

def test_interactive_reads_prompts_from_stdin(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("HAMLET\nTo be\n\u2603\nOPHELIA\n\nnever read\n"))
    texts = sample.main(cpu(run_dir, "--interactive", "--max_new_tokens", "5", "--num_samples", "2"))
    assert [t[:-5] for t in texts] == ["HAMLET", "HAMLET", "To be", "To be", "OPHELIA", "OPHELIA"]
    captured = capsys.readouterr()
    assert "not in this data set's char vocabulary" in captured.err  # a bad prompt is reported and skipped
    for end in ("HAM\nquit\nTo be\n", "HAM"):  # 'quit', and EOF without a newline
        monkeypatch.setattr("sys.stdin", io.StringIO(end))
        assert [t[:-5] for t in sample.main(cpu(run_dir, "--interactive", "--max_new_tokens", "5"))] == ["HAM"]
    # figures and JSON are written after every prompt, heatmaps of the new samples only
    monkeypatch.setattr("sys.stdin", io.StringIO("HAM\nTo\n"))
    sample.main(cpu(run_dir, "--interactive", "--max_new_tokens", "3", "--show_heatmaps", "--sample_name", "i"))
    folder = run_dir / "samples" / "i"
    assert sorted(p.name for p in folder.glob("*.png")) == ["sample_0_topk_0.png", "sample_1_topk_0.png", "summary.png"]
    assert [s["prompt"] for s in json.loads((folder / "samples.json").read_text())["samples"]] == ["HAM", "To"]


@pytest.mark.parametrize("kv_cache", ["--kv_cache", "--no-kv_cache"])
def test_stop_strings_truncate_and_stop_early(run_dir, tmp_path, monkeypatch, kv_cache):
    flags = cpu(run_dir, "--start", "HAMLET", "--max_new_tokens", "25", "--seed", "5", kv_cache)
    generated = sample.main(flags)[0][len("HAMLET"):]
    stop = generated[10:12]
    cut = generated.find(stop)
    steps = []
    record = sample_analysis.token_record
    monkeypatch.setattr(sample_analysis, "token_record", lambda *a: steps.append(1) or record(*a))
    out = tmp_path / "s.json"
    texts = sample.main(flags + ["--stop_strings", "never there", stop, "--output_json", str(out)])
    assert texts == ["HAMLET" + generated[:cut]]
    assert len(steps) == cut + len(stop)  # generation ended at the step that completed the stop string
    s = json.loads(out.read_text())["samples"][0]
    assert s["stop_string"] == stop and len(s["tokens"]) == cut


def test_unescape():
    assert sample.unescape(r"a\nb\\n\tc\x") == "a\nb\\n\tc\\x"


# ------------------------------------------------------------------------------------ evaluation

def direct_eval(model, data: np.ndarray, n: int, block: int) -> float:
    """Total cross-entropy (nats) of tokens 1..n predicted in non-overlapping windows, one at a time."""
    total = 0.0
    with torch.no_grad():
        for s in range(0, n, block):
            m = min(block, n - s)
            x = torch.from_numpy(data[s:s + m].astype(np.int64))[None]
            y = torch.from_numpy(data[s + 1:s + 1 + m].astype(np.int64))[None]
            total += model(x, y)[1].item() * m  # mean loss of the window times its tokens
    return total


def test_eval_only_equals_a_direct_cross_entropy(run_dir, char_data, capsys, plain_terminal):
    result = sample.main(cpu(run_dir, "--eval_only", "--eval_dataset", str(char_data), "--eval_max_tokens", "200",
                             "--eval_batch_size", "3"))
    model, tok, _ = load_run(run_dir, device="cpu")
    data = np.fromfile(char_data / "val.bin", dtype=np.uint16)
    total = direct_eval(model, data, 200, model.config.block_size)  # 6 full windows of 32 and one of 8
    n_bytes = len(tok.decode(data[1:201].tolist()).encode("utf-8"))
    assert result["tokens"] == 200 and result["windows"] == 7 and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(total / 200, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
    assert result["bits_per_byte"] == pytest.approx(result["total_nats"] / math.log(2) / n_bytes, rel=1e-9)
    written = run_dir / f"eval_{char_data.name}_val.json"
    assert json.loads(written.read_text()) == result
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits per byte" in out and not ANSI.search(out)


def test_eval_full_pass_of_train_split(run_dir, char_data, tmp_path):
    data = np.fromfile(char_data / "train.bin", dtype=np.uint16)[:1000]
    small = tmp_path / "small"  # a copy of the data set with a short train split: a full pass stays fast
    small.mkdir()
    data.tofile(small / "train.bin")
    np.fromfile(char_data / "val.bin", dtype=np.uint16).tofile(small / "val.bin")
    meta = json.loads((char_data / "meta.json").read_text())
    (small / "meta.json").write_text(json.dumps({**meta, "train_tokens": 1000}))
    result = sample.main(cpu(run_dir, "--eval_only", "--eval_dataset", str(small), "--eval_split", "train",
                             "--eval_output", str(tmp_path / "r.json")))
    model, _, _ = load_run(run_dir, device="cpu")
    assert result["tokens"] == 999 and result["split"] == "train"
    assert result["loss"] == pytest.approx(direct_eval(model, data, 999, model.config.block_size) / 999, rel=1e-5)
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_eval_rejects_another_tokenizer(run_dir, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(SAMPLE_TEXT * 20)
    for name in ("byte", "char"):  # byte: another kind; char: another character set
        prepare([src], tmp_path / name, tokenizer=name)
        with pytest.raises(UserError, match=r"^the tokenizer of --eval_dataset .* differs from the one run .* was "
                                            r"trained with \(char, \d+ tokens\); evaluate on a data set prepared"):
            sample.main(cpu(run_dir, "--eval_only", "--eval_dataset", str(tmp_path / name)))


# ------------------------------------------------------------------------------------ flag errors

@pytest.mark.parametrize("flags,message", [
    (["--colorize_mode", "probabilty"], "--colorize_mode: unknown colorize mode 'probabilty'; did you mean "
                                        "'probability'? valid: entropy, logit, probability, rank, topk"),
    (["--colorize_topk", "0"], "--colorize_topk must be at least 1, got 0"),
    (["--eval_only"], "--eval_only needs --eval_dataset NAME (a prepared data set, as train.py --dataset)"),
    (["--eval_dataset", "x"], "--eval_dataset applies only with --eval_only; add --eval_only"),
    (["--eval_max_tokens", "5"], "--eval_max_tokens applies only with --eval_only; add --eval_only"),
    (["--eval_only", "--eval_dataset", "x", "--colorize_output"],
     "--eval_only evaluates instead of sampling; drop --colorize_output"),
    (["--eval_only", "--eval_dataset", "x", "--start", "y"], "--eval_only evaluates instead of sampling; drop --start"),
    (["--eval_only", "--eval_dataset", "x", "--eval_max_tokens", "0"], "--eval_max_tokens must be at least 1, got 0"),
    (["--interactive", "--start", "x"], "--interactive reads its prompts from stdin; drop --start"),
    (["--sample_name", "a"], "--sample_name names the folder of --show_heatmaps; add --show_heatmaps"),
    (["--show_heatmaps", "--sample_name", "a/b"], "--sample_name 'a/b' must be a plain folder name (no slashes)"),
    (["--stop_strings", "x", ""], "--stop_strings: an empty string would stop every sample at once; drop it"),
    (["--temperature", "nan"], "--temperature needs a number >= 0 (0: greedy), got nan"),
    (["--temperature", "inf"], "--temperature needs a number >= 0 (0: greedy), got inf"),
    (["--temperature", "-1"], "--temperature needs a number >= 0 (0: greedy), got -1.0"),
    (["--top_k", "-5"], "--top_k needs an integer >= 0 (0: every token), got -5"),
    (["--top_p", "nan"], "--top_p needs a number in (0, 1], got nan"),
    (["--max_new_tokens", "1000000000000"], "--max_new_tokens needs an integer from 1 to 1,000,000, got 1000000000000"),
    (["--max_new_tokens", "1e12"], "argument --max_new_tokens: invalid int value: '1e12' "
                                   "(python sample.py --help lists every flag)"),
])
def test_flag_errors(flags, message):
    with pytest.raises(UserError) as e:
        sample.check_args(sample.build_parser().parse_args(flags))
    assert str(e.value) == message


def test_flag_errors_needing_files(run_dir, tmp_path):
    with pytest.raises(UserError, match=r"^--output_json .* is a folder; give a file path"):
        sample.main(cpu(run_dir, "--output_json", str(tmp_path)))
    with pytest.raises(UserError, match=r"^data directory .*missing not found"):
        sample.main(cpu(run_dir, "--eval_only", "--eval_dataset", str(tmp_path / "missing")))


def test_colorize_mode_implies_colorize_output():
    args = sample.build_parser().parse_args(["--colorize_mode", "rank"])
    sample.check_args(args)
    assert args.colorize_output and isinstance(args, Namespace)


@pytest.mark.slow
def test_cli_reports_a_bad_combination_in_one_line(run_dir):
    r = run_script("sample.py", "--out_dir", str(run_dir), "--eval_only")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --eval_only needs --eval_dataset NAME (a prepared data set, as train.py --dataset)"]


# ---------------------------------------------------------------- --lm_eval_tasks and --chat pass through

def test_lm_eval_flags_reach_run_lm_eval(monkeypatch, tmp_path):
    """The lm-eval path itself is tested in test_lm_eval_model.py; here: every flag arrives."""
    import analysis.lm_eval_model as lm
    seen = {}
    monkeypatch.setattr(lm, "run_lm_eval", lambda out_dir, tasks, **kw: seen.update(out_dir=out_dir, tasks=tasks, **kw)
                        or {"results": {}})
    result = sample.main(["--out_dir", str(tmp_path), "--lm_eval_tasks", "shakespeare_ppl, arc_easy",
                          "--lm_eval_include_path", "a", "--lm_eval_include_path", "b", "--lm_eval_limit", "5",
                          "--lm_eval_batch_size", "3", "--lm_eval_num_fewshot", "1", "--ckpt", "last",
                          "--lm_eval_output", "r.json", "--seed", "9"])
    assert result == {"results": {}}
    assert seen == dict(out_dir=str(tmp_path), tasks=["shakespeare_ppl", "arc_easy"], include_path=["a", "b"],
                        ckpt="last", device="auto", batch_size=3, limit=5.0, num_fewshot=1, output="r.json", seed=9,
                        dtype="auto")
    with pytest.raises(UserError, match="--lm_eval_tasks is empty"):
        sample.main(["--out_dir", str(tmp_path), "--lm_eval_tasks", " , "])
    with pytest.raises(UserError, match="two evaluations"):
        sample.main(["--out_dir", str(tmp_path), "--lm_eval_tasks", "x", "--eval_only", "--eval_dataset", "d"])


def test_chat_flag_forwards_only_given_settings(monkeypatch, tmp_path):
    import chat
    seen = []
    monkeypatch.setattr(chat, "main", lambda argv: seen.append(argv) or "repl")
    assert sample.main(["--out_dir", str(tmp_path), "--chat", "--temperature", "0.5", "--top_k=7"]) == "repl"
    # sample.py's own defaults (top_k 200, 500 new tokens) are not forced onto chat.py
    assert seen[0] == ["--out_dir", str(tmp_path), "--ckpt", "best", "--temperature", "0.5", "--top_k", "7"]
    with pytest.raises(UserError, match="--chat runs a REPL on its own"):
        sample.main(["--out_dir", str(tmp_path), "--chat", "--eval_only"])


def test_eval_refuses_token_ids_past_the_vocabulary(run_dir, char_data, tmp_path):
    """A train.bin holding an id >= vocab_size: one line, before any forward pass (issue 12)."""
    bad = bad_ids_copy(char_data, tmp_path / "bad")
    with pytest.raises(UserError, match=r"^.*bad holds token id 60000 in train.bin, but the model's vocabulary has "
                                        r"\d+ ids \(0\.\.\d+\); the data was prepared with another tokenizer"):
        sample.main(cpu(run_dir, "--eval_only", "--eval_dataset", str(bad), "--eval_split", "train"))

