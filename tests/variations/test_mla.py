"""Multi-head latent attention (variations/mla.py): the formula, the latent KV cache and its size, the
cost model's cache traffic. The registry-wide tests (test_variations.py, test_cost.py) cover it too."""
from __future__ import annotations

import math

import pytest
import torch

from model import GPT
from variations.attention import causal_mask
from variations.cost import total
from variations.mla import LatentCache
from variations.registry import create

from conftest import tiny_config
from test_attention_position_norm import rope_reference


def mla_reference(attn, x, position):
    """MLA written out head by head from DeepSeek-V2's equations (uncached, softmax)."""
    B, T, _ = x.shape
    nh, hs, dr, dc = attn.n_head, attn.head_dim, attn.rope_dim, attn.kv_rank
    rms = lambda t, w: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + attn.eps) * w  # noqa: E731
    q_all = attn.q_up(rms(attn.q_down(x), attn.q_norm)) if attn.q_rank else attn.q_proj(x)
    down = attn.kv_down(x)
    c = rms(down[..., :dc], attn.kv_norm)  # (B, T, d_c): the latent
    k_r = down[..., dc:].unsqueeze(1)  # (B, 1, T, d_r)
    W = attn.kv_up.weight  # (2 nh hs, d_c)
    out = []
    for h in range(nh):
        q_h = q_all.view(B, T, nh, hs + dr)[:, :, h].unsqueeze(1)  # (B, 1, T, hs + dr)
        q_r, k_rr = q_h[..., hs:], k_r
        if dr:  # every channel of the decoupled parts turns, frequencies spanning d_r
            q_r, k_rr = rope_reference(q_r, 0, 10000.0, dr), rope_reference(k_rr, 0, 10000.0, dr)
        k_h = c @ W[2 * hs * h:2 * hs * h + hs].T  # W_UK,h c
        v_h = c @ W[2 * hs * h + hs:2 * hs * (h + 1)].T  # W_UV,h c
        s = (q_h[:, 0, :, :hs] @ k_h.transpose(-1, -2) + q_r[:, 0] @ k_rr[:, 0].transpose(-1, -2)) / math.sqrt(hs + dr)
        s = s.masked_fill(~causal_mask(T, T, "cpu"), float("-inf")).softmax(-1)
        out.append(s @ v_h)
    return attn.c_proj(torch.cat(out, dim=-1))


@pytest.mark.parametrize("q_rank", [None, 12])
@pytest.mark.parametrize("position,fraction,rope_dim", [("rope", 0.5, 4), ("rope", 1.0, 8), ("none", 1.0, 0)])
def test_mla_equals_reference(q_rank, position, fraction, rope_dim):
    cfg = tiny_config(attention_variant="mla", position_variant=position, rope_fraction=fraction, mla_q_rank=q_rank,
                      mla_kv_rank=10)
    model = GPT(cfg).eval()
    attn = model.transformer.h[0].attn
    assert attn.rope_dim == rope_dim and attn.kv_rank == 10 and hasattr(attn, "q_down") == bool(q_rank)
    with torch.no_grad():  # RMSNorm weights away from 1, so the test sees them
        attn.kv_norm.uniform_(0.5, 1.5)
    x = torch.randn(2, cfg.block_size, cfg.n_embd)
    torch.testing.assert_close(attn(x, model.position), mla_reference(attn, x, model.position), rtol=1e-4, atol=1e-5)


def test_mla_default_latent_is_four_head_dims():
    attn = create("attention", "mla", tiny_config(attention_variant="mla"))
    assert attn.kv_rank == 4 * 8 and attn.rope_dim == 0  # learned positions: no decoupled key part


@pytest.mark.parametrize("softmax", ["softmax", "consmax"])
def test_mla_cache_holds_the_latent_and_chunked_decoding_equals_uncached(softmax):
    cfg = tiny_config(attention_variant="mla", position_variant="rope", rope_fraction=0.5, mla_kv_rank=6,
                      softmax_variant_attn=softmax)
    model = GPT(cfg).eval()
    B = 2
    caches = model.new_kv_caches(B, "cpu", torch.float32)
    assert all(isinstance(c, LatentCache) for c in caches)
    # bytes: block_size positions of d_c + d_r = 6 + 4 floats, for one (not n_kv_head) head
    assert [c.nbytes() for c in caches] == [B * cfg.block_size * (6 + 4) * 4] * cfg.n_layer
    assert caches[0].k.shape == (B, 1, cfg.block_size, 6) and caches[0].v.shape == (B, 1, cfg.block_size, 4)
    mha = GPT(tiny_config(position_variant="rope")).new_kv_caches(B, "cpu", torch.float32)[0]
    assert mha.k.numel() + mha.v.numel() == B * cfg.block_size * 2 * cfg.n_embd  # 64 per token against 10
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.block_size))
    full, _ = model(idx, all_logits=True)
    parts, s = [], 0
    for n in (5, 1, 1, 4, 5):
        logits, _ = model(idx[:, s:s + n], caches=caches, all_logits=True)
        parts.append(logits)
        s += n
    assert caches[0].length == cfg.block_size
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_mla_cost_counts_the_latent_cache_traffic():
    T = 16
    mla = GPT(tiny_config(attention_variant="mla", position_variant="rope", rope_fraction=0.5, mla_kv_rank=6))
    mha = GPT(tiny_config(position_variant="rope"))
    gqa = GPT(tiny_config(position_variant="rope", n_kv_head=1))
    a = mla.cost(T)["layer.0.attention"]
    assert a.kv_write == 6 + 4 and a.kv_read == (6 + 4) * T
    assert mha.cost(T)["layer.0.attention"].kv_write == 2 * 32  # 4 heads x 8 channels, keys and values
    assert gqa.cost(T)["layer.0.attention"].kv_write == 2 * 8
    # the rotation: 4 query parts and one shared key part of 4 channels (3 operations per channel)
    assert mla.cost(T)["layer.0.position"].elementwise == 3 * (4 + 1) * 4
    assert total(mla.cost(T).values()).params == mla.num_params()
