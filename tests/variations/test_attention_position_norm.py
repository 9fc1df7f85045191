"""Attention, positional encodings and norms against their formulas written out here: RoPE (also
partial), ALiBi, FIRE, sinusoidal; QK-norm, local windows, logit soft-capping, linear attention,
grouped-query heads, the KV cache; pRMSNorm, HypersphereNorm; knob validation; cost counts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from errors import UserError
from model import GPT
from variations.attention import KVCache, causal_mask
from variations.cost import Cost
from variations.registry import create

from conftest import tiny_config


# ---------------------------------------------------------------- references

def split_qkv(attn, x, nh, nkv):
    """q (B, nh, T, hs), k and v (B, nkv, T, hs) from the fused projection, split by hand."""
    B, T, C = x.shape
    hs = C // nh
    q, k, v = attn.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
    return (q.view(B, T, nh, hs).transpose(1, 2), k.view(B, T, nkv, hs).transpose(1, 2),
            v.view(B, T, nkv, hs).transpose(1, 2))


def expand_kv(t, nh):
    """(B, nkv, T, hs) -> (B, nh, T, hs): kv head g serves query heads g*nh/nkv .. (g+1)*nh/nkv - 1."""
    return t.repeat_interleave(nh // t.size(1), dim=1)


def softmax_attention(q, k, v, keep, bias=None, cap=None):
    """softmax(cap(q k^T / sqrt(hs)) + bias, masked) v."""
    k, v = expand_kv(k, q.size(1)), expand_kv(v, q.size(1))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    if bias is not None:
        s = s + bias
    return s.masked_fill(~keep, float("-inf")).softmax(dim=-1) @ v


def merge(attn, y):
    B, nh, T, hs = y.shape
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, nh * hs))


def rope_reference(x, start, theta, n_rot):
    """Rotate the first n_rot channels of x (B, h, T, hs) as complex numbers: the pair (c, c + n_rot/2)
    is the number x_c + i x_{c + n_rot/2}, multiplied by exp(i pos theta^(-2c/n_rot))."""
    T, half = x.size(2), n_rot // 2
    pos = torch.arange(start, start + T, dtype=torch.float64)
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / n_rot)
    rot = torch.polar(torch.ones(T, half, dtype=torch.float64), torch.outer(pos, freqs))  # (T, half)
    z = torch.view_as_complex(torch.stack((x[..., :half], x[..., half:n_rot]), dim=-1).double().contiguous())
    out = torch.view_as_real(z * rot)  # (B, h, T, half, 2)
    return torch.cat((out[..., 0], out[..., 1], x[..., n_rot:].double()), dim=-1).float()


def phi(x):
    return F.elu(x) + 1


def linear_attention_reference(q, k, v, decay=None):
    """Quadratic form: phi(Q) phi(K)^T (times exp(decay) if given), causally masked, row-normalised, times V."""
    k, v = expand_kv(k, q.size(1)), expand_kv(v, q.size(1))
    w = phi(q) @ phi(k).transpose(-2, -1)
    if decay is not None:
        w = w * torch.exp(decay)
    T, t_k = q.size(2), k.size(2)
    w = w * torch.ones(t_k, t_k).tril()[t_k - T:]
    return (w / w.sum(-1, keepdim=True)) @ v


def run_with_cache(attn, pos, x, chunks, n_kv_head):
    """Feed x (B, T, C) through attn in chunks of the given sizes, with a KV cache; concatenated outputs."""
    B, T, C = x.shape
    cache = KVCache(B, n_kv_head, T, C // attn.n_head, "cpu", x.dtype)
    outs, s = [], 0
    for n in chunks:
        outs.append(attn(x[:, s:s + n], pos, cache))
        s += n
    assert cache.length == T
    return torch.cat(outs, dim=1)


# ---------------------------------------------------------------- RoPE

@pytest.mark.parametrize("fraction,n_rot", [(1.0, 8), (0.5, 4), (0.25, 2)])
@pytest.mark.parametrize("start", [0, 5])
def test_rope_equals_complex_rotation(fraction, n_rot, start):
    cfg = tiny_config(position_variant="rope", rope_fraction=fraction, rope_theta=500.0, n_kv_head=2)  # hs = 8
    rope = create("position", "rope", cfg)
    assert rope.n_rot == n_rot
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    rq, rk = rope.rotate(q, k, start)
    torch.testing.assert_close(rq, rope_reference(q, start, 500.0, n_rot), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, rope_reference(k, start, 500.0, n_rot), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rq[..., n_rot:], q[..., n_rot:], rtol=0, atol=0)  # the rest pass through
    assert rope.layer_cost(16).elementwise == 3 * (4 + 2) * n_rot


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, 0.05])
def test_rope_fraction_validation_names_the_flag(fraction):
    with pytest.raises(UserError, match="--rope_fraction"):
        create("position", "rope", tiny_config(position_variant="rope", rope_fraction=fraction))


def test_partial_rope_scores_depend_only_on_distance():
    cfg = tiny_config(position_variant="rope", rope_fraction=0.5)
    rope = create("position", "rope", cfg)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        return (rope.rotate(q, q, pq)[0] * rope.rotate(k, k, pk)[1]).sum()
    torch.testing.assert_close(score(7, 2), score(13, 8))
    assert not torch.allclose(score(7, 2), score(7, 3))


# ---------------------------------------------------------------- sinusoidal, ALiBi, FIRE

def test_sinusoidal_table_and_offset():
    cfg = tiny_config(position_variant="sinusoidal", n_embd=10, n_head=2)
    pos = create("position", "sinusoidal", cfg)
    assert sum(p.numel() for p in pos.parameters()) == 0 and not pos.state_dict()
    out = pos.embed(torch.zeros(1, 4, 10), start=3)[0]  # positions 3..6
    for t in range(4):
        for i in range(5):
            angle = (3 + t) / 10000 ** (2 * i / 10)
            assert out[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert out[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    x = torch.randn(2, 4, 10)
    torch.testing.assert_close(pos.embed(x, 3), x + out)


def test_alibi_slopes():
    from variations.position import alibi_slopes
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(4) == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert alibi_slopes(1) == [1 / 256]
    # not a power of two: the 4-head slopes, then every other 8-head slope
    assert alibi_slopes(6) == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    s = alibi_slopes(12)
    assert s[:8] == alibi_slopes(8) and s[8:] == alibi_slopes(16)[0::2][:4]


def test_alibi_bias_matrix_with_cache_offset():
    cfg = tiny_config(position_variant="alibi", n_head=8, n_embd=64)
    pos = create("position", "alibi", cfg)
    assert sum(p.numel() for p in pos.parameters()) == 0
    full = pos.score_bias(6, 6, "cpu")
    assert full.shape == (8, 6, 6)
    for h in range(8):
        m = 2.0 ** -(h + 1)
        for i in range(6):
            for j in range(i + 1):
                assert full[h, i, j].item() == pytest.approx(-m * (i - j))
    part = pos.score_bias(2, 6, "cpu")  # queries at positions 4 and 5 (KV cache)
    assert part.shape == (8, 2, 6)
    torch.testing.assert_close(part, full[:, 4:])


def fire_reference(pos, t_q, t_k):
    """f(log(c d + 1) / log(c max(L, i) + 1)) with the MLP written out from its weights."""
    c, L = pos.c.item(), abs(pos.threshold_scale.item() * pos.threshold_init)
    lin1, lin2 = pos.mlp[0], pos.mlp[2]
    out = torch.zeros(pos.n_head, t_q, t_k)
    for qi in range(t_q):
        i = t_k - t_q + qi
        for j in range(i + 1):
            u = math.log(c * (i - j) + 1) / (math.log(c * max(L, i) + 1) + 1e-6)
            h = torch.relu(lin1.weight[:, 0] * u + lin1.bias)
            out[:, qi, j] = lin2.weight @ h + lin2.bias
    return out


def test_fire_bias_formula_shapes_and_gradients():
    cfg = tiny_config(position_variant="fire", fire_hidden=6, fire_c_init=0.3, fire_threshold_init=5.0)
    pos = create("position", "fire", cfg)
    with torch.no_grad():
        pos.threshold_scale.fill_(1.2)  # L = 6: rows below 6 use L, later rows their own position
    keep = causal_mask(10, 10, "cpu")
    full = pos.score_bias(10, 10, "cpu")
    assert full.shape == (4, 10, 10)
    torch.testing.assert_close(full * keep, fire_reference(pos, 10, 10), rtol=1e-4, atol=1e-5)
    part = pos.score_bias(3, 10, "cpu")  # the last 3 queries, as with a KV cache
    assert part.shape == (4, 3, 10)
    torch.testing.assert_close(part, full[:, 7:])
    (full * keep).square().sum().backward()
    for name, p in pos.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    n_params = 6 + 6 + 6 * 4 + 4 + 2
    assert sum(p.numel() for p in pos.parameters()) == n_params == pos.cost(16).params
    assert pos.layer_cost(16).params == 0


@pytest.mark.parametrize("c", [0.0, -1.0])
def test_fire_c_validation(c):
    with pytest.raises(UserError, match="--fire_c_init"):
        create("position", "fire", tiny_config(position_variant="fire", fire_c_init=c))


def test_fire_layer_cost_macs_match_flop_counter():
    cfg = tiny_config(position_variant="fire", fire_hidden=8)
    pos = create("position", "fire", cfg)
    T = 12
    with FlopCounterMode(display=False) as fc:
        pos.score_bias(T, T, "cpu")
    assert fc.get_total_flops() / 2 / T == pos.layer_cost(T).macs


# ---------------------------------------------------------------- causal attention knobs

@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("softmax", ["softmax", "consmax"])
def test_causal_gqa_equals_reference(n_kv_head, softmax):
    cfg = tiny_config(n_kv_head=n_kv_head, softmax_variant_attn=softmax, consmax_beta_init=0.0,
                      consmax_gamma_init=1.0, position_variant="rope")
    attn, pos = create("attention", "causal", cfg).eval(), create("position", "rope", cfg)
    x = torch.randn(2, 10, cfg.n_embd)
    q, k, v = split_qkv(attn, x, 4, n_kv_head)
    q, k = rope_reference(q, 0, cfg.rope_theta, 8), rope_reference(k, 0, cfg.rope_theta, 8)
    if softmax == "softmax":
        y = softmax_attention(q, k, v, causal_mask(10, 10, "cpu"))
    else:  # consmax with beta 0, gamma 1: exp(s), masked
        k, v = expand_kv(k, 4), expand_kv(v, 4)
        y = (torch.exp(q @ k.transpose(-2, -1) / math.sqrt(8)) * causal_mask(10, 10, "cpu")) @ v
    torch.testing.assert_close(attn(x, pos), merge(attn, y), rtol=1e-4, atol=1e-5)


def test_window_mask_rows():
    keep = causal_mask(6, 6, "cpu", window=3)
    for i in range(6):
        assert keep[i].nonzero().flatten().tolist() == list(range(max(0, i - 2), i + 1))
    torch.testing.assert_close(causal_mask(2, 6, "cpu", window=3), keep[4:])  # cached queries 4, 5


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("position", ["none", "alibi"])
def test_window_query_sees_exactly_the_last_window_positions(sdpa, position):
    W, T, i = 3, 12, 8
    cfg = tiny_config(window_size=W, position_variant=position)
    attn, pos = create("attention", "causal", cfg).eval(), create("position", position, cfg)
    attn.use_sdpa = sdpa
    x = torch.randn(1, T, cfg.n_embd)
    y = attn(x, pos)
    for j in range(T):
        x2 = x.clone()
        x2[:, j] += 1.0
        changed = not torch.allclose(attn(x2, pos)[:, i], y[:, i], rtol=0, atol=1e-6)
        assert changed == (i - W < j <= i), j


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("position", ["rope", "alibi", "fire"])
def test_window_equals_reference_and_holds_with_the_cache(sdpa, position):
    cfg = tiny_config(window_size=4, position_variant=position, n_kv_head=2)
    attn, pos = create("attention", "causal", cfg).eval(), create("position", position, cfg)
    attn.use_sdpa = sdpa
    x = torch.randn(2, 13, cfg.n_embd)
    q, k, v = split_qkv(attn, x, 4, 2)
    q, k = pos.rotate(q, k, 0)
    y = merge(attn, softmax_attention(q, k, v, causal_mask(13, 13, "cpu", 4), pos.score_bias(13, 13, "cpu")))
    torch.testing.assert_close(attn(x, pos), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run_with_cache(attn, pos, x, [5, 1, 1, 6], 2), y, rtol=1e-4, atol=1e-5)


def test_qk_norm_equals_formula_and_learns():
    cfg = tiny_config(qk_norm=True, n_kv_head=2, position_variant="rope", norm_eps=1e-5)
    attn, pos = create("attention", "causal", cfg).eval(), create("position", "rope", cfg)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (8,)
    x = torch.randn(2, 9, cfg.n_embd) * 3
    q, k, v = split_qkv(attn, x, 4, 2)
    q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight
    k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.k_norm.weight
    q, k = rope_reference(q, 0, cfg.rope_theta, 8), rope_reference(k, 0, cfg.rope_theta, 8)  # after the norm
    y = merge(attn, softmax_attention(q, k, v, causal_mask(9, 9, "cpu")))
    out = attn(x, pos)
    torch.testing.assert_close(out, y, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    assert attn.q_norm.weight.grad.abs().sum() > 0 and attn.k_norm.weight.grad.abs().sum() > 0
    assert attn.cost(16).params == sum(p.numel() for p in attn.parameters())
    assert attn.cost(16).params - create("attention", "causal", tiny_config(n_kv_head=2)).cost(16).params == 16


@pytest.mark.parametrize("cap", [0.5, 3.0])
def test_softcap_equals_formula(cap):
    cfg = tiny_config(attn_logit_softcap=cap, position_variant="alibi")
    attn, pos = create("attention", "causal", cfg).eval(), create("position", "alibi", cfg)
    assert not attn.use_sdpa  # the cap needs the explicit path
    x = torch.randn(2, 9, cfg.n_embd) * 4
    q, k, v = split_qkv(attn, x, 4, 4)
    y = merge(attn, softmax_attention(q, k, v, causal_mask(9, 9, "cpu"), pos.score_bias(9, 9, "cpu"), cap))
    torch.testing.assert_close(attn(x, pos), y, rtol=1e-4, atol=1e-5)
    uncapped = merge(attn, softmax_attention(q, k, v, causal_mask(9, 9, "cpu"), pos.score_bias(9, 9, "cpu")))
    assert not torch.allclose(y, uncapped, atol=1e-3)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(window_size=0), "--window_size"),
    (dict(window_size=-2), "--window_size"),
    (dict(attn_logit_softcap=0.0), "--attn_logit_softcap"),
    (dict(attn_logit_softcap=-1.0), "--attn_logit_softcap"),
])
def test_attention_knob_validation_names_the_flag(kwargs, flag):
    with pytest.raises(UserError, match=flag):
        create("attention", "causal", tiny_config(**kwargs))


def test_window_cost_counts_window_keys():
    base = create("attention", "causal", tiny_config())
    win = create("attention", "causal", tiny_config(window_size=4))
    nh, hs, T = 4, 8, 16
    assert base.cost(T).macs - win.cost(T).macs == 2 * nh * (T - 4) * hs
    assert win.cost(3).macs == base.cost(3).macs  # a window wider than the context changes nothing
    cap = create("attention", "causal", tiny_config(attn_logit_softcap=5.0))
    assert cap.cost(T).exp - base.cost(T).exp == nh * T  # one tanh per score


# ---------------------------------------------------------------- model-level: knobs keep causality and the cache

KNOB_SETTINGS = [
    dict(window_size=5), dict(window_size=5, position_variant="alibi", softmax_variant_attn="consmax"),
    dict(qk_norm=True, position_variant="rope", rope_fraction=0.5), dict(attn_logit_softcap=2.0, window_size=3),
    dict(attention_variant="linear", position_variant="alibi"), dict(attention_variant="linear", n_kv_head=1),
    dict(attention_variant_layerlist=["identity", "causal"], window_size=4),
]


@pytest.mark.parametrize("kwargs", KNOB_SETTINGS, ids=[str(k) for k in KNOB_SETTINGS])
def test_knobs_keep_causality_and_cached_generation(kwargs):
    cfg = tiny_config(**{"n_kv_head": 2, **kwargs})
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % cfg.vocab_size
    a, b = model(idx, all_logits=True)[0], model(changed, all_logits=True)[0]
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    prompt = idx[:, :5]
    n_new = 2 * cfg.block_size
    assert torch.equal(model.generate(prompt, n_new, temperature=0, use_cache=True),
                       model.generate(prompt, n_new, temperature=0, use_cache=False))


# ---------------------------------------------------------------- linear attention

@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_linear_attention_equals_quadratic_reference(n_kv_head):
    cfg = tiny_config(attention_variant="linear", n_kv_head=n_kv_head, position_variant="rope")
    attn, pos = create("attention", "linear", cfg).eval(), create("position", "rope", cfg)
    x = torch.randn(2, 11, cfg.n_embd)
    q, k, v = split_qkv(attn, x, 4, n_kv_head)
    q, k = rope_reference(q, 0, cfg.rope_theta, 8), rope_reference(k, 0, cfg.rope_theta, 8)
    y = merge(attn, linear_attention_reference(q, k, v))
    torch.testing.assert_close(attn(x, pos), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run_with_cache(attn, pos, x, [4, 1, 1, 5], n_kv_head), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [1, 4])
def test_linear_attention_with_alibi_is_decayed(n_kv_head):
    cfg = tiny_config(attention_variant="linear", n_kv_head=n_kv_head, position_variant="alibi")
    attn, pos = create("attention", "linear", cfg).eval(), create("position", "alibi", cfg)
    x = torch.randn(2, 10, cfg.n_embd)
    q, k, v = split_qkv(attn, x, 4, n_kv_head)
    slopes = torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256]).view(4, 1, 1)
    dist = (torch.arange(10).view(10, 1) - torch.arange(10).view(1, 10)).float()
    y = merge(attn, linear_attention_reference(q, k, v, decay=-slopes * dist.clamp(min=0)))
    torch.testing.assert_close(attn(x, pos), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run_with_cache(attn, pos, x, [3, 1, 6], n_kv_head), y, rtol=1e-4, atol=1e-5)


def test_linear_attention_is_finite_in_bf16_and_reads_no_softmax():
    cfg = tiny_config(attention_variant="linear", softmax_variant_attn="consmax")
    attn, pos = create("attention", "linear", cfg), create("position", "none", cfg)
    assert not any("softmax" in n for n, _ in attn.named_parameters())
    x = torch.randn(2, 16, cfg.n_embd) * 10
    ref = attn(x, pos)
    out = attn.to(torch.bfloat16)(x.bfloat16(), pos)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("position", ["none", "alibi"])
def test_linear_attention_cost_matches_flop_counter(n_kv_head, position):
    cfg = tiny_config(attention_variant="linear", n_kv_head=n_kv_head, position_variant=position)
    attn, pos = create("attention", "linear", cfg), create("position", position, cfg)
    B, T = 2, 16
    with FlopCounterMode(display=False) as fc:
        attn(torch.randn(B, T, cfg.n_embd), pos)
    assert fc.get_total_flops() / 2 / (B * T) == attn.cost(T).macs
    assert attn.cost(T).params == sum(p.numel() for p in attn.parameters())


# ---------------------------------------------------------------- identity attention

def test_identity_attention_contributes_nothing_and_advances_the_cache():
    cfg = tiny_config(attention_variant="identity")
    attn = create("attention", "identity", cfg)
    assert not list(attn.parameters()) and attn.cost(16) == Cost()
    x = torch.randn(2, 5, cfg.n_embd, requires_grad=True)
    cache = KVCache(2, 4, 16, 8, "cpu", torch.float32)
    y = attn(x, create("position", "none", cfg), cache)
    assert torch.equal(y, torch.zeros_like(x)) and cache.length == 5
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    model = GPT(cfg)  # a block is its MLP alone: the output depends on no other position
    idx = torch.randint(0, 37, (1, 8))
    changed = idx.clone()
    changed[0, :7] = (changed[0, :7] + 1) % 37
    torch.testing.assert_close(model(idx)[0], model(changed)[0])


# ---------------------------------------------------------------- norms

def test_prmsnorm_formula():
    cfg = tiny_config(prmsnorm_fraction=0.25)  # the RMS over the first 8 of 32 channels
    norm = create("norm", "prmsnorm", cfg)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32) * 3 + 1
    ref = x / torch.sqrt(x[..., :8].pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    assert norm.cost(1).params == 32 and norm.cost(1).reduce == 8
    assert create("norm", "prmsnorm", tiny_config(prmsnorm_fraction=0.1)).k == 4  # ceil(3.2)
    full = create("norm", "prmsnorm", tiny_config(prmsnorm_fraction=1.0))
    torch.testing.assert_close(full(x), create("norm", "rmsnorm", cfg)(x))


@pytest.mark.parametrize("learn", [True, False])
def test_hyperspherenorm_formula(learn):
    cfg = tiny_config(hyperspherenorm_learn_radius=learn)
    norm = create("norm", "hyperspherenorm", cfg)
    x = torch.randn(2, 5, 32) * 3 + 1
    r = math.sqrt(32)
    ref = x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + cfg.norm_eps) * r
    y = norm(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((2, 5), r), rtol=1e-5, atol=1e-5)
    n_params = sum(p.numel() for p in norm.parameters())
    assert n_params == int(learn) == norm.cost(1).params
    if learn:
        (y * torch.randn_like(y)).sum().backward()
        assert norm.radius.grad is not None and norm.radius.grad != 0
    custom = create("norm", "hyperspherenorm", tiny_config(hyperspherenorm_radius_init=2.0))
    torch.testing.assert_close(custom(x).norm(dim=-1), torch.full((2, 5), 2.0), rtol=1e-5, atol=1e-5)


def test_hyperspherenorm_of_zero_is_finite():
    norm = create("norm", "hyperspherenorm", tiny_config())
    x = torch.zeros(1, 2, 32, requires_grad=True)
    y = norm(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()


def test_identity_norm():
    norm = create("norm", "identity", tiny_config())
    x = torch.randn(2, 3, 32)
    assert norm(x) is x and not list(norm.parameters())


@pytest.mark.parametrize("kwargs,name,flag", [
    (dict(prmsnorm_fraction=0.0), "prmsnorm", "--prmsnorm_fraction"),
    (dict(prmsnorm_fraction=1.5), "prmsnorm", "--prmsnorm_fraction"),
    (dict(hyperspherenorm_radius_init=0.0), "hyperspherenorm", "--hyperspherenorm_radius_init"),
    (dict(hyperspherenorm_radius_init=-1.0), "hyperspherenorm", "--hyperspherenorm_radius_init"),
])
def test_norm_knob_validation_names_the_flag(kwargs, name, flag):
    with pytest.raises(UserError, match=flag):
        create("norm", name, tiny_config(**kwargs))


# ---------------------------------------------------------------- parameter counts in cost()

@pytest.mark.parametrize("kind,name,kwargs", [
    ("attention", "causal", dict(qk_norm=True, n_kv_head=2)), ("attention", "linear", dict(n_kv_head=1)),
    ("attention", "identity", {}), ("norm", "prmsnorm", {}), ("norm", "hyperspherenorm", {}),
    ("norm", "identity", {}), ("position", "sinusoidal", {}), ("position", "alibi", {}),
    ("position", "fire", {}), ("position", "rope", dict(rope_fraction=0.5)),
])
def test_cost_params_equal_real_parameter_count(kind, name, kwargs):
    m = create(kind, name, tiny_config(**kwargs))
    assert m.cost(16).params == sum(p.numel() for p in m.parameters())


def test_kv_cache_truncate_rolls_back_and_checks_bounds():
    from variations.attention import KVCache
    cache = KVCache(1, 2, 8, 4, "cpu", torch.float32)
    k = torch.arange(5 * 4, dtype=torch.float32).view(1, 1, 5, 4).expand(1, 2, 5, 4)
    cache.append(k, k)
    cache.truncate(2)
    keys, _ = cache.append(-k[:, :, :1], -k[:, :, :1])  # overwrites position 2
    assert cache.length == 3 and torch.equal(keys[:, :, :2], k[:, :, :2]) and torch.equal(keys[:, :, 2], -k[:, :, 0])
    with pytest.raises(ValueError, match="cannot truncate to 4"):
        cache.truncate(4)


# ---------------------------------------------------------------- DyT

def test_dyt_equals_formula_and_learns_alpha():
    cfg = tiny_config(norm_variant="dyt", dyt_alpha_init=0.8)
    dyt = create("norm", "dyt", cfg)
    assert dyt.alpha.item() == pytest.approx(0.8)
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        dyt.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, cfg.n_embd) * 3
    y = dyt(x)
    torch.testing.assert_close(y, dyt.weight * torch.tanh(0.8 * x) + dyt.bias)
    y.square().sum().backward()
    assert dyt.alpha.grad is not None and dyt.alpha.grad != 0
    c = dyt.cost()
    assert c.params == sum(p.numel() for p in dyt.parameters()) == 2 * 32 + 1
    assert c.reduce == 0 and c.sqrt == 0 and c.div == 0  # no row reduction, unlike LayerNorm / RMSNorm
    with pytest.raises(UserError, match="--dyt_alpha_init must be a positive number"):
        create("norm", "dyt", tiny_config(dyt_alpha_init=0.0))


@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_dyt_serves_every_norm_site(placement):
    cfg = tiny_config(norm_variant="dyt", norm_placement_attn=placement, norm_placement_mlp=placement)
    model = GPT(cfg)
    norms = [m for m in model.modules() if type(m).__name__ == "DyT"]
    assert len(norms) == cfg.n_layer * (4 if placement == "peri" else 2) + 1  # the blocks' and the final norm
    assert model.learned_constants()["transformer.ln_f.alpha"] == pytest.approx(0.5)
    mixed = GPT(tiny_config(norm_variant_layerlist=["dyt", "rmsnorm"], norm_variant_final="dyt"))
    assert [type(b.ln_1).__name__ for b in mixed.transformer.h] == ["DyT", "RMSNorm"]
    assert type(mixed.transformer.ln_f).__name__ == "DyT"
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    _, loss = model(idx, idx)
    assert torch.isfinite(loss)
