"""Linear-layer variants (variations/linear.py): BitNet b1.58 ternary weights, N-bit fake quantisation,
their straight-through gradients, knob validation, the per-site choice and the cost.

The quantisers are written out again here from their formulas; the layers' effective operands are
captured at the F.linear call with a TorchFunctionMode."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from errors import UserError
from model import GPT
from variations.linear import BitLinear, Linear, QuantizedLinear
from variations.registry import create

from conftest import tiny_config

SCHEMES = ("symmetric", "affine")
GRANULARITIES = ("per_tensor", "per_channel")


class CaptureLinear(TorchFunctionMode):
    """Records (input, weight) of every F.linear call: the operands after quantisation."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.calls.append((args[0].detach().clone(), args[1].detach().clone()))
        return func(*args, **(kwargs or {}))


def effective_operands(layer, x):
    with CaptureLinear() as cap:
        y = layer(x)
    assert len(cap.calls) == 1
    return y, *cap.calls[0]


# ---------------------------------------------------------------- reference quantisers, from the formulas

def ref_ternary(w):
    s = w.abs().mean()
    return torch.clamp(torch.round(w / s), -1, 1) * s


def ref_absmax_per_token(x, bits):
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().amax(dim=-1, keepdim=True) / qmax
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def ref_affine(x, bits, per_row):
    lo = (x.amin(dim=-1, keepdim=True) if per_row else x.min()).clamp(max=0)
    hi = (x.amax(dim=-1, keepdim=True) if per_row else x.max()).clamp(min=0)
    s = (hi - lo) / (2 ** bits - 1)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 2 ** bits - 1) - z) * s


def ref_symmetric(x, bits, per_row):
    if per_row:
        return ref_absmax_per_token(x, bits)
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().max() / qmax
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def bitlinear(n_in=24, n_out=16, bias=False, **kw):
    return create("linear", "bitlinear", tiny_config(**kw), n_in, n_out, bias)


def quantized(n_in=24, n_out=16, bias=False, **kw):
    return create("linear", "quantized", tiny_config(**kw), n_in, n_out, bias)


# ---------------------------------------------------------------- bitlinear

def test_bitlinear_weights_are_ternary_times_one_absmean_scale():
    layer = bitlinear(40, 30)
    x = torch.randn(2, 5, 40)
    _, _, w_eff = effective_operands(layer, x)
    s = layer.weight.abs().mean()
    values = set(torch.unique(w_eff).tolist())
    assert values <= {-s.item(), 0.0, s.item()} and len(values) == 3
    torch.testing.assert_close(w_eff, ref_ternary(layer.weight.detach()))
    # the latent weights themselves stay full precision
    assert torch.unique(layer.weight).numel() > 3


def test_bitlinear_forward_equals_formula():
    layer = bitlinear(24, 16, bias=True)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    x = torch.randn(3, 7, 24)
    expect = F.linear(ref_absmax_per_token(x, 8), ref_ternary(layer.weight.detach()), layer.bias)
    torch.testing.assert_close(layer(x), expect)


@pytest.mark.parametrize("act_bits", [0, None])
def test_bitlinear_activation_quantisation_off(act_bits):
    layer = bitlinear(bitlinear_act_bits=act_bits)
    x = torch.randn(4, 24)
    y, x_eff, w_eff = effective_operands(layer, x)
    assert torch.equal(x_eff, x)
    torch.testing.assert_close(y, F.linear(x, ref_ternary(layer.weight.detach())))
    assert layer.cost().reduce == 0 and layer.cost().cmp == 0


@pytest.mark.parametrize("act_bits", [0, 8])
def test_bitlinear_straight_through_gradients(act_bits):
    """Latent weights get the gradient of a plain linear with the quantised weight; x gets that of x_q."""
    layer = bitlinear(24, 16, bias=True, bitlinear_act_bits=act_bits)
    x = torch.randn(3, 5, 24, requires_grad=True)
    g = torch.randn(3, 5, 16)
    (layer(x) * g).sum().backward()

    w_q = ref_ternary(layer.weight.detach()).requires_grad_()
    x_q = (ref_absmax_per_token(x.detach(), act_bits) if act_bits else x.detach()).requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    (F.linear(x_q, w_q, b) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w_q.grad)
    torch.testing.assert_close(x.grad, x_q.grad)
    torch.testing.assert_close(layer.bias.grad, b.grad)
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_activation_quantisation_levels_per_token(bits):
    """At most 2^bits distinct values in each token, with enough features to fill more otherwise."""
    x = torch.randn(3, 4, 600) * torch.rand(3, 4, 1) * 5  # tokens of different ranges
    layers = [bitlinear(600, 8, bitlinear_act_bits=bits)]
    layers += [quantized(600, 8, quant_act_bits=bits, quant_scheme=s, quant_granularity="per_channel")
               for s in SCHEMES]
    for layer in layers:
        _, x_eff, _ = effective_operands(layer, x)
        counts = [torch.unique(tok).numel() for tok in x_eff.reshape(-1, 600)]
        assert max(counts) <= 2 ** bits, (layer, counts)
        assert min(counts) >= 2 ** bits // 2  # the grid is used, not collapsed


