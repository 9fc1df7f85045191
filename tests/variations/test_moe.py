"""Mixture of experts (variations/mlp.py `moe`): routing to exactly k experts, the output and the
load-balancing loss against their formulas, capacity drops counted, total vs active parameters,
the loss the model trains on and what train.py logs. The registry-wide tests cover it too."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import train
from errors import UserError
from model import GPT
from variations.registry import create

from conftest import read_metrics, tiny_config


def moe(**kw):
    return create("mlp", "moe", tiny_config(mlp_variant="moe", mlp_hidden_size=24, **kw))


def reference(m, x, drop=None):
    """sum over each token's chosen experts e of g_e(x) FFN_e(x); `drop`: assignments (slot, token) left out."""
    xf = x.reshape(-1, x.size(-1))
    ids, weights, _ = m.route(xf)
    out = torch.zeros_like(xf)
    for n in range(xf.size(0)):
        for j in range(m.top_k):
            if drop is not None and (j, n) in drop:
                continue
            e = ids[n, j].item()
            out[n] += weights[n, j] * m.experts[e](xf[n].view(1, 1, -1)).view(-1)
    return out.view(x.shape)


@pytest.mark.parametrize("router", ["softmax", "noisy_top_k"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_each_token_goes_to_exactly_k_experts_and_output_equals_formula(router, k):
    m = moe(moe_top_k=k, moe_router=router, moe_n_experts=5).eval()
    x = torch.randn(2, 7, 32)
    ids, weights, probs = m.route(x.view(-1, 32))
    assert ids.shape == (14, k) and all(len(set(row.tolist())) == k for row in ids)  # k distinct experts
    if router == "softmax":  # the k largest router probabilities, not renormalised
        torch.testing.assert_close(weights, probs.topk(k, dim=-1).values)
    else:  # softmax over the k largest logits (no noise in evaluation)
        logits = m.router(x.view(-1, 32)).float()
        torch.testing.assert_close(weights, logits.topk(k, dim=-1).values.softmax(-1))
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-5, atol=1e-6)
    assert m.dropped == 0 and int(m.last_load.sum()) == 14 * k


def test_noisy_router_adds_noise_in_training_only():
    m = moe(moe_router="noisy_top_k")
    x = torch.randn(1, 16, 32)
    torch.manual_seed(1)
    a = m.route(x.view(-1, 32))[1]
    torch.manual_seed(2)
    b = m.route(x.view(-1, 32))[1]
    assert not torch.equal(a, b)
    m.eval()
    assert torch.equal(m.route(x.view(-1, 32))[1], m.route(x.view(-1, 32))[1])


def test_aux_loss_equals_switch_formula():
    m = moe(moe_n_experts=4, moe_top_k=2)
    x = torch.randn(3, 5, 32)
    m(x)
    logits = m.router(x.view(-1, 32))
    probs = logits.softmax(-1)
    ids = probs.topk(2, dim=-1).indices
    f = torch.stack([(ids == e).sum() for e in range(4)]).float() / (2 * 15)  # fraction of assignments
    P = probs.mean(0)
    torch.testing.assert_close(m.aux_loss, 4 * (f * P).sum())
    m.aux_loss.backward()  # differentiable through P
    assert m.router.weight.grad.abs().sum() > 0


def test_capacity_drops_are_counted_and_contribute_nothing():
    m = moe(moe_n_experts=4, moe_top_k=2, moe_capacity_factor=0.5)  # capacity ceil(0.5 * 12 * 2 / 4) = 3
    x = torch.randn(1, 12, 32)
    ids = m.route(x.view(-1, 32))[0]
    seen, drop = {}, set()
    for j in range(2):  # first choices first, then second choices, each in token order
        for n in range(12):
            e = ids[n, j].item()
            seen[e] = seen.get(e, 0) + 1
            if seen[e] > 3:
                drop.add((j, n))
    assert drop  # 24 assignments into 4 x 3 slots
    y = m(x)
    assert int(m.dropped) == len(drop) == 24 - sum(min(c, 3) for c in seen.values())
    torch.testing.assert_close(y, reference(m, x, drop), rtol=1e-5, atol=1e-6)
    m.eval()  # evaluation is dropless
    m(x)
    assert int(m.dropped) == 0


def test_cost_counts_every_expert_as_parameters_and_k_as_active():
    m = moe(moe_n_experts=6, moe_top_k=2)
    expert = sum(p.numel() for p in m.experts[0].parameters())
    c = m.cost(16)
    assert c.params == sum(p.numel() for p in m.parameters()) == 6 * expert + 32 * 6
    assert c.weights == 2 * expert + 32 * 6  # router and the two experts a token reads
    assert c.macs == 2 * m.experts[0].cost(16).macs + 32 * 6


def test_expert_kinds_and_errors():
    assert type(moe(moe_expert_variant="swiglu").experts[0]).__name__ == "SwiGLU"
    assert type(moe(activation_variant="relu").experts[0].act).__name__ == "ReLU"
    with pytest.raises(UserError, match="--moe_top_k 9 exceeds --moe_n_experts 8"):
        moe(moe_top_k=9)
    with pytest.raises(UserError, match="cannot be an expert"):
        moe(moe_expert_variant="moe")
    with pytest.raises(UserError, match="did you mean 'swiglu'"):
        moe(moe_expert_variant="swiglo")
    with pytest.raises(UserError, match="--moe_capacity_factor must be positive"):
        moe(moe_capacity_factor=0.0)


def test_training_loss_adds_weighted_aux_loss_evaluation_does_not():
    cfg = tiny_config(mlp_variant="moe", moe_aux_loss_weight=0.5, mlp_variant_layerlist=["mlp", "moe"])
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    logits, loss = model(idx, idx)
    ce = F.cross_entropy(logits.view(-1, cfg.vocab_size), idx.view(-1))
    aux = model.transformer.h[1].mlp.aux_loss
    torch.testing.assert_close(loss, ce + 0.5 * aux)
    stats = model.aux_stats()
    assert stats["moe_aux_loss"] == pytest.approx(aux.item()) and stats["moe_dropped_tokens"] == 0
    model.eval()
    logits, loss = model(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, cfg.vocab_size), idx.view(-1)))
    assert GPT(tiny_config()).aux_stats() == {}


def test_train_logs_aux_loss_and_drops(char_data, tmp_path):
    out = tmp_path / "run"
    train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                "--max_iters", "3", "--mlp_variant", "moe", "--moe_n_experts", "4", "--moe_capacity_factor", "0.5"])
    rows = [r for r in read_metrics(out) if r["type"] == "train"]
    assert rows and all(math.isfinite(r["moe_aux_loss"]) and r["moe_aux_loss"] > 0 for r in rows)
    assert all(r["moe_dropped_tokens"] > 0 and 0 < r["moe_drop_fraction"] < 1 for r in rows)
