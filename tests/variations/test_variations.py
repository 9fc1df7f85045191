"""Every registered variant, found through the registry: shapes, gradients, causality, dtypes, and
reference formulas. A newly registered variant is covered here without editing this file."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import variations  # noqa: F401
from gpt_conf import GPTConfig, component_flags
from model import GPT
from variations.attention import causal_mask
from variations.registry import KINDS, create, names

from conftest import tiny_config

FIELD_OF_KIND = {kind: component_flags(kind)[0] for kind in KINDS}  # the main flag of each kind
EVERY_VARIANT = [(kind, name) for kind in FIELD_OF_KIND for name in names(kind)]
ATTENTION_COMBOS = list(itertools.product(names("attention"), names("position"), names("softmax")))


def test_every_kind_is_selectable_from_the_config():
    registry_kinds = {f.metadata["registry"] for f in GPTConfig.__dataclass_fields__.values() if "registry" in f.metadata}
    assert registry_kinds == set(KINDS)


@pytest.mark.parametrize("kind,name", EVERY_VARIANT, ids=[f"{k}-{n}" for k, n in EVERY_VARIANT])
def test_variant_forward_backward(kind, name):
    cfg = tiny_config(**{FIELD_OF_KIND[kind]: name})
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, cfg.block_size, cfg.vocab_size)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("kind,name", EVERY_VARIANT, ids=[f"{k}-{n}" for k, n in EVERY_VARIANT])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_variant_half_precision(kind, name, dtype):
    """Under autocast every variant stays finite and close to its fp32 result."""
    cfg = tiny_config(**{FIELD_OF_KIND[kind]: name})
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    ref, _ = model(idx, all_logits=True)
    with torch.autocast("cpu", dtype=dtype):
        out, loss = model(idx, idx)
    assert torch.isfinite(out).all() and torch.isfinite(loss)
    assert (out.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("attention,position,softmax", ATTENTION_COMBOS)
def test_causality(attention, position, softmax):
    """Changing a future token leaves the logits of every earlier position unchanged."""
    cfg = tiny_config(attention_variant=attention, position_variant=position, softmax_variant_attn=softmax,
                      n_kv_head=2)
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    t = 9
    changed = idx.clone()
    changed[:, t:] = (changed[:, t:] + 1 + torch.randint(0, cfg.vocab_size - 1, changed[:, t:].shape)) % cfg.vocab_size
    a, _ = model(idx, all_logits=True)
    b, _ = model(changed, all_logits=True)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("attention,position,softmax", ATTENTION_COMBOS)
def test_kv_cache_generation_equals_uncached(attention, position, softmax):
    """Greedy generation with the KV cache gives the same tokens as without, also past block_size."""
    cfg = tiny_config(attention_variant=attention, position_variant=position, softmax_variant_attn=softmax,
                      n_kv_head=2)
    model = GPT(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    n_new = 2 * cfg.block_size  # runs past the context window, where the window slides
    cached = model.generate(prompt, n_new, temperature=0, use_cache=True)
    plain = model.generate(prompt, n_new, temperature=0, use_cache=False)
    assert cached.shape == (2, 5 + n_new)
    assert torch.equal(cached, plain)


def _reference_mha(attn, x, n_head):
    """Multi-head causal attention written out from the formula (nanoGPT's manual path)."""
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
    att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(dim=-1)
    return attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


def test_attention_with_n_kv_head_equal_n_head_is_plain_mha():
    cfg = tiny_config(n_kv_head=4)
    model = GPT(cfg).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, cfg.block_size, cfg.n_embd)
    torch.testing.assert_close(attn(x, model.position), _reference_mha(attn, x, cfg.n_head), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softmax", names("softmax"))
def test_grouped_query_attention_equals_mha_with_shared_kv(softmax):
    """GQA with n_kv_head=2 equals MHA whose key/value heads are copies within each group."""
    gqa_cfg = tiny_config(n_head=4, n_kv_head=2, softmax_variant_attn=softmax)
    mha_cfg = tiny_config(n_head=4, n_kv_head=4, softmax_variant_attn=softmax)
    gqa, mha = create("attention", "causal", gqa_cfg).eval(), create("attention", "causal", mha_cfg).eval()
    hs, C = gqa_cfg.head_dim, gqa_cfg.n_embd
    w = gqa.c_attn.weight  # rows: 4 q heads, 2 k heads, 2 v heads
    wq, wk, wv = w[:4 * hs], w[4 * hs:6 * hs], w[6 * hs:]
    rep = lambda m: m.view(2, hs, C).repeat_interleave(2, dim=0).reshape(4 * hs, C)  # noqa: E731
    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
        mha.softmax.load_state_dict(gqa.softmax.state_dict())
    pos = create("position", "rope", gqa_cfg)
    x = torch.randn(2, gqa_cfg.block_size, C)
    torch.testing.assert_close(gqa(x, pos), mha(x, pos), rtol=1e-5, atol=1e-6)


def test_sdpa_path_equals_explicit_softmax_path():
    cfg = tiny_config(n_kv_head=2, position_variant="rope")
    attn = create("attention", "causal", cfg).eval()
    pos = create("position", "rope", cfg)
    x = torch.randn(2, cfg.block_size, cfg.n_embd)
    assert attn.use_sdpa
    fast = attn(x, pos)
    attn.use_sdpa = False
    torch.testing.assert_close(fast, attn(x, pos), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- softmax family

@pytest.mark.parametrize("name", names("softmax"))
def test_softmax_masks_to_exact_zero(name):
    sm = create("softmax", name, tiny_config())
    scores = torch.randn(2, 3, 6, 6)
    mask = causal_mask(6, 6, "cpu")
    mask[0, :] = False  # a fully masked row
    y = sm(scores, mask)
    assert y.shape == scores.shape
    assert (y[..., ~mask] == 0).all()
    assert (y[..., 0, :] == 0).all()
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", names("softmax"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_softmax_dtype_and_extreme_scores(name, dtype):
    sm = create("softmax", name, tiny_config())
    scores = torch.tensor([[-1e4, 0.0, 60.0, 1e4]]).to(dtype)
    y = sm(scores, torch.ones(1, 4, dtype=torch.bool))
    assert y.dtype == dtype
    assert torch.isfinite(y).all()


def test_softmax_matches_torch():
    x = torch.randn(4, 7, 7)
    mask = causal_mask(7, 7, "cpu")
    ref = torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(create("softmax", "softmax", tiny_config())(x, mask), ref)


def test_consmax_formula_and_learnable_constants():
    cfg = tiny_config(consmax_beta_init=1.5, consmax_gamma_init=20.0)
    sm = create("softmax", "consmax", cfg)
    x = torch.randn(3, 5, 5)
    mask = causal_mask(5, 5, "cpu")
    torch.testing.assert_close(sm(x, mask), torch.where(mask, torch.exp(x - 1.5) / 20.0, 0.0))
    sm(x, mask).sum().backward()
    assert sm.beta.grad is not None and sm.gamma.grad is not None and sm.gamma.grad != 0


# ---------------------------------------------------------------- norms, activations, positions

def test_norm_formulas():
    cfg = tiny_config(bias=True)
    x = torch.randn(2, 5, cfg.n_embd) * 3 + 1
    ln, rms = create("norm", "layernorm", cfg), create("norm", "rmsnorm", cfg)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
        rms.weight.uniform_(0.5, 1.5)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + cfg.norm_eps) * ln.weight + ln.bias)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * rms.weight)
    assert create("norm", "layernorm", tiny_config(bias=False)).bias is None


