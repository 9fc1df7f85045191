"""The softmax family (variations/softmax.py): each variant against its formula written out here,
normalisation, masking, learned-parameter gradients, knob validation, half precision, softermax's
online pass, cost scaling, and the 2-D use as the output normaliser of sampling."""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from errors import UserError
from generation import sample_next
from model import GPT
from variations.attention import causal_mask
from variations.registry import create, names

from conftest import tiny_config

SOFTMAXES = names("softmax")
NORMALISING = ["softmax", "strongermax", "softermax", "sigsoftmax"]
LEARNED = {"consmax": ("beta", "gamma"), "consmax_v2": ("beta", "gamma"), "saturating_consmax": ("beta", "gamma")}

# Knob values away from the defaults, so the formulas below also check that each knob is read.
KNOBS = dict(consmax_beta_init=0.7, consmax_gamma_init=3.0, saturating_consmax_threshold=0.5,
             polymax_x_intercept=-2.0, polymax_y_intercept=0.5, polymax_power=3.0, polymax_divisor=7.0,
             strongermax_base=3.0, softermax_block_size=3, relumax_divisor=5.0, relu2max_divisor=6.0,
             sigmoidmax_divisor=8.0, sigmoidmax_bias=0.4, softplusmax_divisor=9.0, squareplus_max_divisor=10.0, squareplus_max_b=1.5)


def _cfg(**kw):
    return tiny_config(**{**KNOBS, **kw})


# Unnormalised numerators g(x) of the normalising variants: weight = g(x) / sum of g over kept keys.
NUMERATOR = {
    "softmax": lambda x: torch.exp(x),
    "strongermax": lambda x: 3.0 ** x,
    "softermax": lambda x: 2.0 ** x,
    "sigsoftmax": lambda x: torch.exp(x) / (1 + torch.exp(-x)),
}


def _polymax(x):
    x0, y0, p = -2.0, 0.5, 3.0
    out = torch.zeros_like(x)
    line = (x >= x0) & (x < 0)
    out[line] = y0 + (y0 / -x0) * x[line]  # the line through (x0, 0) and (0, y0)
    out[x >= 0] = x[x >= 0] ** p + y0
    return out / 7.0


def _saturating(x):
    z, s = x - 0.7, 0.5
    return torch.where(z <= s, torch.exp(z), math.exp(s) + math.exp(s) * (z - s)) / 3.0


# Elementwise variants: weight = f(x) at kept keys.
ELEMENTWISE = {
    "consmax": lambda x: torch.exp(x - 0.7) / 3.0,
    "saturating_consmax": _saturating,
    "polymax": _polymax,
    "relumax": lambda x: torch.clamp(x, min=0) / 5.0,
    "relu2max": lambda x: torch.clamp(x, min=0) ** 2 / 6.0,
    "sigmoidmax": lambda x: 1 / (1 + torch.exp(-(x + 0.4))) / 8.0,
    "softplusmax": lambda x: torch.log(1 + torch.exp(x)) / 9.0,
    "squareplus_max": lambda x: (x + torch.sqrt(x ** 2 + 1.5)) / 2 / 10.0,
}


def _expected(name, x, keep):
    """The reference weights for scores x (..., T_k) and a boolean keep of the same shape."""
    if name in NUMERATOR:
        w = torch.where(keep, NUMERATOR[name](x), 0.0)
        total = w.sum(-1, keepdim=True)
        return torch.where(total > 0, w / total, 0.0)
    return torch.where(keep, ELEMENTWISE[name](x), 0.0)


def test_every_variant_has_a_reference_formula_here():
    assert set(SOFTMAXES) == set(NUMERATOR) | set(ELEMENTWISE) | {"consmax_v2"}


@pytest.mark.parametrize("name", [n for n in SOFTMAXES if n != "consmax_v2"])
def test_formula(name):
    sm = create("softmax", name, _cfg())
    x = (torch.randn(2, 4, 9, 9) * 2.5).double()  # spans every piece of polymax and saturating_consmax
    mask = causal_mask(9, 9, "cpu")
    keep = mask.expand_as(x)
    torch.testing.assert_close(sm.double()(x, mask), _expected(name, x, keep))
    # float32 in, float32 out, same values
    torch.testing.assert_close(sm.float()(x.float(), mask), _expected(name, x, keep).float(), rtol=1e-5, atol=1e-6)


