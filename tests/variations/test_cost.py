"""The hardware cost model: agreement with torch's FlopCounterMode and with the real parameter count
for every registered variant, the summary keys of a run, and analysis/cost_report.py."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import train
import variations  # noqa: F401
from errors import UserError
from gpt_conf import component_flags
from model import GPT
from variations.cost import COUNTS, Cost, per_token_summary, total
from variations.registry import KINDS, names

from conftest import ROOT, tiny_config

EVERY_VARIANT = [(kind, name) for kind in KINDS for name in names(kind)]
IDS = [f"{k}-{n}" for k, n in EVERY_VARIANT]


def model_with(kind, name, **kw):
    return GPT(tiny_config(**{component_flags(kind)[0]: name, "n_kv_head": 2, **kw})).eval()


@pytest.mark.parametrize("kind,name", EVERY_VARIANT, ids=IDS)
def test_macs_agree_with_flop_counter(kind, name):
    model = model_with(kind, name)
    T = model.config.block_size
    idx = torch.randint(0, model.config.vocab_size, (1, T))
    # the math backend: FlopCounterMode has no formula for the fused CPU kernel, and decomposed
    # into matmuls it counts every query head's products also with grouped key/value heads
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(idx, all_logits=True)
    measured = counter.get_total_flops() / 2 / T  # MACs per token
    predicted = total(model.cost(T).values()).macs
    assert predicted == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("kind,name", EVERY_VARIANT, ids=IDS)
def test_params_agree_exactly(kind, name):
    model = model_with(kind, name, bias=True)
    assert total(model.cost().values()).params == model.num_params() == sum(p.numel() for p in model.parameters())
    for block in model.transformer.h:  # and module by module
        for part in (block.attn, block.mlp, block.ln_1, block.ln_2):
            assert part.cost(model.config.block_size).params == sum(p.numel() for p in part.parameters()), part


def test_counts_scale_with_context_for_attention_only():
    model = model_with("attention", "causal")
    short, long = model.cost(8), model.cost(16)
    assert short["layer.0.mlp"] == long["layer.0.mlp"]
    assert long["layer.0.attention"].exp == 2 * short["layer.0.attention"].exp  # n_head rows of T scores
    assert long["layer.0.attention"].macs > short["layer.0.attention"].macs


def test_consmax_has_no_row_reductions_softmax_does():
    soft = model_with("softmax", "softmax").cost()["layer.0.attention"]
    cons = model_with("softmax", "consmax").cost()["layer.0.attention"]
    assert soft.reduce > 0 and cons.reduce == 0 and soft.cmp > cons.cmp


def test_cost_arithmetic():
    a, b = Cost(params=2, macs=3, exp=1), Cost(params=1, macs=1, div=4)
    assert a + b == Cost(params=3, macs=4, exp=1, div=4)
    assert a.repeat(3) == Cost(params=6, macs=9, exp=3)
    summary = per_token_summary({"x": a, "y": b})
    assert summary["macs_per_token"] == 4 and summary["cost_params"] == 3
    assert set(summary) == {f"{c}_per_token" for c in COUNTS if c != "params"} | {"cost_params"}


def test_formats_are_tagged_summed_and_scaled_with_the_counts():
    c = Cost(params=10, macs=100, exp=4).at("int4*int8", "macs").at("int4", "weights", amount=8)
    assert c.weights == 10  # every parameter is read, unless a component says otherwise
    assert c.formats("macs") == {"int4*int8": 100} and c.formats("weights") == {"int4": 8, None: 2}
    assert c.formats("exp") == {None: 4}  # untagged: the estimator's default format
    s = c + Cost(macs=50).at("bf16", "macs") + Cost(macs=25)
    assert s.macs == 175 and s.formats("macs") == {"int4*int8": 100, "bf16": 50, None: 25}
    assert s.at("fp32").formats("macs") == {"int4*int8": 100, "bf16": 50, "fp32": 25}  # inner tags win
    assert s.repeat(0.5).formats("macs") == {"int4*int8": 50, "bf16": 25, None: 12.5}
    with pytest.raises(ValueError, match="to tag but only"):
        Cost(params=4).at("int8", "weights", amount=5)
    with pytest.raises(ValueError, match="priced counts"):
        Cost().at("int8", "params")


def test_run_summary_holds_the_cost(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    s = train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                    "--max_iters", "2", "--print_cost"])
    printed = capsys.readouterr().out
    assert "hardware cost per token" in printed and "attention" in printed
    model = GPT.from_checkpoint(torch.load(out / "ckpt_last.pt", weights_only=True))
    expect = per_token_summary(model.cost())
    for key, value in expect.items():
        assert s[key] == pytest.approx(value)
    assert json.loads((out / "cost.json").read_text())["context"] == model.config.block_size
    # the PPA estimate on the default target, printed and in summary.json (ppa/estimate.py)
    assert "decode: energy per token" in printed and "datapath area on edge_int8" in printed
    assert s["ppa_target"] == "edge_int8" and s["ppa_format"] == "int8"
    assert s["energy_pj_per_token_decode"] > s["memory_energy_pj_per_token_decode"] > 0
    assert s["latency_us_per_token_decode"] > 0 and s["area_mm2"] > 0
    ppa = json.loads((out / "cost.json").read_text())["ppa"]
    assert ppa["summary"]["energy_pj_per_token_decode"] == pytest.approx(s["energy_pj_per_token_decode"])


def test_a_bad_ppa_target_fails_before_anything_is_written(char_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="unknown target 'h100'; did you mean 'h100_sxm'"):
        train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                    "--max_iters", "1", "--ppa_target", "h100"])
    with pytest.raises(UserError, match="edge_int8.*fp32"):  # an int8 accelerator has no fp32 MACs
        train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                    "--max_iters", "1", "--ppa_format", "fp32"])
    assert not out.exists()
    s = train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                    "--max_iters", "1", "--ppa_target", "h100_sxm"])
    assert s["ppa_target"] == "h100_sxm" and s["ppa_format"] == "fp32" and s["area_mm2"] is None


def test_cost_report_script(char_data, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cost_report", ROOT / "analysis" / "cost_report.py")
    cost_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost_report)
    out = tmp_path / "run"
    train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                "--max_iters", "1"])
    result = cost_report.main(["--out_dir", str(out), "--context", "16", "--json", str(tmp_path / "c.json")])
    assert result["context"] == 16 and "attention" in result["rows"]
    assert json.loads((tmp_path / "c.json").read_text())["total"] == result["total"]
    per_layer = cost_report.main(["--out_dir", str(out), "--per_layer"])
    assert "layer.1.attention" in per_layer["rows"]
    # the PPA estimate: the run's target by default, any target and format by flag
    assert result["ppa"]["target"] == "edge_int8" and result["ppa"]["context"] == 16
    h100 = cost_report.main(["--out_dir", str(out), "--target", "h100_sxm", "--format", "bf16", "--batch", "4"])
    assert h100["ppa"]["target"] == "h100_sxm" and h100["ppa"]["format"] == "bf16" and h100["ppa"]["batch"] == 4
    assert cost_report.main(["--list"])["targets"] == ["a100_sxm", "cpu_dev", "edge_int8", "h100_sxm"]
    cfg = tmp_path / "m.yaml"
    cfg.write_text("n_layer: 2\nn_head: 2\nn_embd: 64\nblock_size: 32\n")
    from_config = cost_report.main(["--config", str(cfg), "--vocab_size", "100"])
    assert from_config["total"]["cost_params"] > 0
    with pytest.raises(UserError, match="not found"):
        cost_report.main(["--out_dir", str(tmp_path / "none")])
    assert "total" in capsys.readouterr().out
