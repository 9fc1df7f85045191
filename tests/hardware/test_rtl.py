"""The generated RTL in the real tools: bit-exact simulation against the Python model (Icarus Verilog),
synthesis (Yosys + ABC, osu018 cells): determinism, growth with width, the operator census; the CLI.

Skipped with the reason when a tool is missing; scripts/setup_env.sh installs them (CI has them)."""
from __future__ import annotations

import json

import pytest

from errors import UserError
from hardware import rtl, tools, vectors
from hardware.build import build_unit
from hardware.fixed import UNITS, Unit

needs_sim = pytest.mark.skipif(bool(tools.missing_tools(("iverilog", "vvp"))),
                               reason=f"Icarus Verilog missing ({tools.INSTALL})")
needs_synth = pytest.mark.skipif(bool(tools.missing_tools(("yosys", "yosys-abc"))),
                                 reason=f"Yosys or the osu018 cell library missing ({tools.INSTALL})")

# (in_bits, out_bits, row, exp) per simulated configuration: several widths, both exponentials
CONFIGS = [(8, 8, 16, None), (6, 10, 8, "shift_lut"), (12, 12, 8, None), (16, 16, 8, None)]


@needs_sim
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"i{c[0]}o{c[1]}r{c[2]}{c[3] or ''}")
@pytest.mark.parametrize("variant", UNITS)
def test_rtl_is_bit_exact_with_the_python_model(variant, config):
    in_bits, out_bits, row, exp = config
    unit = build_unit(variant, in_bits, out_bits, row, exp=exp if variant in ("softmax", "softermax", "consmax",
                                                                              "sigmoidmax") else None)
    check = vectors.verify(unit, n_random=30, seed=in_bits)
    assert check.compared >= 300  # hundreds of outputs, the edge cases among them
    assert check.ok, check.mismatches


@needs_sim
def test_a_wrong_model_is_caught(monkeypatch):
    """The check can fail: simulate one unit, compare with the model of a coarser exponential."""
    unit = Unit("softmax", in_bits=8, out_bits=8, row=8)
    other = Unit("softmax", in_bits=8, out_bits=8, row=8, exp="shift_lut", lut_bits=2)
    from hardware import fixed
    real = fixed.model
    monkeypatch.setattr(fixed, "model", lambda u, *a, **k: real(other, *a, **k))
    assert not vectors.verify(unit, n_random=5).ok


@needs_synth
def test_synthesis_is_deterministic_and_grows_with_width():
    small = [tools.synthesise(Unit("consmax", in_bits=6, out_bits=6)) for _ in range(2)]
    assert small[0].cells == small[1].cells and small[0].area_um2 == small[1].area_um2
    assert small[0].cells_by_type == small[1].cells_by_type
    wide = tools.synthesise(Unit("consmax", in_bits=10, out_bits=10))
    assert wide.area_um2 > small[0].area_um2 and wide.cells > small[0].cells
    assert wide.delay_ps > 0 and wide.logic_depth > 0 and wide.nand2_eq == pytest.approx(wide.area_um2 / tools.nand2_area())


@needs_synth
def test_consmax_has_no_divider_and_no_max_or_sum_state_where_softmax_has_them():
    cons = tools.synthesise(Unit("consmax", in_bits=6, out_bits=6))
    soft = tools.synthesise(Unit("softmax", in_bits=6, out_bits=6, row=8))
    assert "$div" not in cons.operators and cons.flip_flops == 0
    assert not any(op.startswith("$dff") for op in cons.operators)
    assert soft.operators.get("$div") == 1  # the reciprocal of the row sum
    # running max (6 bits) + running sum (P + 1 + log2 row = 12 bits) + the 'any key yet' bit
    assert soft.flip_flops == 6 + 12 + 1
    assert soft.area_um2 > cons.area_um2


def test_missing_tools_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"^yosys, yosys-abc, iverilog, vvp not found .* install them: sudo apt-get "
                                        r"install -y iverilog yosys"):
        tools.require(("yosys", "yosys-abc", "iverilog", "vvp"))
    assert rtl.run_cli(rtl.main, ["synth", "--variant", "consmax", "--in_bits", "6"]) == 2


def test_cli_rejects_bad_variant_and_width(capsys):
    assert rtl.run_cli(rtl.main, ["synth", "--variant", "consmx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'consmax'" in err
    assert rtl.run_cli(rtl.main, ["sim", "--variant", "softmax", "--in_bits", "40"]) == 2
    assert "--in_bits must be an integer in [4, 24]" in capsys.readouterr().err
    assert rtl.run_cli(rtl.main, ["verilog", "--variant", "sigsoftmax"]) == 2
    assert "valid: consmax, polymax" in capsys.readouterr().err


def test_cli_prints_verilog(capsys):
    assert rtl.main(["verilog", "--variant", "relumax", "--in_bits", "8"]) == 0
    text = capsys.readouterr().out
    assert "module relumax_i8q4_o8q13" in text and "endmodule" in text


@needs_synth
def test_cli_synth_prints_a_table_and_writes_json(tmp_path, capsys):
    assert rtl.main(["synth", "--variant", "consmax", "--in_bits", "6", "--out_bits", "6", "--row", "16",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NAND2 eq" in out and "consmax_i6q3_o6q6" in out
    saved = json.loads((tmp_path / "consmax_i6q3_o6q6_lut_interp5.json").read_text())
    assert saved["cells"] > 0 and saved["unit"]["in_bits"] == 6


@needs_sim
def test_cli_sim_reports_bit_exact(capsys):
    assert rtl.main(["sim", "--variant", "softermax", "--in_bits", "8", "--row", "8", "--random", "5"]) == 0
    assert "bit-exact" in capsys.readouterr().out


@needs_synth
def test_cli_sweep_plots_area_against_bits(tmp_path):
    plot = tmp_path / "area.png"
    assert rtl.main(["sweep", "--variants", "relumax", "polymax", "--bits", "4", "6", "--out", str(tmp_path),
                     "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000
    assert len(list(tmp_path.glob("*.json"))) == 4