def test_consmax_v2_learns_one_beta_and_gamma_per_head():
    cfg = _cfg(n_head=4)
    sm = create("softmax", "consmax_v2", cfg)
    assert sm.beta.shape == sm.gamma.shape == (4,)
    assert sum(p.numel() for p in sm.parameters()) == sm.cost(1, 1).params == 8
    with torch.no_grad():
        sm.beta.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
        sm.gamma.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 4, 6, 6)  # (B, n_head, T_q, T_k)
    mask = causal_mask(6, 6, "cpu")
    y = sm(x, mask)
    for h in range(4):
        ref = torch.exp(x[:, h] - sm.beta[h]) / sm.gamma[h]
        torch.testing.assert_close(y[:, h], torch.where(mask, ref, 0.0).detach())
    # no head axis (output logits (B, V)): the heads' mean beta and gamma
    logits = torch.randn(3, 11)
    torch.testing.assert_close(sm(logits), (torch.exp(logits - 0.375) / 2.5))


@pytest.mark.parametrize("name", NORMALISING)
def test_normalising_variants_sum_to_one_over_kept_keys(name):
    sm = create("softmax", name, _cfg())
    x = torch.randn(3, 4, 10, 37) * 4
    mask = torch.rand(3, 4, 10, 37) > 0.5
    mask[0, 0, 0] = False  # one fully masked row
    mask[0, 0, 1] = False
    mask[0, 0, 1, 5] = True  # one row with a single kept key
    y = sm(x, mask)
    sums = y.sum(-1)
    has_key = mask.any(-1)
    torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
    assert (sums[~has_key] == 0).all()
    assert y[0, 0, 1, 5] == 1


@pytest.mark.parametrize("name", SOFTMAXES)
def test_masked_and_minus_inf_positions_are_exact_zeros_with_finite_gradients(name):
    sm = create("softmax", name, _cfg())
    x = (torch.randn(2, 4, 7, 7) * 3).requires_grad_()
    mask = torch.rand(2, 4, 7, 7) > 0.4
    mask[1, 2, 3] = False  # fully masked row
    y = sm(x, mask)
    assert (y[~mask] == 0).all() and (y[1, 2, 3] == 0).all()
    assert torch.isfinite(y).all() and (y >= 0).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all()  # a masked score does not influence anything
    # -inf scores (logits barred by model.generate) count as masked
    logits = torch.randn(2, 9)
    logits[:, 4:] = float("-inf")
    y = sm(logits)
    assert torch.isfinite(y).all() and (y[:, 4:] == 0).all()
    torch.testing.assert_close(y[:, :4], sm(logits[:, :4]))


@pytest.mark.parametrize("name", SOFTMAXES)
def test_gradients_match_finite_differences(name):
    """gradcheck in float64: the input's gradient for every variant, and the learned constants'."""
    sm = create("softmax", name, _cfg(n_head=2)).double()
    x = (torch.randn(1, 2, 4, 5, dtype=torch.float64) * 2).requires_grad_()
    mask = causal_mask(4, 5, "cpu")
    pnames = LEARNED.get(name, ())
    assert {n for n, _ in sm.named_parameters()} == set(pnames)
    params = [getattr(sm, p).detach().clone().requires_grad_() for p in pnames]

    def f(x, *ps):
        return functional_call(sm, dict(zip(pnames, ps)), (x, mask))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("name", LEARNED)
def test_learned_constants_get_gradients_in_the_model(name):
    model = GPT(tiny_config(softmax_variant_attn=name))
    idx = torch.randint(0, 37, (2, 16))
    model(idx, idx)[1].backward()
    for block in model.transformer.h:
        for p in block.attn.softmax.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).any()


@pytest.mark.parametrize("flag,value,message", [
    ("strongermax_base", 1.0, "--strongermax_base must be greater than 1"),
    ("strongermax_base", 0.5, "--strongermax_base must be greater than 1"),
    ("polymax_x_intercept", 0.0, "--polymax_x_intercept must be negative"),
    ("polymax_divisor", 0.0, "--polymax_divisor must be positive"),
    ("relumax_divisor", -1.0, "--relumax_divisor must be positive"),
    ("relu2max_divisor", 0.0, "--relu2max_divisor must be positive"),
    ("sigmoidmax_divisor", 0.0, "--sigmoidmax_divisor must be positive"),
    ("consmax_gamma_init", 0.0, "--consmax_gamma_init must be positive"),
    ("softplusmax_divisor", 0.0, "--softplusmax_divisor must be positive"),
    ("squareplus_max_divisor", 0.0, "--squareplus_max_divisor must be positive"),
    ("squareplus_max_b", 0.0, "--squareplus_max_b must be positive"),
])
def test_bad_knob_is_a_user_error_naming_the_flag(flag, value, message):
    variant = {"strongermax_base": "strongermax", "consmax_gamma_init": "consmax", "polymax_x_intercept": "polymax", "polymax_divisor": "polymax",
               "squareplus_max_b": "squareplus_max"}.get(flag, flag.rsplit("_divisor", 1)[0])
    with pytest.raises(UserError, match=message):
        GPT(tiny_config(softmax_variant_attn=variant, **{flag: value}))


