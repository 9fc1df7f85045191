"""Activation statistics (activation_stats.py): the numbers equal a direct computation on a fixed
batch, the hooks exist only while recording (none at all when off) and never change the training
step, the JSONL file survives a resume without duplicates, and the plot and table tools read it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train
from activation_stats import SITES, ActivationStats, final_rows, fixed_point_range, parse_range, read_rows, \
    tensor_stats
from conftest import read_metrics, tiny_config
from errors import UserError
from model import GPT


def _direct(values: np.ndarray, lo: float, hi: float) -> dict:
    v = values.astype(np.float64).ravel()
    c = v - v.mean()
    return {"numel": v.size, "absmax": np.abs(v).max(), "rms": math.sqrt((v ** 2).mean()),
            "kurtosis": (c ** 4).mean() / (c ** 2).mean() ** 2, "frac_outside": ((v < lo) | (v > hi)).mean()}


def _close(ours: dict, ref: dict):
    assert ours["numel"] == ref["numel"]
    for k in ("absmax", "rms", "kurtosis", "frac_outside"):
        assert ours[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-7), k


def test_fixed_point_range_and_its_parsing():
    assert parse_range("8:4") == (8, 4) and parse_range(" 16 : 8 ") == (16, 8)
    assert fixed_point_range(8, 4) == (-8.0, 7.9375)
    assert fixed_point_range(16, 0) == (-32768.0, 32767.0)
    assert fixed_point_range(8, 7) == (-1.0, 127 / 128)
    for bad in ("8", "8.4", "1:0", "a:b", "8:-1", "65:3"):
        with pytest.raises(UserError, match="--activation_stats_range must be BITS:POINT") as e:
            parse_range(bad)
        assert "\n" not in str(e.value)


def test_tensor_stats_equal_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=gen) * 3
    _close(tensor_stats(x, -2.0, 1.9375), _direct(x.numpy(), -2.0, 1.9375))
    keep = torch.tril(torch.ones(5, 5, dtype=torch.bool))  # masked entries are left out
    ref = _direct(x.numpy()[..., keep.numpy()], -2.0, 1.9375)
    _close(tensor_stats(x, -2.0, 1.9375, keep), ref)
    assert tensor_stats(torch.ones(10), -1, 1)["kurtosis"] is None  # no spread: no kurtosis (not nan)


@pytest.mark.parametrize("softmax", ["softmax", "consmax"])  # the SDPA path and the explicit path
def test_recorded_statistics_equal_a_direct_computation_on_a_fixed_batch(softmax):
    torch.manual_seed(0)
    cfg = tiny_config(softmax_variant_attn=softmax, n_kv_head=2, bias=True)
    model = GPT(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size), generator=torch.Generator().manual_seed(1))
    stats = ActivationStats(model, (6, 3))
    stats.attach()
    model(idx, idx)
    rows = stats.detach(7)
    lo, hi = fixed_point_range(6, 3)
    assert all(r["iter"] == 7 and r["range_min"] == lo and r["range_max"] == hi for r in rows)
    got = {(r["layer"], r["site"], r["module"]): r for r in rows}
    per_layer = ["norm_input", "norm_input", "attn_input", "q", "k", "v", "attn_scores", "attn_probs", "attn_output",
                 "mlp_input", "mlp_hidden", "residual"]
    assert sorted(r["site"] for r in rows) == sorted(per_layer * cfg.n_layer + ["norm_input"])
    order = [(math.inf if r["layer"] is None else r["layer"], SITES.index(r["site"])) for r in rows]
    assert order == sorted(order)  # model order: layer by layer, the final norm last, sites in SITES order

    with torch.no_grad():  # layer 0 by hand
        block, attn = model.transformer.h[0], model.transformer.h[0].attn
        x = model.position.embed(model.transformer.wte(idx), 0)
        h = block.ln_1(x)
        B, T, C = h.shape
        nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q, k, v = F.linear(h, attn.c_attn.weight, attn.c_attn.bias).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)
        k = k.view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
        keep = torch.tril(torch.ones(T, T, dtype=torch.bool))
        probs = attn.softmax(scores, keep)
        out = block(x, model.position)
        hidden = block.mlp.act(block.mlp.c_fc(block.ln_2(x + attn(h, model.position))))  # pre-norm block
    _close(got[(0, "norm_input", "transformer.h.0.ln_1")], _direct(x.numpy(), lo, hi))
    _close(got[(0, "attn_input", "transformer.h.0")], _direct(h.numpy(), lo, hi))
    _close(got[(0, "q", "transformer.h.0.attn")], _direct(q.numpy(), lo, hi))
    _close(got[(0, "attn_scores", "transformer.h.0.attn")], _direct(scores.numpy()[..., keep.numpy()], lo, hi))
    _close(got[(0, "attn_probs", "transformer.h.0.attn")], _direct(probs.numpy()[..., keep.numpy()], lo, hi))
    _close(got[(0, "residual", "transformer.h.0")], _direct(out.numpy(), lo, hi))
    _close(got[(0, "mlp_hidden", "transformer.h.0.mlp")], _direct(hidden.numpy(), lo, hi))
    for name, module in model.named_modules():  # detach left no hook behind
        assert not module._forward_hooks and not module._forward_pre_hooks, name


def test_gradient_checkpointing_records_each_site_once():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx = torch.randint(0, 37, (2, 16))
    results = {}
    for recompute in (False, True):
        model.gradient_checkpointing = recompute
        stats = ActivationStats(model, (8, 4))
        stats.attach()
        _, loss = model(idx, idx)
        loss.backward()  # the recomputation calls the hooks again
        results[recompute] = stats.detach(0)
    assert results[True] == results[False]


def _run(char_data, out, *flags):
    return train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                       "--max_iters", "10", "--eval_interval", "5", "--log_interval", "1", "--dropout", "0.1",
                       "--lr_decay_iters", "10", *flags])


def test_off_registers_no_hook_and_on_leaves_training_unchanged(char_data, tmp_path, monkeypatch):
    registered = []
    for method in ("register_forward_hook", "register_forward_pre_hook"):
        original = getattr(nn.Module, method)
        monkeypatch.setattr(nn.Module, method, lambda self, *a, _o=original, **k: registered.append(self) or _o(
            self, *a, **k))
    _run(char_data, tmp_path / "off")
    assert registered == []  # off: not a single hook, the step is exactly today's
    assert not (tmp_path / "off" / "activation_stats.jsonl").exists()
    _run(char_data, tmp_path / "on", "--activation_stats_interval", "3")
    assert registered  # on: hooks at the recorded steps
    losses = {d: [(r["iter"], r["loss"]) for r in read_metrics(tmp_path / d) if r["type"] == "train"]
              for d in ("off", "on")}
    assert losses["on"] == losses["off"]  # the hooks only read: bit-identical losses
    rows = read_rows(tmp_path / "on")
    assert sorted({r["iter"] for r in rows}) == [0, 3, 6, 9]
    assert len(rows) == 4 * (12 * 2 + 1)  # steps x (sites per layer x layers + the final norm)
    assert json.loads((tmp_path / "on" / "config.json").read_text())["train"]["activation_stats_interval"] == 3


def test_resume_rewrites_no_step_twice(char_data, tmp_path):
    _run(char_data, tmp_path / "full", "--activation_stats_interval", "2")
    _run(char_data, tmp_path / "part", "--activation_stats_interval", "2", "--max_iters", "5")
    rows = read_rows(tmp_path / "part")
    assert max(r["iter"] for r in rows) == 4
    train.main(["--out_dir", str(tmp_path / "part"), "--init_from", "resume", "--max_iters", "10",
                "--dataset", str(char_data)])
    assert read_rows(tmp_path / "part") == read_rows(tmp_path / "full")  # steps 0..8, each once, same values


def test_tools_draw_and_show_the_final_values(char_data, tmp_path, capsys):
    from analysis import inspect_ckpts, plot_activation_stats, summarize_runs
    _run(char_data, tmp_path / "runs" / "a", "--activation_stats_interval", "4", "--activation_stats_range", "4:2")
    run = tmp_path / "runs" / "a"
    final = final_rows(run)
    assert {r["iter"] for r in final} == {8}
    result = plot_activation_stats.main([str(run), "--out", str(tmp_path / "s.png"), "--final"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    xs, ys = result["panels"][("residual", "absmax")]["layer 1"]
    assert xs == [0, 4, 8]
    assert ys[-1] == next(r["absmax"] for r in final if r["site"] == "residual" and r["layer"] == 1)
    out = capsys.readouterr().out
    assert "activation statistics at step 8 (range -2 .. 1.75)" in out and "attn_scores" in out
    summarize_runs.main([str(tmp_path / "runs"), "--activation_stats"])
    assert "activation statistics at step 8" in capsys.readouterr().out
    inspect_ckpts.main([str(tmp_path / "runs"), "--activation_stats"])
    assert "activation statistics at step 8" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown recorded site 'residul'; did you mean 'residual'"):
        plot_activation_stats.main([str(run), "--site", "residul", "--out", str(tmp_path / "x.png")])
    with pytest.raises(UserError, match="has no activation_stats.jsonl"):
        plot_activation_stats.main([str(tmp_path), "--final"])


@pytest.mark.parametrize("flags, message", [
    (["--activation_stats_range", "8.4"], "--activation_stats_range must be BITS:POINT"),
    (["--activation_stats_interval", "0"], "--activation_stats_interval must be at least 1, got 0"),
    (["--activation_stats_interval", "5", "--compile"], "--activation_stats_interval records through forward hooks"),
])
def test_bad_activation_stats_settings(char_data, tmp_path, flags, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _run(char_data, tmp_path / "bad", *flags)
    assert not (tmp_path / "bad").exists()