@pytest.mark.parametrize("scheme", SCHEMES)
def test_per_tensor_activation_levels_over_the_tensor(scheme):
    layer = quantized(100, 8, quant_act_bits=3, quant_scheme=scheme, quant_granularity="per_tensor")
    x = torch.randn(4, 6, 100)
    _, x_eff, _ = effective_operands(layer, x)
    assert torch.unique(x_eff).numel() <= 8


def test_bitlinear_latent_weights_train():
    """A few Adam steps on a regression target: the loss falls and the latent weights move."""
    torch.manual_seed(1)
    layer = bitlinear(16, 8)
    target = torch.randn(8, 16)
    x = torch.randn(256, 16)
    y = x @ target.T
    w0 = layer.weight.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(layer.weight, w0)


# ---------------------------------------------------------------- quantized

@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_quantized_forward_equals_formula(scheme, granularity):
    per_row = granularity == "per_channel"
    layer = quantized(24, 16, bias=True, quant_weight_bits=4, quant_act_bits=6, quant_scheme=scheme,
                      quant_granularity=granularity)
    x = torch.randn(3, 5, 24) + 0.5  # off-centre: the affine zero point matters
    ref = ref_affine if scheme == "affine" else ref_symmetric
    y, x_eff, w_eff = effective_operands(layer, x)
    torch.testing.assert_close(w_eff, ref(layer.weight.detach(), 4, per_row))
    torch.testing.assert_close(x_eff, ref(x, 6, per_row))
    torch.testing.assert_close(y, F.linear(x_eff, w_eff, layer.bias))
    # per-channel: each output row on its own grid of at most 2^4 values
    rows = w_eff if per_row else w_eff.reshape(1, -1)
    assert max(torch.unique(r).numel() for r in rows) <= 16


def test_quantized_weight_only():
    layer = quantized(quant_act_bits=0, quant_weight_bits=3)
    x = torch.randn(5, 24)
    _, x_eff, w_eff = effective_operands(layer, x)
    assert torch.equal(x_eff, x)
    assert max(torch.unique(row).numel() for row in w_eff) <= 8  # per_channel (the default): per row


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_quantized_error_shrinks_with_bits(scheme, granularity):
    torch.manual_seed(2)
    x = torch.randn(8, 10, 64)
    errors = []
    for bits in (2, 4, 8, 16):
        torch.manual_seed(3)  # the same latent weights for every bit width
        layer = quantized(64, 48, quant_weight_bits=bits, quant_act_bits=bits, quant_scheme=scheme,
                          quant_granularity=granularity)
        exact = F.linear(x, layer.weight)
        errors.append((layer(x) - exact).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 * errors[0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_per_channel_beats_per_tensor_on_uneven_rows(scheme):
    torch.manual_seed(4)
    w = torch.randn(32, 64) * torch.logspace(-3, 0, 32).unsqueeze(1)  # rows 1000x apart in scale
    x = torch.randn(16, 64)
    err = {}
    for granularity in GRANULARITIES:
        layer = quantized(64, 32, quant_weight_bits=4, quant_act_bits=0, quant_scheme=scheme,
                          quant_granularity=granularity)
        with torch.no_grad():
            layer.weight.copy_(w)
        rel = ((layer(x) - x @ w.T).norm(dim=0) / (x @ w.T).norm(dim=0))  # per output channel
        err[granularity] = rel
    # (a row that spans the whole tensor's range can land slightly better on the shared grid, so
    # compare the worst and the average channel, not every channel)
    assert err["per_channel"].max() <= err["per_tensor"].max()
    assert err["per_channel"].mean() < 0.2 * err["per_tensor"].mean()
    assert err["per_tensor"][:8].min() == 1.0  # the small rows round to zero on the shared grid


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_quantized_straight_through_gradients(granularity):
    layer = quantized(24, 16, quant_weight_bits=4, quant_act_bits=4, quant_granularity=granularity)
    x = torch.randn(3, 5, 24, requires_grad=True)
    g = torch.randn(3, 5, 16)
    (layer(x) * g).sum().backward()
    per_row = granularity == "per_channel"
    w_q = ref_symmetric(layer.weight.detach(), 4, per_row).requires_grad_()
    x_q = ref_symmetric(x.detach(), 4, per_row).requires_grad_()
    (F.linear(x_q, w_q) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w_q.grad)
    torch.testing.assert_close(x.grad, x_q.grad)


# ---------------------------------------------------------------- edge cases and precision

@pytest.mark.parametrize("make", [bitlinear, lambda **kw: quantized(quant_scheme="affine", **kw),
                                  lambda **kw: quantized(quant_granularity="per_tensor", **kw)])
def test_zero_input_and_zero_weight_are_exact(make):
    layer = make(bias=True)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    y = layer(torch.zeros(2, 3, 24))
    torch.testing.assert_close(y, layer.bias.expand(2, 3, 16))
    with torch.no_grad():
        layer.weight.zero_()
    y = layer(torch.randn(2, 24))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, layer.bias.expand(2, 16))


@pytest.mark.parametrize("make", [bitlinear, quantized])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(make, dtype):
    """Quantisation runs in fp32: autocast quantises weights exactly as fp32 does; a model cast to
    the low dtype gives outputs of that dtype."""
    layer = make()
    x = torch.randn(4, 24)
    ref, _, w_ref = effective_operands(layer, x)
    with torch.autocast("cpu", dtype=dtype):
        y, _, w_eff = effective_operands(layer, x)
    assert y.dtype == dtype
    assert torch.equal(w_eff, w_ref)
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)
    half = layer.to(dtype)
    out = half(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


# ---------------------------------------------------------------- knobs

@pytest.mark.parametrize("flag,value", [("quant_weight_bits", 1), ("quant_weight_bits", 17), ("quant_weight_bits", 0),
                                        ("quant_act_bits", 1), ("quant_act_bits", 17), ("quant_act_bits", -1),
                                        ("bitlinear_act_bits", 1), ("bitlinear_act_bits", 32)])
def test_bad_bits_are_user_errors_naming_the_flag(flag, value):
    make = bitlinear if flag.startswith("bitlinear") else quantized
    with pytest.raises(UserError, match=f"--{flag} must be an integer from 2 to 16"):
        make(**{flag: value})
    with pytest.raises(UserError, match=f"--{flag}"):
        GPT(tiny_config(linear_variant="bitlinear" if make is bitlinear else "quantized", **{flag: value}))


@pytest.mark.parametrize("flag", ["quant_scheme", "quant_granularity"])
def test_bad_choices_are_user_errors(flag):
    with pytest.raises(UserError, match=f"--{flag}"):
        tiny_config(**{flag: "per_row"})


def test_bits_bounds_accepted():
    for bits in (2, 16):
        quantized(quant_weight_bits=bits, quant_act_bits=bits)
        bitlinear(bitlinear_act_bits=bits)


# ---------------------------------------------------------------- per-site choice, model integration, cost

def test_per_site_linear_variant():
    model = GPT(tiny_config(linear_variant_mlp_up="bitlinear"))
    for block in model.transformer.h:
        assert type(block.mlp.c_fc) is BitLinear
        for other in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_proj):
            assert type(other) is Linear
    everywhere = GPT(tiny_config(linear_variant="quantized", linear_variant_attn_proj="linear"))
    for block in everywhere.transformer.h:
        assert type(block.attn.c_proj) is Linear
        assert all(type(m) is QuantizedLinear for m in (block.attn.c_attn, block.mlp.c_fc, block.mlp.c_proj))