@pytest.mark.parametrize("flag,value", [("polymax_power", 0.5), ("softermax_block_size", 0),
                                        ("polymax_y_intercept", -1.0)])
def test_knob_below_its_minimum_is_rejected_by_the_config(flag, value):
    with pytest.raises(UserError, match=f"--{flag} must be at least"):
        tiny_config(**{flag: value})


@pytest.mark.parametrize("name", SOFTMAXES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_large_magnitudes_stay_finite(name, dtype):
    sm = create("softmax", name, tiny_config())  # default knobs
    big = torch.finfo(dtype).max
    x = torch.tensor([-big, -1e4, -60.0, -1.0, 0.0, 1.0, 11.0, 60.0, 1e4, big]).to(dtype)
    x = torch.cat([x.view(1, -1), (torch.randn(4, 10) * 3e3).to(dtype)])
    y = sm(x, torch.ones_like(x, dtype=torch.bool))
    assert y.dtype == dtype
    assert torch.isfinite(y).all() and (y >= 0).all()
    # a moderate row agrees with the fp32 computation up to the dtype's rounding
    z = torch.randn(3, 16).to(dtype)
    torch.testing.assert_close(sm(z).float(), sm(z.float()), rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("row_len", [1, 7, 64, 100])
@pytest.mark.parametrize("block", [1, 7, 32, 128])
def test_softermax_equals_base2_softmax(row_len, block):
    sm = create("softmax", "softermax", tiny_config(softermax_block_size=block))
    x = (torch.randn(3, 5, row_len) * 6).requires_grad_()
    mask = torch.rand(3, 5, row_len) > 0.3
    mask[..., 0] = True
    y = sm(x, mask)
    xd = x.detach().double().requires_grad_()
    e = torch.where(mask, 2.0 ** (xd - xd.max()), 0.0)  # one constant shift for all rows: plain 2^x / sum
    ref = e / e.sum(-1, keepdim=True)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-7)
    g = torch.randn_like(ref)
    (y.double() * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-6)


def test_softermax_handles_leading_fully_masked_slices_and_very_negative_scores():
    sm = create("softmax", "softermax", tiny_config(softermax_block_size=4))
    x = torch.full((2, 12), -1e4)
    x[:, 9] = -1e4 + 1.0
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 8:] = True  # the first two slices hold no kept key
    y = sm(x, mask)
    assert torch.isfinite(y).all() and (y[:, :8] == 0).all()
    torch.testing.assert_close(y[:, 8:], torch.tensor([[0.2, 0.4, 0.2, 0.2]] * 2))


@pytest.mark.parametrize("name", SOFTMAXES)
def test_cost_is_per_row_plus_per_element(name):
    """Counts add over rows, and within a row are affine in its length: per element, plus per row
    (a row sum's one reciprocal, softermax's per-slice terms at a multiple of its slice size)."""
    sm = create("softmax", name, tiny_config())
    base = sm.cost(3, 64).counts()
    for key, value in sm.cost(6, 64).counts().items():
        if key not in ("params", "weights"):
            assert value == pytest.approx(2 * base[key]), key
    c1, c2, c3 = (sm.cost(3, n).counts() for n in (64, 128, 192))
    for key in base:
        assert c2[key] - c1[key] == pytest.approx(c3[key] - c2[key]), key
    params = sum(p.numel() for p in sm.parameters())
    assert base["params"] == base["weights"] == params
    assert base["act_mem"] == 3 * 64 and base["macs"] == 0
    if name in NORMALISING:
        assert base["reduce"] >= 2 * 3 * 64 and base["exp"] + base["exp2"] >= 3 * 64  # a row max and a row sum
        # the division by the row sum is one reciprocal per row (then multiplies), not one per element
        per_element_div = (c2["div"] - c1["div"]) / 64
        assert c1["div"] - 64 * per_element_div == 3
    else:
        assert base["reduce"] == 0  # elementwise: no reductions across the row
        # a division by a constant divisor (or gamma) is a multiply by its reciprocal
        if name != "sigmoidmax":
            assert base["div"] == 0


