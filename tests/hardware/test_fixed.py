"""hardware/fixed.py and hardware/forward.py without the EDA tools: the integer models against the
floating-point variants (stated error bounds), the formats, bad input, and training through the units."""
from __future__ import annotations

import json
import math

import pytest
import torch

import train
from errors import UserError
from gpt_conf import GPTConfig
from hardware import fixed, vectors
from hardware.build import build_unit
from hardware.fixed import Unit
from variations.registry import create

from conftest import read_metrics, tiny_config

# Largest |unit - float variant| in output LSBs (vectors.error_lsb), per unit and exponential; the
# same figures docs/hardware.md measures. shift_lut on base e has no interpolation: its error grows
# with the output width (2^(out_bits - lut_bits) LSBs in the worst case), so it is bounded per width.
BOUNDS = {("softmax", "lut_interp"): 1.5, ("softermax", "lut_interp"): 1.5, ("softermax", "shift_lut"): 1.5,
          ("consmax", "lut_interp"): 1.5, ("sigmoidmax", "lut_interp"): 1.5, ("relumax", None): 0.0,
          ("polymax", None): 1.0}


def normaliser(variant: str, row: int):
    return create("softmax", variant, GPTConfig(block_size=row)).double()


@pytest.mark.parametrize("bits", [6, 8, 12, 16])
@pytest.mark.parametrize("variant,exp", sorted(BOUNDS, key=str))
def test_integer_model_is_close_to_the_float_variant(variant, exp, bits):
    unit = build_unit(variant, bits, bits, 16, exp=exp)
    err = vectors.error_lsb(unit, normaliser(variant, 16))
    assert err <= BOUNDS[(variant, exp)], f"{unit.name}: {err:.2f} LSB"


@pytest.mark.parametrize("variant", ["softmax", "consmax", "sigmoidmax"])
def test_shift_lut_on_base_e_is_bounded_by_its_table(variant):
    for bits in (8, 12, 16):
        unit = build_unit(variant, bits, bits, 16, exp="shift_lut")
        err = vectors.error_lsb(unit, normaliser(variant, 16))
        # the table's step 2^(1/2^L) - 1 ~ ln2 / 2^L of a full-scale output (2^out_bits LSBs), plus 2 LSB
        assert err <= 2 ** bits * math.log(2) / 2 ** unit.lut_bits + 2, f"{unit.name}: {err:.2f} LSB"


def test_edge_rows_give_exact_known_outputs():
    unit = Unit("softmax", in_bits=8, out_bits=8, row=8)
    top = 2 ** 8 - 1
    x = torch.tensor([[5] * 8, [-128] * 7 + [127], [3] * 8, [0, 1, 2, 3, 4, 5, 6, 7]])
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[2] = False  # a fully masked row
    keep[3, :7] = False  # a single kept key
    y = fixed.model(unit, x, keep)
    assert y[0].tolist() == [256 // 8] * 8  # all equal: 1/8 each (exactly 32 LSB)
    assert y[1, -1] == top and y[1, :-1].sum() == 0  # one large value takes everything (saturated at 1 - 2^-8)
    assert y[2].sum() == 0  # fully masked: all zero
    assert y[3].tolist() == [0] * 7 + [top]


def test_softermax_online_rescaling_matches_a_two_pass_base2_softmax():
    unit = Unit("softermax", in_bits=8, out_bits=8, row=32)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (64, 32), generator=g)
    y = fixed.model(unit, x).double() / 256
    ref = torch.softmax(x.double() / 16 * math.log(2), dim=-1)
    assert (y - ref).abs().max() <= 2 / 256


def test_consmax_offset_folds_beta_and_gamma():
    unit = Unit("consmax", in_bits=12, out_bits=12)
    x = torch.arange(-2048, 2048)
    beta, gamma = 1.7, 37.0
    y = fixed.model(unit, x, None, fixed.quantise_params(unit, beta, gamma)).double() / 2 ** 12
    ref = (torch.exp(x.double() / 64 - beta) / gamma).clamp(max=1 - 2 ** -12)
    assert (y - ref).abs().max() <= 1.5 / 2 ** 12


