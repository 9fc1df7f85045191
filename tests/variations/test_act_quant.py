"""Activation quantisation at the datapath sites (variations/act_quant.py): the grid against the formula,
straight-through gradients, causality, each site changing its tensor, unset sites bit-identical,
quantisation-aware training, the kernels' refusal, the cost model's formats, and bad input."""
from __future__ import annotations

import pytest
import torch

import train
import train_args
from errors import UserError
from gpt_conf import GPTConfig
from model import GPT
from variations import kernels
from variations.act_quant import (SITES, SiteQuant, finish_calibration, quantise, site_modules,
                                  start_calibration)
from variations.cost import total

from conftest import tiny_config

ALL_SITES = {f"act_bits_{s}": 8 for s in SITES}


def model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw)).eval()


# --------------------------------------------------------------------------------------- the grid
def test_symmetric_grid_matches_the_formula():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0, 2.0])
    lo, hi, bits = torch.tensor(-1.0), torch.tensor(1.0), 4
    s = 1.0 / 7  # r / (2^(b-1) - 1)
    expect = torch.clamp(torch.round(x / s), -8, 7) * s
    assert torch.equal(quantise(x, lo, hi, bits, "symmetric"), expect)
    assert quantise(x, lo, hi, bits, "symmetric")[-1] == pytest.approx(1.0)  # 2.0 clamps to the top of the grid
    # round half to even: 0.5 s rounds to 0, 1.5 s to 2 s
    assert torch.equal(quantise(torch.tensor([0.5 * s, 1.5 * s]), lo, hi, bits, "symmetric"), torch.tensor([0.0, 2 * s]))


def test_affine_grid_keeps_zero_exact_and_uses_a_zero_point():
    x = torch.tensor([0.0, 0.1, 0.7, 3.0])
    lo, hi, bits = torch.tensor(-1.0), torch.tensor(3.0), 3
    s = 4.0 / 7
    z = round(1.0 / s)
    expect = (torch.clamp(torch.round(x / s) + z, 0, 7) - z) * s
    out = quantise(x, lo, hi, bits, "affine")
    assert torch.equal(out, expect) and out[0] == 0.0
    assert len(set(quantise(torch.linspace(-1, 3, 1000), lo, hi, bits, "affine").tolist())) <= 2 ** bits


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_per_token_range_is_each_tokens_own(scheme):
    q = SiteQuant("residual", 4, scheme, "per_token")
    x = torch.randn(2, 5, 8)
    x[0, 3] *= 100  # one loud token does not coarsen the others' grids
    out = q(x)
    for b in range(2):
        for t in range(5):
            row = x[b, t]
            lo, hi = row.min(), row.max()
            assert torch.equal(out[b, t], quantise(row, lo, hi, 4, scheme))


