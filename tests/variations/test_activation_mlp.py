"""Activations and feed-forward blocks against their formulas written out here, independently of
variations/: knobs, learned parameters, edge values, costs, GLU variants and the identity/none MLPs.
(The generic forward/backward, half-precision and training checks are in tests/variations/test_variations.py.)"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import train_args
import variations  # noqa: F401  (fills the registry)
from errors import UserError
from model import GPT
from variations.cost import COUNTS
from variations.registry import create, names

from conftest import tiny_config

# Inputs: negatives, zero, tiny and large magnitudes, and the corners of relu6 / hardswish.
X = [-1e4, -100.0, -20.0, -6.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.5, 3.0, 6.0, 7.0, 20.0, 100.0, 1e4]

SELU_LAMBDA, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _sigmoid(x):  # stable on both sides: math.exp overflows above ~709
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _softplus(x):  # ln(1 + e^x) = x + ln(1 + e^-x) for x > 0
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _gelu(x):
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def _elu(x, alpha):
    return x if x > 0 else alpha * (math.exp(x) - 1)


# One scalar formula per activation, at the default knob values, in plain Python math.
REFERENCE = {
    "gelu": _gelu,
    "gelu_tanh": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: max(x, 0.0),
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "leaky_relu": lambda x: x if x > 0 else 0.01 * x,
    "prelu": lambda x: x if x > 0 else 0.25 * x,
    "silu": lambda x: x * _sigmoid(x),
    "mish": lambda x: x * math.tanh(_softplus(x)),
    "squared_relu": lambda x: max(x, 0.0) ** 2,
    "relu_power": lambda x: max(x, 0.0) ** 2.0,
    "squared_gelu": lambda x: _gelu(x) ** 2,
    "softplus": _softplus,
    "sigmoid": _sigmoid,
    "tanh": math.tanh,
    "elu": lambda x: _elu(x, 1.0),
    "selu": lambda x: SELU_LAMBDA * _elu(x, SELU_ALPHA),
    # max(0, x) + min(0, alpha (e^(x/alpha) - 1)), alpha = 1; only one side is non-zero
    "celu": lambda x: x if x > 0 else 1.0 * (math.exp(x / 1.0) - 1),
    "softsign": lambda x: x / (1 + abs(x)),
    "hardswish": lambda x: x * min(max(x + 3, 0.0), 6.0) / 6,
    "identity": lambda x: x,
}


def reference(name, values, dtype=torch.float64):
    f = REFERENCE[name]
    return torch.tensor([f(v) for v in values], dtype=dtype)


def test_every_registered_activation_has_a_reference_formula():
    assert sorted(REFERENCE) == names("activation")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_matches_formula_in_float64(name):
    act = create("activation", name, tiny_config())
    x = torch.tensor(X, dtype=torch.float64)
    y = act(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    torch.testing.assert_close(y, reference(name, X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_float32_is_finite_and_close(name):
    act = create("activation", name, tiny_config())
    x = torch.tensor(X, dtype=torch.float32).view(1, -1)  # also a 2-d input
    y = act(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference(name, X, torch.float32).view(1, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_keeps_half_dtype(name):
    act = create("activation", name, tiny_config())
    x = torch.linspace(-8, 8, 33, dtype=torch.bfloat16)
    y = act(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference(name, x.double().tolist(), torch.float32), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- knobs and learned parameters

def test_leaky_relu_slope_knob():
    act = create("activation", "leaky_relu", tiny_config(leaky_relu_slope=0.2))
    x = torch.tensor(X, dtype=torch.float64)
    torch.testing.assert_close(act(x), torch.tensor([v if v > 0 else 0.2 * v for v in X], dtype=torch.float64))


def test_prelu_slope_is_one_learned_scalar_with_a_gradient():
    act = create("activation", "prelu", tiny_config(prelu_init=0.1))
    params = list(act.parameters())
    assert len(params) == 1 and params[0].numel() == 1
    assert act.slope.item() == pytest.approx(0.1)
    x = torch.tensor(X)
    torch.testing.assert_close(act(x), torch.tensor([v if v > 0 else 0.1 * v for v in X]))
    act(x).sum().backward()
    # d/da sum(where(x > 0, x, a x)) = sum of the non-positive inputs
    torch.testing.assert_close(act.slope.grad, torch.tensor(sum(v for v in X if v <= 0)))
    # a loss that wants larger outputs on negative inputs pushes a up: d(-sum(a x))/da = -sum(x) = 3
    act.zero_grad()
    (-act(torch.tensor([-1.0, -2.0])).sum()).backward()
    assert act.slope.grad.item() == pytest.approx(3.0)


@pytest.mark.parametrize("p", [1.0, 3.0, 0.5, 2.7])
def test_relu_power_exponent_knob(p):
    act = create("activation", "relu_power", tiny_config(relu_power_exponent=p))
    x = torch.tensor([v for v in X if abs(v) <= 100], dtype=torch.float64, requires_grad=True)
    y = act(x)
    torch.testing.assert_close(y, torch.tensor([max(v, 0.0) ** p for v in x.tolist()], dtype=torch.float64))
    y.sum().backward()
    # derivative p x^(p-1) for x > 0, exactly 0 for x <= 0 (also for p < 1, where it is unbounded at 0+)
    expected = [p * v ** (p - 1) if v > 0 else 0.0 for v in x.tolist()]
    torch.testing.assert_close(x.grad, torch.tensor(expected, dtype=torch.float64))


def test_relu_power_flag_reaches_the_config():
    assert train_args.parse_args(["--relu_power_exponent", "3"]).model["relu_power_exponent"] == 3.0


@pytest.mark.parametrize("p", [0.0, -1.0, float("nan"), float("inf")])
def test_relu_power_non_positive_exponent_is_a_user_error(p):
    with pytest.raises(UserError, match="--relu_power_exponent"):
        create("activation", "relu_power", tiny_config(relu_power_exponent=p))
    with pytest.raises(UserError, match="--relu_power_exponent"):
        GPT(tiny_config(activation_variant="relu_power", relu_power_exponent=p))


def test_elu_and_celu_alpha_knobs():
    x = torch.tensor(X, dtype=torch.float64)
    elu = create("activation", "elu", tiny_config(elu_alpha=0.5))
    torch.testing.assert_close(elu(x), torch.tensor([_elu(v, 0.5) for v in X], dtype=torch.float64))
    celu = create("activation", "celu", tiny_config(celu_alpha=2.0))
    expected = [max(0.0, v) + min(0.0, 2.0 * (math.exp(min(v, 0.0) / 2.0) - 1)) for v in X]
    torch.testing.assert_close(celu(x), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(UserError, match="--celu_alpha"):
        create("activation", "celu", tiny_config(celu_alpha=0.0))
    with pytest.raises(UserError, match="--elu_alpha"):
        tiny_config(elu_alpha=-1.0)


# ---------------------------------------------------------------- costs

@pytest.mark.parametrize("name", names("activation"))
def test_activation_cost_scales_with_n_and_counts_params(name):
    act = create("activation", name, tiny_config())
    one, many, none = act.cost(1), act.cost(7), act.cost(0)
    n_params = sum(p.numel() for p in act.parameters())
    for c in (one, many, none):
        assert c.params == n_params
        assert c.macs == 0 and c.reduce == 0  # elementwise: no matrix products, no row reductions
    for count in COUNTS[1:]:
        assert getattr(many, count) == 7 * getattr(one, count), count
        assert getattr(none, count) == 0, count
    if name != "identity":
        assert one.act_mem == 1
        assert one.elementwise + one.exp + one.div + one.cmp > 0  # it computes something


def test_relu_power_cost_depends_on_the_exponent():
    cost = lambda p: create("activation", "relu_power", tiny_config(relu_power_exponent=p)).cost(1)  # noqa: E731
    assert (cost(2.0).elementwise, cost(2.0).exp) == (1, 0)  # one square
    assert (cost(3.0).elementwise, cost(3.0).exp) == (2, 0)
    assert cost(2.5).exp == 1  # general power: exp(p ln x)


# ---------------------------------------------------------------- feed-forward blocks

def _linear(x, lin):
    y = x @ lin.weight.T
    return y + lin.bias if lin.bias is not None else y


GLU_GATES = {
    "swiglu": lambda g: g / (1 + torch.exp(-g)),
    "geglu": lambda g: 0.5 * g * (1 + torch.erf(g / math.sqrt(2))),
    "reglu": lambda g: torch.clamp(g, min=0),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", sorted(GLU_GATES))
def test_glu_variants_equal_their_formula(name, bias):
    cfg = tiny_config(mlp_hidden_size=48, bias=bias)
    m = create("mlp", name, cfg)
    assert m.c_fc.out_features == 96 and m.c_proj.in_features == 48
    assert sum(p.numel() for p in m.parameters()) == 32 * 96 + 48 * 32 + (96 + 32 if bias else 0)
    if bias:
        with torch.no_grad():
            m.c_fc.bias.normal_()
            m.c_proj.bias.normal_()
    x = torch.randn(2, 3, 32) * 3
    h = _linear(x, m.c_fc)
    gate, up = h[..., :48], h[..., 48:]  # gate half first, then the up half
    torch.testing.assert_close(m(x), _linear(GLU_GATES[name](gate) * up, m.c_proj), rtol=1e-5, atol=1e-6)


def test_swiglu_keeps_its_parameter_names():
    assert set(create("mlp", "swiglu", tiny_config()).state_dict()) == {"c_fc.weight", "c_proj.weight"}


@pytest.mark.parametrize("name", sorted(GLU_GATES))
def test_glu_cost_counts_the_gate_multiply(name):
    cfg = tiny_config(mlp_hidden_size=48, bias=True)
    m = create("mlp", name, cfg)
    c, gate = m.cost(), m.act.cost(48)
    # biases of c_fc (96) and c_proj (32), the gate activation, and one multiply per hidden unit
    assert c.elementwise == 96 + 32 + gate.elementwise + 48
    assert c.macs == 32 * 96 + 48 * 32


@pytest.mark.parametrize("activation", ["gelu", "prelu"])
@pytest.mark.parametrize("name", names("mlp"))
def test_mlp_cost_params_and_macs_match_the_module(name, activation):
    cfg = tiny_config(mlp_hidden_size=40, activation_variant=activation, bias=True)
    m = create("mlp", name, cfg)
    c = m.cost(cfg.block_size)
    assert c.params == sum(p.numel() for p in m.parameters())
    T = 5
    with FlopCounterMode(display=False) as counter:
        m(torch.randn(1, T, cfg.n_embd))
    assert c.macs == counter.get_total_flops() / 2 / T


def test_identity_mlp_passes_its_input_through():
    m = create("mlp", "identity", tiny_config())
    x = torch.randn(2, 5, 32)
    assert torch.equal(m(x), x)
    assert not list(m.parameters())
    assert m.cost() == type(m.cost())()  # all zero


def test_none_mlp_contributes_zero_with_a_gradient_path():
    m = create("mlp", "none", tiny_config())
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = m(x)
    assert torch.equal(y, torch.zeros_like(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # a gradient (zero), not None: DDP needs every param used
    assert not list(m.parameters())
    assert m.cost() == type(m.cost())()


def _block_parts(mlp_variant, placement):
    cfg = tiny_config(mlp_variant=mlp_variant, norm_placement_mlp=placement)
    model = GPT(cfg).eval()
    return model.transformer.h[0], model.position, torch.randn(2, cfg.block_size, cfg.n_embd)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_none_mlp_removes_the_sub_layer_from_the_block(placement):
    block, position, x = _block_parts("none", placement)
    after_attn = x + block.attn(block.ln_1(x), position)  # the attention sub-layer, pre-norm
    expected = after_attn if placement == "pre" else block.ln_2(after_attn)
    torch.testing.assert_close(block(x, position), expected)


def test_identity_mlp_adds_the_normed_input_under_pre_norm():
    block, position, x = _block_parts("identity", "pre")
    h = x + block.attn(block.ln_1(x), position)
    torch.testing.assert_close(block(x, position), h + block.ln_2(h))