def test_units_reject_bad_widths_and_variants_in_one_line():
    with pytest.raises(UserError, match=r"unknown hardware unit \(variant\) 'consmx'; did you mean 'consmax'"):
        Unit("consmx")
    with pytest.raises(UserError, match=r"--in_bits must be an integer in \[4, 24\]"):
        Unit("softmax", in_bits=3)
    with pytest.raises(UserError, match="--out_bits must be an integer"):
        Unit("relumax", out_bits=40)
    with pytest.raises(UserError, match=r"unknown exponential implementation \(--exp\) 'lut'"):
        Unit("softmax", exp="lut")
    with pytest.raises(UserError, match="normaliser with a hardware unit 'sigsoftmax'"):
        build_unit("sigsoftmax")
    with pytest.raises(UserError, match="integer --polymax_power"):
        Unit("polymax", consts={"power": 1.5})
    with pytest.raises(UserError, match="exceed the unit's row length 4"):
        fixed.model(Unit("softmax", row=4), torch.zeros(1, 8, dtype=torch.int64))


def test_output_format_fits_the_variants_range():
    assert build_unit("softmax", 8, 8).out_frac == 8
    assert build_unit("consmax", 8, 8).out_frac == 8
    assert build_unit("relumax", 8, 8).out_frac == 13  # relu(x) / 256 < 8 / 256 = 2^-5 at Q4.4
    assert build_unit("relumax", 8, 8, out_frac=9).out_frac == 9


# ------------------------------------------------------------------------ training through the unit

def test_hook_replaces_the_forward_and_keeps_float_gradients():
    torch.manual_seed(0)
    cfg = tiny_config(softmax_variant_attn="consmax", softmax_hw_bits=8)
    norm = create("softmax", "consmax", cfg)
    from hardware.forward import attach
    hook = attach(norm, cfg)
    s = (torch.randn(2, 4, 16, 16) * 3).requires_grad_()
    keep = torch.ones(16, 16, dtype=torch.bool).tril()
    y = norm(s, keep)
    unit = hook.unit
    expected = fixed.model(unit, fixed.quantise_input(unit, s.detach()), keep.expand_as(s),
                           fixed.quantise_params(unit, float(norm.beta.detach()), float(norm.gamma.detach()))).double() / 2 ** unit.out_frac
    assert torch.equal(y.double(), expected.to(y.dtype).double())
    assert (y[..., ~keep] == 0).all()
    y.sum().backward()  # straight-through: the float consmax's gradients
    assert norm.beta.grad is not None and norm.gamma.grad is not None and s.grad.abs().sum() > 0


def test_hardware_flag_errors_for_a_normaliser_without_a_unit():
    with pytest.raises(UserError, match="--softmax_hw_bits: the normaliser 'sigsoftmax' has no hardware unit"):
        from model import GPT
        GPT(tiny_config(softmax_variant_attn="sigsoftmax", softmax_hw_bits=8))
    with pytest.raises(UserError, match="--softmax_hw_bits must be"):
        tiny_config(softmax_hw_bits=2)


def test_a_tiny_run_through_the_fixed_point_unit_lowers_its_loss(char_data, tmp_path, variant="consmax"):
    out = tmp_path / "run"
    summary = train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                          "--max_iters", "60", "--eval_interval", "30", "--learning_rate", "3e-3",
                          "--softmax_variant_attn", variant, "--softmax_hw_bits", "12"])
    evals = [r for r in read_metrics(out) if r["type"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert json.loads((out / "config.json").read_text())["model"]["softmax_hw_bits"] == 12
    assert summary["status"] == "completed"


@pytest.mark.parametrize("attention", ["causal", "mla"])
def test_every_scoring_attention_runs_its_normaliser_through_the_unit(attention):
    """--softmax_hw_bits reaches each attention that scores q.k (variations/attention.build_normaliser),
    MLA included: the unit is attached and SDPA / the Triton kernels give way to it."""
    from model import GPT
    model = GPT(tiny_config(attention_variant=attention, softmax_variant_attn="softmax", softmax_hw_bits=8))
    for block in model.transformer.h:
        assert block.attn.hardware is not None and "softmax_hw" in block.attn.quantised_inside
        assert not block.attn.use_sdpa