def test_straight_through_inside_the_static_range_zero_outside():
    q = SiteQuant("scores", 4, "symmetric", "per_tensor")
    q.train()
    q(torch.tensor([[[-1.0, 1.0]]]))  # the first batch sets the range [-1, 1]
    q.eval()
    x = torch.tensor([[[-3.0, -0.5, 0.2, 0.9, 1.5]]], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [[[0.0, 1.0, 1.0, 1.0, 0.0]]]  # clipped values get no gradient
    # per token nothing clips: the gradient is the identity everywhere
    y = torch.randn(1, 3, 4, requires_grad=True)
    SiteQuant("residual", 3)(y).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_the_moving_average_and_calibration():
    q = SiteQuant("v", 8, "symmetric", "per_tensor").train()
    q(torch.full((1, 1, 2), 2.0))
    assert (float(q.lo), float(q.hi)) == (2.0, 2.0)
    q(torch.full((1, 1, 2), 4.0))
    assert float(q.hi) == pytest.approx(2.0 + 0.01 * 2.0)  # momentum 0.01
    m = model(act_bits_v=8, act_quant_granularity="per_tensor")
    with pytest.raises(UserError, match="has no range yet"):
        m(torch.zeros(1, 4, dtype=torch.long))
    sites = start_calibration(m)
    x = torch.randint(0, m.config.vocab_size, (2, 8))
    assert torch.equal(m(x, all_logits=True)[0], model()(x, all_logits=True)[0])  # calibration passes through
    finish_calibration(m)
    assert all(bool(s.seen) and float(s.hi) > float(s.lo) for s in sites)


# -------------------------------------------------------------------------------------- the model
def test_unset_sites_leave_the_model_bit_identical():
    base, same = model(), model(**{f"act_bits_{s}": 0 for s in SITES})
    assert list(base.state_dict()) == list(same.state_dict()) and not site_modules(same)
    x = torch.randint(0, base.config.vocab_size, (2, 16))
    assert torch.equal(base(x, all_logits=True)[0], same(x, all_logits=True)[0])


@pytest.mark.parametrize("site", list(SITES))
def test_each_site_quantises_its_tensor(site):
    """The site's quantiser runs (a hook sees its output on the grid) and the logits change."""
    m = model(**{f"act_bits_{site}": 3})
    seen = []
    for name, q in site_modules(m).items():
        assert name.endswith(f"aq.quant.{site}")
        q.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    x = torch.randint(0, m.config.vocab_size, (2, 16))
    out = m(x, all_logits=True)[0]
    assert seen and all(not torch.equal(i, o) for i, o in seen)
    out_site = seen[0][1]
    token = out_site[0, -1] if out_site.dim() == 3 else out_site[0, :, -1]  # the last token's entries
    assert len(torch.unique(token)) <= 2 ** 3  # on one 3-bit grid per token
    assert not torch.equal(out, model()(x, all_logits=True)[0])


def test_per_token_sites_are_causal_and_cached_decoding_agrees():
    m = model(**ALL_SITES)
    x = torch.randint(0, m.config.vocab_size, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % m.config.vocab_size  # change the future
    a, b = m(x, all_logits=True)[0], m(y, all_logits=True)[0]
    assert torch.equal(a[:, :10], b[:, :10]) and not torch.equal(a[:, 10:], b[:, 10:])
    cached = m.generate(x[:, :8], max_new_tokens=6, temperature=0.0)
    # greedy decoding without the cache: the full forward each step
    seq = x[:, :8]
    for _ in range(6):
        logits = m(seq, all_logits=True)[0][:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize("norm", ["softmax", "softermax", "strongermax", "sigsoftmax", "consmax", "consmax_v2",
                                  "saturating_consmax"])
def test_normaliser_internals_at_full_precision_equal_the_plain_path(norm):
    """The step-by-step path with 16-bit internals is within 16-bit rounding of the fused formula."""
    cfg = dict(softmax_variant_attn=norm, act_bits_exp_input=16, act_bits_numerator=16)
    if norm not in ("consmax", "consmax_v2", "saturating_consmax"):
        cfg["act_bits_denominator"] = 16
    x = torch.randint(0, tiny_config().vocab_size, (2, 16))
    a = model(**cfg)(x, all_logits=True)[0]
    b = model(softmax_variant_attn=norm)(x, all_logits=True)[0]
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_sites_a_variant_does_not_have_are_refused():
    with pytest.raises(UserError, match="--act_bits_denominator: the normaliser 'consmax' has no denominator"):
        model(softmax_variant_attn="consmax", act_bits_denominator=8)
    with pytest.raises(UserError, match="--act_bits_exp_input: the normaliser 'relumax' has no exp_input"):
        model(softmax_variant_attn="relumax", act_bits_exp_input=8)
    with pytest.raises(UserError, match="--act_bits_scores: linear attention has no score matrix"):
        model(attention_variant="linear", act_bits_scores=8)
    model(attention_variant="linear", act_bits_q=8, act_bits_attn_output=8)  # its own sites work
    # per layer: 0 where the variant lacks the site
    m = model(n_layer=2, softmax_variant_attn_layerlist=["softmax", "consmax"], act_bits_denominator=[8, 0])
    assert [n for n in site_modules(m)] == ["transformer.h.0.attn.aq.quant.denominator"]


def test_bad_bits_are_one_line_errors():
    for bad in (1, 17, -2, "x", [8, 33], 2.5):
        with pytest.raises(UserError, match="--act_bits_scores must be bit widths from 2 to 16") as e:
            GPTConfig(vocab_size=64, act_bits_scores=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="did you mean '--act_bits_scores'"):
        train_args.parse_args(["--act_bits_score", "8"])
    assert train_args.parse_args(["--act_bits_scores", "8", "4"]).model["act_bits_scores"] == [8, 4]
    assert GPTConfig(vocab_size=64, n_layer=3, act_bits_q=[8, 4]).for_layer(2).act_bits("q") == 8


def test_the_fused_paths_are_refused_when_a_site_inside_is_quantised(monkeypatch):
    m = model(softmax_variant_attn="consmax", act_bits_probs=8, softmax_kernel="triton")
    attn = m.transformer.h[0].attn
    assert attn.quantised_inside == ["probs"] and not attn.fusable and not attn.use_sdpa
    monkeypatch.setattr(kernels, "select", lambda choice, device_type: ("triton", "forced for the test"))
    line = kernels.describe(m, torch.device("cpu"))
    assert "torch, quantised at probs (consmax)" in line
    assert not model(act_bits_q=8).transformer.h[0].attn.quantised_inside  # q is outside: SDPA still applies
    assert model(act_bits_q=8).transformer.h[0].attn.use_sdpa


# ------------------------------------------------------------------------------------ the cost model
def test_quantised_sites_tag_the_operations_they_feed():
    m = model(act_bits_q=8, act_bits_k=4, act_bits_v=6, act_bits_probs=8, act_bits_mlp_hidden=4,
              act_bits_residual=12, act_bits_denominator=10)
    rows = m.cost(16)
    attn = rows["layer.0.attention"]
    assert attn.formats("macs").get("int4*int8") == 16 * m.config.n_head * m.config.head_dim  # q.k
    assert attn.formats("macs").get("int6*int8") == 16 * m.config.n_head * m.config.head_dim  # probs @ v
    assert set(attn.formats("kv_read")) == {"int4", "int6"}
    # the row sum and its reciprocal in the denominator's format (the quantisers' own scales stay untagged)
    assert attn.formats("div")["int10"] == m.config.n_head and attn.formats("reduce")["int10"] >= 16 * 4
    assert "default*int4" in rows["layer.0.mlp"].formats("macs")  # the down-projection's input
    assert set(rows["layer.0.residual"].formats("elementwise")) >= {"int12"}
    # and priced: fewer bits, less energy per token on the same target
    from ppa.estimate import estimate
    with torch.device("meta"):
        q, f = GPT(tiny_config(**ALL_SITES)), GPT(tiny_config())
    e_q, e_f = (estimate(x, target="h100_sxm", fmt="fp16").total("decode") for x in (q, f))
    assert e_q.ops_pj["macs"] < e_f.ops_pj["macs"] and e_q.kv_bytes < e_f.kv_bytes
    # dynamic per-token ranges are not free: their row maxima show up as compares and reductions
    assert e_q.ops_pj["cmp"] > e_f.ops_pj["cmp"] and e_q.ops_pj["reduce"] > e_f.ops_pj["reduce"]
    assert total(m.cost(16).values()).params == m.num_params()  # per_tensor-free sites: no parameters


# ----------------------------------------------------------------------- quantisation-aware training
def test_quantisation_aware_training(char_data, tmp_path):
    """All sites at 16 bits train like full precision; at 2 bits visibly worse; every run learns."""
    def run(name, **sites):
        argv = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir",
                str(tmp_path / name), "--max_iters", "30", "--eval_interval", "30", "--seed", "3"]
        for key, bits in sites.items():
            argv += [f"--{key}", str(bits)]
        return train.main(argv)
    full = run("full")
    b16 = run("b16", **{k: 16 for k in ALL_SITES})
    b2 = run("b2", **{k: 2 for k in ALL_SITES})
    for s in (full, b16, b2):
        assert s["final_train_loss"] < 4.0 < 4.2  # below the initial ~4.2 (ln 64)
    assert b16["best_val_loss"] == pytest.approx(full["best_val_loss"], abs=0.02)
    assert b2["best_val_loss"] > full["best_val_loss"] + 0.05
