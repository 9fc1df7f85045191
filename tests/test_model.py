"""model.py: parameter counting, init, optimiser groups, MFU, checkpoint rebuild (generation and
sampling: test_generation.py)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from devices import estimate_mfu, peak_flops
from gpt_conf import GPTConfig
from model import GPT


def nanogpt_param_count(V, T, L, C, hidden):
    """GPT-2 with bias=False, layernorm, learned positions, tied head, written out by hand."""
    per_block = 2 * C + (C * 3 * C) + (C * C) + (C * hidden) + (hidden * C)
    return V * C + T * C + L * per_block + C


def test_param_count_matches_formula_and_tying():
    cfg = GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64)
    m = GPT(cfg)
    assert m.num_params() == nanogpt_param_count(65, 64, 4, 128, 512)
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    assert m.num_params(exclude_position=True) == m.num_params() - 64 * 128
    assert m.lm_head.weight is m.transformer.wte.weight


def test_residual_projections_get_scaled_init():
    cfg = tiny_config(n_layer=8, n_embd=256, n_head=4)
    m = GPT(cfg)
    proj = m.transformer.h[0].mlp.c_proj.weight
    fc = m.transformer.h[0].mlp.c_fc.weight
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)


def test_optimizer_groups_cover_each_parameter_once():
    m = GPT(tiny_config(softmax_variant_attn="consmax", bias=True))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))


def test_flops_and_mfu(monkeypatch):
    cfg = GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024)
    m = GPT(cfg)
    n = m.num_params(exclude_position=True)
    assert m.flops_per_token() == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert estimate_mfu(m, 1000.0, None) is None
    assert estimate_mfu(m, 1000.0, 1e12) == pytest.approx(m.flops_per_token() * 1000 / 1e12)
    assert peak_flops("cpu", torch.float32) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, expect in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                         ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA GeForce RTX 4090", 165e12),
                         ("Some Future GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert peak_flops("cuda", torch.bfloat16) == expect
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-40GB")
    assert peak_flops("cuda", torch.float32) == 156e12  # TF32


def test_from_checkpoint_round_trip():
    m = GPT(tiny_config(position_variant="rope", softmax_variant_attn="consmax"))
    ckpt = {"model_config": m.config.to_dict(), "model": m.state_dict()}
    again = GPT.from_checkpoint(ckpt)
    x = torch.randint(0, 37, (2, 8))
    torch.testing.assert_close(m(x, all_logits=True)[0], again(x, all_logits=True)[0])
    assert not any("cos" in k or "sin" in k for k in ckpt["model"])  # rope tables are not stored


def test_forward_rejects_too_long_input():
    m = GPT(tiny_config())
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_norm_placement_formulas(placement):
    from model import Block
    cfg = tiny_config(norm_placement_attn=placement, norm_placement_mlp=placement, norm_variant="rmsnorm")
    model = GPT(cfg).eval()
    block = model.transformer.h[0]
    with torch.no_grad():
        for norm in (block.ln_1, block.ln_2, block.ln_1_out, block.ln_2_out):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, cfg.n_embd)
    attn = lambda h: block.attn(h, model.position)  # noqa: E731
    if placement == "pre":
        h = x + attn(block.ln_1(x))
        expect = h + block.mlp(block.ln_2(h))
    elif placement == "post":
        h = block.ln_1(x + attn(x))
        expect = block.ln_2(h + block.mlp(h))
    else:
        h = x + block.ln_1_out(attn(block.ln_1(x)))
        expect = h + block.ln_2_out(block.mlp(block.ln_2(h)))
    torch.testing.assert_close(block(x, model.position), expect)
    assert (block.ln_1_out is not None) == (placement == "peri")
    assert isinstance(block, Block)


def test_per_layer_lists_cycle_and_final_norm_is_separate():
    import train_args
    s = train_args.parse_args(["--attention_variant_layerlist", "causal", "linear",
                               "--norm_variant_layerlist", "rmsnorm", "layernorm", "prmsnorm",
                               "--norm_variant_final", "hyperspherenorm", "--n_layer", "4"])
    model = GPT(tiny_config(**s.model))
    attn = [b.attn.registry_name for b in model.transformer.h]
    norms = [b.ln_1.registry_name for b in model.transformer.h]
    assert attn == ["causal", "linear", "causal", "linear"]
    assert norms == ["rmsnorm", "layernorm", "prmsnorm", "rmsnorm"]
    assert model.transformer.ln_f.registry_name == "hyperspherenorm"
    assert model.config.for_layer(5).attention_variant == "linear"
    from errors import UserError
    with pytest.raises(UserError, match="did you mean 'linear'"):
        train_args.parse_args(["--attention_variant_layerlist", "causal", "lineer"])


def test_linear_variant_per_site():
    m = GPT(tiny_config(linear_variant="quantized", linear_variant_mlp_down="bitlinear"))
    block = m.transformer.h[0]
    assert block.attn.c_attn.registry_name == "quantized" and block.mlp.c_fc.registry_name == "quantized"
    assert block.mlp.c_proj.registry_name == "bitlinear"
