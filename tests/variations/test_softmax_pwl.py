"""Piecewise-linear normalisers (variations/softmax_pwl.py): the approximation's error against the bound
derived for the segment count, the two variants against their formulas, the cost model, the
knob errors and the kernel dispatch. The registry-wide tests cover both variants too."""
from __future__ import annotations

import math

import pytest
import torch

from errors import UserError
from model import GPT
from variations import kernels
from variations.attention import causal_mask
from variations.registry import create
from variations.softmax import finish_weights, prepare_scores
from variations.softmax_pwl import pwl_error_bound, pwl_exp, pwl_nodes

from conftest import tiny_config


@pytest.mark.parametrize("a,b,n", [(-8.0, 0.0, 16), (-8.0, 0.0, 4), (-6.0, 2.0, 32), (-4.0, 0.0, 1)])
def test_pwl_exp_error_is_within_the_derived_bound_and_the_bound_is_tight(a, b, n):
    nodes = pwl_nodes(a, b, n)
    z = torch.linspace(a, b, 200_001, dtype=torch.float64)
    err = (pwl_exp(z, a, b, nodes) - torch.exp(z)).abs().max().item()
    bound = pwl_error_bound(a, b, n)
    h = (b - a) / n
    assert err <= bound * (1 + 1e-9) and err >= 0.999 * bound  # attained in the last segment
    assert bound <= math.exp(b) * h * h / 8  # the simpler bound of the docstring
    knots = torch.linspace(a, b, n + 1, dtype=torch.float64)
    torch.testing.assert_close(pwl_exp(knots, a, b, nodes), torch.exp(knots))  # exact at the nodes
    below = torch.tensor([a - 1e-6, a - 3.0], dtype=torch.float64)
    assert (pwl_exp(below, a, b, nodes) == 0).all() and math.exp(a) < 1  # e^z < e^a there
    above = torch.tensor([b + 1.0, b + 2.0], dtype=torch.float64)  # the last segment's line continues
    slope = (math.exp(b) - math.exp(b - h)) / h
    torch.testing.assert_close(pwl_exp(above, a, b, nodes), math.exp(b) + slope * (above - b))


def test_more_segments_shrink_the_error_quadratically():
    """err -> e^b h^2 / 8 as h -> 0: doubling the segments quarters the error."""
    ratios = [pwl_error_bound(-8.0, 0.0, n) / ((8.0 / n) ** 2 / 8) for n in (16, 64, 256)]
    assert ratios == sorted(ratios) and ratios[1] > 0.9 and ratios[2] > 0.97 and ratios[2] < 1


def test_pwl_softmax_equals_formula_and_rows_sum_to_one():
    cfg = tiny_config(softmax_variant_attn="pwl_softmax", pwl_segments=8, pwl_exp_min=-6.0)
    sm = create("softmax", "pwl_softmax", cfg)
    x = 3 * torch.randn(2, 4, 7, 7)
    mask = causal_mask(7, 7, "cpu")
    y = sm(x, mask)
    z = (x - x.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)).masked_fill(~mask, 0.0)
    p = pwl_exp(z, -6.0, 0.0, pwl_nodes(-6.0, 0.0, 8).float()).masked_fill(~mask, 0.0)
    torch.testing.assert_close(y, p / p.sum(-1, keepdim=True))
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 4, 7))
    # close to softmax: each weight within the approximation's error relative to the row sum
    ref = torch.softmax(x.masked_fill(~mask, float("-inf")), -1)
    assert (y - ref).abs().max() < 0.1
    fine = create("softmax", "pwl_softmax", tiny_config(pwl_segments=256, pwl_exp_min=-16.0))(x, mask)
    assert (fine - ref).abs().max() < 1e-3


def test_pwl_consmax_equals_formula_and_learns_its_constants():
    cfg = tiny_config(consmax_beta_init=1.0, consmax_gamma_init=10.0, pwl_segments=12, pwl_exp_min=-8.0,
                      pwl_exp_max=2.0)
    sm = create("softmax", "pwl_consmax", cfg)
    x = 3 * torch.randn(3, 5, 5)
    mask = causal_mask(5, 5, "cpu")
    y = sm(x, mask)
    expect = pwl_exp(x - 1.0, -8.0, 2.0, pwl_nodes(-8.0, 2.0, 12).float()) / 10.0
    torch.testing.assert_close(y, torch.where(mask, expect, 0.0))
    y.sum().backward()
    assert sm.beta.grad != 0 and sm.gamma.grad != 0
    big = sm(torch.tensor([[1e4]]), None)  # far above the range: the line continues, finite, no overflow
    assert torch.isfinite(big).all() and big.item() > 0


def test_cost_has_no_exponentials_and_consmax_style_no_reductions():
    soft, cons = create("softmax", "pwl_softmax", tiny_config()), create("softmax", "pwl_consmax", tiny_config())
    cs, cc = soft.cost(4, 16), cons.cost(4, 16)
    assert cs.exp == cc.exp == 0 and cs.exp2 == cc.exp2 == 0
    assert cs.reduce == 2 * 64 and cs.div == 4 and cc.reduce == 0 and cc.div == 0 and cc.params == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(pwl_exp_min=0.0), "--pwl_exp_min must be negative"),
    (dict(pwl_exp_min=-2.0, pwl_exp_max=-3.0), "--pwl_exp_max must be greater than --pwl_exp_min -2.0"),
    (dict(pwl_segments=0), "--pwl_segments must be at least 1"),
])
@pytest.mark.parametrize("name", ["pwl_softmax", "pwl_consmax"])
def test_knob_errors_name_the_flag(name, kwargs, message):
    with pytest.raises(UserError, match=message):
        create("softmax", name, tiny_config(**kwargs))


def test_dispatcher_runs_pwl_softmax_as_torch_and_says_so():
    pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
    if not (torch.cuda.is_available() or kernels.interpreter_on()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    model = GPT(tiny_config(softmax_variant_attn="pwl_softmax", softmax_kernel="triton")).eval()
    assert all(b.attn.kernel == "torch" for b in model.transformer.h)
    line = kernels.describe(model, "cuda" if torch.cuda.is_available() else "cpu")
    assert "torch, no Triton kernel for this normaliser (pwl_softmax): layers 0,1" in line
    reference = GPT(tiny_config(softmax_variant_attn="pwl_softmax", softmax_kernel="torch")).eval()
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(model(idx, all_logits=True)[0], reference(idx, all_logits=True)[0])
    cons = GPT(tiny_config(softmax_variant_attn="pwl_consmax", softmax_kernel="triton"))
    assert "fused attention (pwl_consmax)" in kernels.describe(cons, "cuda" if torch.cuda.is_available() else "cpu")



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_score_helpers_follow_softmax_py_conventions(dtype):
    """prepare_scores / finish_weights (softmax.py's helpers, which every normaliser shares): fp32 math
    (fp64 for fp64), -inf and masked keys dropped with exact zeros, results clamped to the dtype's finite range."""
    x = (torch.randn(2, 3, 5, 5) * 10).to(dtype)
    x[0, 0, 4, 2] = float("-inf")
    mask = causal_mask(5, 5, "cpu")
    s, keep = prepare_scores(x, mask)
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(keep, mask.expand_as(x) & (x != float("-inf")))
    assert (s[~keep] == 0).all() and torch.equal(s[keep], x[keep].to(s.dtype))
    y = finish_weights(torch.full_like(s, 2.0 ** 20), keep, dtype)
    assert y.dtype == dtype and (y[~keep] == 0).all()
    assert (y[keep] == min(2.0 ** 20, torch.finfo(dtype).max)).all()
