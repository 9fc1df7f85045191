"""The hardware unit of a registered normaliser at given widths, its constants the variant's defaults.

    build_unit("relumax", 8, 8, row=256) -> Unit (divisor from --relumax_divisor's default, output fitted)
"""
from __future__ import annotations

from errors import UserError, unknown_name_message
from hardware import fixed
from hardware.fixed import Unit


def build_unit(variant: str, in_bits: int = 8, out_bits: int = 8, row: int = 256, in_frac=None, out_frac=None,
               exp=None, lut_bits=None) -> Unit:
    """The unit of `variant` at these widths, its constants the variant's defaults (a GPTConfig's)."""
    from gpt_conf import GPTConfig
    from hardware.forward import unit_for
    from variations.registry import create
    if variant not in fixed.UNITS:
        raise UserError(unknown_name_message("normaliser with a hardware unit", variant, fixed.UNITS))
    Unit(variant, in_bits=in_bits, out_bits=out_bits, row=row, in_frac=in_frac, exp=exp)  # widths checked first
    normaliser = create("softmax", variant, GPTConfig(block_size=row))
    return unit_for(variant, normaliser, in_bits=in_bits, out_bits=out_bits, row=row, in_frac=in_frac,
                    out_frac=out_frac, exp=exp, lut_bits=lut_bits)