ACTIVATION_FORMULAS = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "relu": lambda x: torch.clamp(x, min=0),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "squared_relu": lambda x: torch.clamp(x, min=0) ** 2,
}


@pytest.mark.parametrize("name", names("activation"))
def test_activation_shape_and_formula(name):
    act = create("activation", name, tiny_config())
    x = torch.linspace(-4, 4, 101).view(1, 101)
    y = act(x)
    assert y.shape == x.shape
    if name in ACTIVATION_FORMULAS:
        torch.testing.assert_close(y, ACTIVATION_FORMULAS[name](x))


def test_rope_scores_depend_only_on_distance():
    cfg = tiny_config(position_variant="rope")
    rope = create("position", "rope", cfg)
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)
    def score(pq, pk):
        rq, _ = rope.rotate(q, q, pq)
        _, rk = rope.rotate(k, k, pk)
        return (rq * rk).sum()
    torch.testing.assert_close(score(3, 1), score(12, 10))
    torch.testing.assert_close(score(0, 0), (q * k).sum())  # position 0 is the identity
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_learned_position_adds_its_table():
    cfg = tiny_config(position_variant="learned")
    pos = create("position", "learned", cfg)
    x = torch.zeros(1, 4, cfg.n_embd)
    torch.testing.assert_close(pos.embed(x, start=3), pos.wpe.weight[3:7].unsqueeze(0))


def test_mlp_hidden_size():
    assert tiny_config(mlp_expansion_factor=2.5).mlp_hidden_size == 80
    m = create("mlp", "swiglu", tiny_config(mlp_hidden_size=48))
    assert m.c_fc.out_features == 96 and m.c_proj.in_features == 48
    x = torch.randn(2, 3, 32)
    gate, up = m.c_fc(x).chunk(2, -1)
    torch.testing.assert_close(m(x), m.c_proj(F.silu(gate) * up))


@pytest.mark.parametrize("kind,name", EVERY_VARIANT, ids=[f"{k}-{n}" for k, n in EVERY_VARIANT])
def test_one_layer_model_learns(kind, name):
    """A 1-layer model with the variant fits a fixed batch: its loss falls within 25 AdamW steps."""
    cfg = tiny_config(n_layer=1, **{FIELD_OF_KIND[kind]: name})
    model = GPT(cfg)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (4, cfg.block_size + 1), generator=gen)
    x, y = data[:, :-1], data[:, 1:]
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    losses = []
    for _ in range(25):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3, losses