def test_residual_init_and_weight_decay_reach_quantised_projections():
    cfg = tiny_config(linear_variant="bitlinear", n_layer=8, n_embd=64)
    model = GPT(cfg)
    c_proj, c_fc = model.transformer.h[0].mlp.c_proj.weight, model.transformer.h[0].mlp.c_fc.weight
    assert c_proj.std().item() == pytest.approx(cfg.init_std / (2 * cfg.n_layer) ** 0.5, rel=0.1)
    assert c_fc.std().item() == pytest.approx(cfg.init_std, rel=0.1)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(c_proj) in decayed and id(c_fc) in decayed


@pytest.mark.parametrize("name,kw", [("bitlinear", {}), ("bitlinear", {"bitlinear_act_bits": 0}),
                                     ("quantized", {}), ("quantized", {"quant_scheme": "affine"}),
                                     ("quantized", {"quant_granularity": "per_tensor", "quant_act_bits": 0})])
@pytest.mark.parametrize("bias", [False, True])
def test_cost_params_and_macs(name, kw, bias):
    layer = create("linear", name, tiny_config(**kw), 24, 40, bias)
    c = layer.cost(16)
    assert c.params == sum(p.numel() for p in layer.parameters())
    assert c.macs == 24 * 40
    x = torch.randn(1, 16, 24)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() / 2 / 16 == c.macs
    plain = Linear(None, 24, 40, bias).cost(16)
    assert c.elementwise > plain.elementwise  # at least the output rescale
    assert c.act_mem == plain.act_mem


def test_cost_counts_follow_the_settings():
    n, m = 24, 40
    sym = quantized(n, m).cost()
    aff = quantized(n, m, quant_scheme="affine").cost()
    w_only = quantized(n, m, quant_act_bits=0).cost()
    per_tensor = quantized(n, m, quant_granularity="per_tensor").cost()
    bit = bitlinear(n, m).cost()
    assert w_only.reduce == 0 and w_only.cmp == 0 and w_only.elementwise == m
    assert sym.reduce == n and sym.div == 1 and sym.cmp == 5 * n
    assert aff.reduce == 3 * n and aff.elementwise > sym.elementwise
    assert per_tensor.div == 0 and per_tensor.elementwise == sym.elementwise - m
    assert bit.reduce == n and bit.cmp == 5 * n and bit.elementwise == n + m
    model = GPT(tiny_config(linear_variant="bitlinear", bias=True))
    from variations.cost import total
    assert total(model.cost().values()).params == sum(p.numel() for p in model.parameters())