def test_softermax_is_base_two_and_consmax_has_no_max_nor_division():
    soft, softer = create("softmax", "softmax", tiny_config()), create("softmax", "softermax", tiny_config())
    cons = create("softmax", "consmax", tiny_config())
    assert softer.cost(3, 64).exp == 0 and softer.cost(3, 64).exp2 >= 3 * 64
    assert soft.cost(3, 64).exp2 == 0 and soft.cost(3, 64).div == 3  # one reciprocal per row
    c = cons.cost(3, 64)
    assert c.div == c.cmp == c.reduce == 0 and c.exp == 3 * 64


@pytest.mark.parametrize("name", SOFTMAXES)
def test_output_normaliser_on_2d_logits(name):
    """--softmax_variant_output: (B, V) logits and a (B, V) top-k mask; sample_next renormalises."""
    sm = create("softmax", name, tiny_config())
    logits = (torch.randn(4, 37) * 2).clamp(-4, 2)
    logits[:, :3] = torch.tensor([5.0, 4.0, 3.0])  # the top 3, positive: every variant gives them weight
    keep = logits >= logits.topk(3).values[:, [-1]]
    w = sm(logits, keep)
    assert w.shape == (4, 37) and torch.isfinite(w).all()
    assert (w[~keep] == 0).all() and (w[keep] > 0).all()
    gen = torch.Generator().manual_seed(0)
    ids = torch.cat([sample_next(logits, 1.0, top_k=3, generator=gen, normalizer=sm) for _ in range(20)], 1)
    assert (ids < 3).all()


@pytest.mark.parametrize("name", SOFTMAXES)
def test_generate_with_each_output_normaliser(name):
    model = GPT(tiny_config(softmax_variant_output=name)).eval()
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), 5, temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 6) and ((out >= 0) & (out < 37)).all()


def test_strongermax_at_its_default_base_is_softermax():
    """Documented in strongermax's docstring: base 2 is softermax's function (softermax computes it online)."""
    cfg = tiny_config(block_size=40)
    scores = torch.randn(2, 3, 40, 40) * 4
    mask = causal_mask(40, 40, scores.device)
    a = create("softmax", "strongermax", cfg)(scores, mask)
    b = create("softmax", "softermax", cfg)(scores, mask)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    other = create("softmax", "strongermax", tiny_config(block_size=40, strongermax_base=4.0))(scores, mask)
    assert not torch.allclose(other, b)


@pytest.mark.parametrize("block_size", [16, 64])
def test_default_scales_follow_the_papers_with_the_sequence_length_as_block_size(block_size):
    """relumax divides by L (Wortsman et al.), sigmoidmax adds -ln L (Ramapuram et al.), consmax starts
    at gamma = (L / 2) e^-beta, so an average causal row (L / 2 keys at scores 0) sums to about 1."""
    x = torch.randn(2, 3, 5)
    cfg = tiny_config(block_size=block_size)
    relu = create("softmax", "relumax", cfg)
    torch.testing.assert_close(relu(x), torch.clamp(x, min=0) / block_size)
    sig = create("softmax", "sigmoidmax", cfg)
    torch.testing.assert_close(sig(x), torch.sigmoid(x - math.log(block_size)))
    cons = create("softmax", "consmax", cfg)
    gamma = block_size / 2 * math.exp(-cfg.consmax_beta_init)
    assert cons.gamma.item() == pytest.approx(gamma)
    row = cons(torch.zeros(1, block_size // 2))  # scores 0: weights e^-beta / gamma each
    assert row.sum().item() == pytest.approx(1.0, rel=1e-5)
    # sigmoid's row at scores 0: L/2 keys of 1 / (1 + L) each, under 1 as the paper intends
    assert sig(torch.zeros(1, block_size // 2)).sum().item() == pytest.approx(block_size / 2 / (block_size + 1), rel=1e-5)


def test_earlier_constants_stay_reachable():
    """The scales before issue 15 (ReaLLM-Forge's constants) through the knobs."""
    x = torch.randn(2, 4)
    cfg = tiny_config(relumax_divisor=256.0, sigmoidmax_bias=0.0, sigmoidmax_divisor=256.0, consmax_gamma_init=100.0)
    torch.testing.assert_close(create("softmax", "relumax", cfg)(x), torch.clamp(x, min=0) / 256)
    torch.testing.assert_close(create("softmax", "sigmoidmax", cfg)(x), torch.sigmoid(x) / 256)
    assert create("softmax", "consmax", cfg).gamma.item() == 100.0
    assert create("softmax", "sigmoidmax", cfg).cost(1, 4).elementwise == 4 + 4  # no bias add: divide only
    assert create("softmax", "sigmoidmax", tiny_config()).cost(1, 4).elementwise == 8 + 4  # + bias
