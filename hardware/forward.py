"""Train through the hardware: an attention normaliser whose forward pass is its generated unit's integers.

    python train.py --softmax_variant_attn consmax --softmax_hw_bits 8          # Q4.4 in, UQ0.8 out
    python train.py --softmax_variant_attn softmax --softmax_hw_bits 12 --softmax_hw_out_bits 10

With --softmax_hw_bits the attention normaliser's output is replaced, in the forward pass, by what its
hardware unit (hardware/fixed.py, the bit-exact model of the RTL in hardware/verilog.py) computes:
the scores are rounded to the input format (nearest, saturating: the producer's rounding), the unit's
integer model runs on them (masked and -inf keys are the unit's keep = 0), and its output integers are
read back as weights. The output binary point fits the variant's range at its initial constants
(`fitted_out_frac`): UQ0.N for softmax and softermax, finer for the elementwise units, whose weights
are small (relu(x) / 256). The backward pass is the floating-point variant's (a straight-through
estimator: y = y_float + (y_hw - y_float).detach()), so learned constants (consmax's beta and gamma)
keep their gradients; consmax's offset register is recomputed from them at every step. The loss a
run reports is the loss of that exact hardware. Rows are the key axis; the unit's row length is the
context (--block_size).
"""
from __future__ import annotations

import math

import torch

from errors import UserError, unknown_name_message
from hardware import fixed
from hardware.fixed import Unit


def constants_of(variant: str, normaliser) -> dict:
    """The constants a unit bakes in, read from a built normaliser (its knobs as the variant resolved them)."""
    out = {}
    for key, attr in (("divisor", "divisor"), ("bias", "bias"), ("x0", "x0"), ("y0", "y0"), ("power", "power")):
        value = getattr(normaliser, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    if variant in ("relumax", "sigmoidmax", "polymax") and "divisor" not in out:
        raise UserError(f"the {variant} normaliser has no constant divisor the hardware unit can bake in")
    return out


def fitted_out_frac(variant: str, normaliser, in_bits: int, out_bits: int, in_frac: int | None = None) -> int:
    """The output binary point that fits the variant's range: out_bits - ceil(log2 M), M the largest
    weight the floating-point variant gives over every input value, within [0, out_bits + 8]; UQ0.N
    for softmax, softermax and consmax (weights below 1; an exponential's maximum over the whole input
    range, e^(8 - beta) / gamma at Q4.4, would waste the bits). relumax's relu(x) / 256 over Q4.4 inputs (M = 8 / 256) gets UQ(-5).13:
    its weights keep all 8 bits instead of rounding to zero in UQ0.8."""
    if variant in fixed.STREAMING or variant == "consmax":  # an exponential's range cannot be fitted: UQ0.N
        return out_bits
    in_frac = in_bits // 2 if in_frac is None else in_frac
    grid = torch.arange(-2 ** (in_bits - 1), 2 ** (in_bits - 1), dtype=torch.float64) / 2 ** in_frac
    with torch.no_grad():
        top = float(normaliser(grid.view(1, -1)).max())
    if not top > 0:
        return out_bits
    return int(min(out_bits + 8, max(0, out_bits - math.ceil(math.log2(top)))))


def unit_for(variant: str, normaliser, **widths) -> Unit:
    """The Unit of a built normaliser: its variant, its constants, the given widths and options; the
    output binary point fitted to its range (fitted_out_frac) unless out_frac is given."""
    if variant not in fixed.UNITS:
        raise UserError(unknown_name_message("normaliser with a hardware unit", variant, fixed.UNITS))
    if widths.get("out_frac") is None:
        widths["out_frac"] = fitted_out_frac(variant, normaliser, widths.get("in_bits", 8), widths.get("out_bits", 8),
                                             widths.get("in_frac"))
    return Unit(variant, consts=constants_of(variant, normaliser), **widths)


class HardwareForward:
    """A forward hook on a normaliser: its output becomes the unit's, gradients stay the float ones."""

    def __init__(self, unit: Unit):
        self.unit = unit

    def params(self, module) -> dict:
        if self.unit.variant == "consmax":
            return fixed.quantise_params(self.unit, float(module.beta), float(module.gamma))
        return {}

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        mask = args[1] if len(args) > 1 else None
        keep = ~torch.isneginf(x)
        if mask is not None:
            keep = keep & mask
        keep = keep.expand_as(x)
        with torch.no_grad():
            X = fixed.quantise_input(self.unit, x.detach().float().nan_to_num(0.0).masked_fill(~keep, 0.0))
            Y = fixed.model(self.unit, X, keep, self.params(module), check=False)
            y_hw = fixed.dequantise_output(self.unit, Y).to(output.dtype)
        return output + (y_hw - output).detach()


def attach(normaliser, config) -> HardwareForward | None:
    """Hook the unit's model onto `normaliser` when config.softmax_hw_bits is set; the hook, else None."""
    bits = getattr(config, "softmax_hw_bits", None)
    if not bits:
        return None
    variant = normaliser.registry_name
    if variant not in fixed.UNITS:
        raise UserError(f"--softmax_hw_bits: the normaliser '{variant}' has no hardware unit; "
                        f"units exist for {', '.join(fixed.UNITS)} (or unset --softmax_hw_bits)")
    unit = unit_for(variant, normaliser, in_bits=bits, out_bits=config.softmax_hw_out_bits or bits,
                    row=config.block_size, exp=config.softmax_hw_exp)
    hook = HardwareForward(unit)
    normaliser.register_forward_hook(hook)
    return hook
