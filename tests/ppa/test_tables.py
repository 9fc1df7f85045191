"""ppa/tables.py: the shipped tables equal their sources, the derivation rules give what they promise, and
bad files fail with one line naming the file and the key."""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import yaml

from errors import UserError
from ppa import tables
from ppa.tables import FORMATS, load_target, load_tech, parse_format, target_names, tech_names

# Horowitz, ISSCC 2014, 45 nm at 0.9 V, as the paper gives them (energy in pJ, area in um2).
HOROWITZ_2014 = {
    ("energy_pj", "add", "int8"): 0.03, ("energy_pj", "add", "int16"): 0.05, ("energy_pj", "add", "int32"): 0.1,
    ("energy_pj", "add", "fp16"): 0.4, ("energy_pj", "add", "fp32"): 0.9,
    ("energy_pj", "mult", "int8"): 0.2, ("energy_pj", "mult", "int32"): 3.1,
    ("energy_pj", "mult", "fp16"): 1.1, ("energy_pj", "mult", "fp32"): 3.7,
    ("area_um2", "add", "int8"): 36, ("area_um2", "add", "int16"): 67, ("area_um2", "add", "int32"): 137,
    ("area_um2", "add", "fp16"): 1360, ("area_um2", "add", "fp32"): 4184,
    ("area_um2", "mult", "int8"): 282, ("area_um2", "mult", "int32"): 3495,
    ("area_um2", "mult", "fp16"): 1640, ("area_um2", "mult", "fp32"): 7700,
}
HOROWITZ_SRAM_64BIT = {8192: 10, 32768: 20, 1048576: 100}  # pJ per 64-bit read by capacity
HOROWITZ_DRAM_64BIT = (1300, 2600)  # 1.3-2.6 nJ


@pytest.fixture(scope="module")
def h45():
    return load_tech("horowitz45")


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _figures(node, key=""):
    """Every mapping with a `source` in a parsed YAML tree, as (dotted key, mapping)."""
    if isinstance(node, dict):
        if "source" in node:
            yield key, node
        for k, v in node.items():
            yield from _figures(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _figures(v, f"{key}[{i}]")


def _one_line_error(call, *needles) -> str:
    with pytest.raises(UserError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ----------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("name, kind, bits, precision", [
    ("fp32", "float", 32, 24), ("tf32", "float", 32, 11), ("fp16", "float", 16, 11), ("bf16", "float", 16, 8),
    ("fp8", "float", 8, 4), ("int2", "int", 2, 2), ("int8", "int", 8, 8), ("int32", "int", 32, 32),
    ("ternary", "ternary", 2, 2), ("BF16", "float", 16, 8)])
def test_parse_format(name, kind, bits, precision):
    f = parse_format(name)
    assert (f.name, f.kind, f.bits, f.precision) == (name.lower(), kind, bits, precision)


@pytest.mark.parametrize("bad", ["bf61", "int1", "int33", "fp64", ""])
def test_parse_format_unknown(bad):
    msg = _one_line_error(lambda: parse_format(bad), "unknown number format", "intN (N = 2..32)", "ternary")
    if bad == "bf61":
        assert "did you mean 'bf16'" in msg


def test_formats_cover_every_int_width():
    assert {f"int{n}" for n in range(2, 33)} <= set(FORMATS)


# -------------------------------------------------------------------------------- horowitz45 tables
@pytest.mark.parametrize("section, prim, fmt", list(HOROWITZ_2014))
def test_horowitz45_equals_the_paper(h45, section, prim, fmt):
    value = getattr(h45, section)(prim, fmt)
    assert value == pytest.approx(HOROWITZ_2014[section, prim, fmt], rel=1e-12)
    assert h45.derivation(prim, fmt, section) == "tabulated (horowitz14)"
    assert h45.source_of(section, prim, fmt) == "horowitz14"


def test_horowitz45_tabulates_exactly_the_papers_entries():
    raw = _raw(tables.TECH_DIR / "horowitz45.yaml")
    listed = {(s, p, f) for s in ("energy_pj", "area_um2") for p, entries in raw[s].items() for f in entries}
    assert listed == set(HOROWITZ_2014)
    sram = {e["size_bytes"]: e["value"] for e in raw["memory"]["sram_read_pj_per_64bit"]}
    assert sram == HOROWITZ_SRAM_64BIT
    dram = raw["memory"]["dram_pj_per_64bit"]
    assert (dram["low"], dram["high"]) == HOROWITZ_DRAM_64BIT


def test_horowitz45_memory_figures(h45):
    for size, pj in HOROWITZ_SRAM_64BIT.items():
        assert h45.sram_read_pj_per_bit(size) == pytest.approx(pj / 64)
    assert h45.dram_pj_per_bit("low") == pytest.approx(1300 / 64)
    assert h45.dram_pj_per_bit("high") == pytest.approx(2600 / 64)
    assert h45.dram_pj_per_bit() == pytest.approx(1950 / 64)
    assert h45.sram_bit_area_um2 == pytest.approx(0.346)
    assert 0 < h45.sram_array_efficiency <= 1
    # 1 MiB = 8 Mi bits x 0.346 um2 / 0.7 -> mm2
    assert h45.sram_area_mm2(1 << 20) == pytest.approx((1 << 23) * 0.346 / 0.7 * 1e-6)


@pytest.mark.parametrize("path", sorted(tables.TECH_DIR.glob("*.yaml")) + sorted(tables.TARGET_DIR.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_figure_names_a_source_that_exists(path):
    raw = _raw(path)
    sources = raw["sources"]
    assert sources and all(isinstance(v, str) and v.strip() for v in sources.values())
    figures = list(_figures(raw))
    assert figures
    for key, node in figures:
        assert node["source"] in sources, (path.name, key)
    assert raw["name"] == path.stem


# ------------------------------------------------------------------------------- derivation rules
def test_int_width_below_the_table_extrapolates_by_the_width_rule(h45):
    assert h45.energy_pj("mult", "int4") == pytest.approx(0.2 / 4)  # array multiplier ~ bits^2
    assert h45.energy_pj("add", "int4") == pytest.approx(0.03 / 2)  # adder ~ bits
    assert h45.area_um2("mult", "int4") == pytest.approx(282 / 4)
    assert h45.derivation("mult", "int4") == "int8 0.2 pJ x (4/8)^2 (array multiplier ~ bits^2)"
    assert h45.source_of("energy_pj", "mult", "int4") == "horowitz14"


def test_int_width_inside_the_table_interpolates_log_log(h45):
    slope = math.log(3.1 / 0.2) / math.log(32 / 8)
    assert h45.energy_pj("mult", "int16") == pytest.approx(0.2 * (16 / 8) ** slope)
    assert 0.2 < h45.energy_pj("mult", "int16") < 3.1
    # on the line through the two neighbours in log-log space: the geometric mean at the geometric-mean width
    assert h45.energy_pj("mult", "int16") == pytest.approx(math.sqrt(0.2 * 3.1))
    assert h45.derivation("mult", "int16") == "log-log between int8 0.2 pJ and int32 3.1 pJ"
    slope_add = math.log(0.1 / 0.05) / math.log(32 / 16)
    assert h45.energy_pj("add", "int24") == pytest.approx(0.05 * (24 / 16) ** slope_add)


def test_int_width_above_the_table_extrapolates_from_the_widest(h45):
    assert h45.energy_pj("mult", "int32") == pytest.approx(3.1)
    assert tables.WIDTH_EXPONENT == {"add": 1, "mult": 2}


@pytest.mark.parametrize("wide, narrow", [("int8", "int4"), ("int4", "int2"), ("int32", "int16"), ("int16", "int8")])
def test_halving_a_multiplier_width_lowers_energy_by_the_expected_ratio(h45, wide, narrow):
    ratio = h45.energy_pj("mult", wide) / h45.energy_pj("mult", narrow)
    if FORMATS[wide].bits <= 8:  # below the table: bits^2
        assert ratio == pytest.approx(4.0)
    else:  # between int8 and int32: the log-log slope of the two
        assert ratio == pytest.approx(2 ** (math.log(3.1 / 0.2) / math.log(4)))


def test_float_formats_follow_the_significand_rule(h45):
    assert h45.energy_pj("mult", "bf16") == pytest.approx(1.1 * (8 / 11) ** 2)
    assert h45.energy_pj("add", "bf16") == pytest.approx(0.4 * 8 / 11)
    assert h45.area_um2("mult", "bf16") == pytest.approx(1640 * (8 / 11) ** 2)
    assert h45.energy_pj("mult", "fp8") == pytest.approx(1.1 * (4 / 11) ** 2)
    assert h45.energy_pj("mult", "tf32") == pytest.approx(1.1)
    assert h45.energy_pj("add", "tf32") == pytest.approx(0.4)
    assert h45.derivation("mult", "bf16") == "fp16 1.1 pJ x (8/11)^2 (significand rule)"


def test_ternary_multiply_is_free_and_its_add_is_int2(h45):
    assert h45.energy_pj("mult", "ternary") == 0.0
    assert h45.area_um2("mult", "ternary") == 0.0
    assert "select/negate" in h45.derivation("mult", "ternary")
    assert h45.energy_pj("add", "ternary") == pytest.approx(h45.energy_pj("add", "int2")) == pytest.approx(0.03 / 4)


def test_bad_primitive_or_format(h45):
    _one_line_error(lambda: h45.energy_pj("mul", "int8"), "unknown primitive 'mul'", "did you mean 'mult'")
    _one_line_error(lambda: h45.energy_pj("mult", "int64"), "unknown number format 'int64'")
    _one_line_error(lambda: h45.dram_pj_per_bit("avg"), "low, mid", "high")


def test_sram_energy_per_bit_is_monotone_and_extrapolates(h45):
    sizes = [2 ** k for k in range(8, 26)]
    energies = [h45.sram_read_pj_per_bit(s) for s in sizes]
    assert all(a < b for a, b in itertools.pairwise(energies))
    first = math.log(20 / 10) / math.log(4)  # slope of the first segment
    assert h45.sram_read_pj_per_bit(2048) == pytest.approx(10 / 64 * (2048 / 8192) ** first)
    last = math.log(100 / 20) / math.log(32)
    assert h45.sram_read_pj_per_bit(4 << 20) == pytest.approx(100 / 64 * 4 ** last)


# --------------------------------------------------------------------------------- scaled technology
def test_scaled_tech_multiplies_every_figure_by_its_factors(h45):
    scaled = load_tech("horowitz45_7nm")
    raw = _raw(tables.TECH_DIR / "horowitz45_7nm.yaml")
    e, a = raw["scale"]["energy"], raw["scale"]["area"]
    assert raw["base"] == "horowitz45" and (scaled.node_nm, scaled.voltage_v) == (7, 0.7)
    for fmt in [*{f for _, _, f in HOROWITZ_2014}, "int4", "int16", "int2", "bf16", "fp8", "tf32", "ternary"]:
        for prim in ("add", "mult"):
            assert scaled.energy_pj(prim, fmt) == pytest.approx(h45.energy_pj(prim, fmt) * e)
            assert scaled.area_um2(prim, fmt) == pytest.approx(h45.area_um2(prim, fmt) * a)
    for size in (1024, 8192, 65536, 1 << 20, 1 << 24):
        assert scaled.sram_read_pj_per_bit(size) == pytest.approx(h45.sram_read_pj_per_bit(size) * e)
        assert scaled.sram_area_mm2(size) == pytest.approx(h45.sram_area_mm2(size) * a)
    for which in ("low", "mid", "high"):
        assert scaled.dram_pj_per_bit(which) == pytest.approx(h45.dram_pj_per_bit(which) * e)
    assert scaled.source_of("energy_pj", "mult", "int8") == "horowitz14"
    assert "stillmaker17" in scaled.derivation("mult", "int8") and "stillmaker17" in scaled.sources
    # the shipped factors are the ones worked out in the file's comment
    assert e == pytest.approx((0.1776 * 0.7 ** 2 - 0.09097 * 0.7 + 0.02447) / (1.103 * 0.9 ** 2 - 0.362 * 0.9 + 0.2767),
                              rel=1e-3)


def test_load_tech_caches_and_accepts_paths(h45):
    assert load_tech("horowitz45") is h45
    assert load_tech(tables.TECH_DIR / "horowitz45.yaml") is h45
    assert set(tech_names()) >= {"horowitz45", "horowitz45_7nm"}


# ------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("name", target_names())
def test_every_shipped_target_loads(name):
    t = load_target(name)
    assert t.name == name and t.kind in tables.KINDS and t.peak_macs_per_s
    for value in (t.clock_hz, t.vector_ops_per_s, t.special_ops_per_s, t.dram_bytes_per_s, t.dram_bytes,
                  t.onchip_bytes, t.attention_query_tile, *t.peak_macs_per_s.values()):
        assert value > 0
    for key in t.figure_sources:
        assert t.source_of(key) in t.sources
    if t.tech is not None:
        load_tech(t.tech)


def test_shipped_targets_include_the_four():
    assert set(target_names()) >= {"h100_sxm", "a100_sxm", "cpu_dev", "edge_int8"}


def test_gpu_datasheet_figures():
    h100 = load_target("h100_sxm")
    assert h100.macs_per_s("bf16") == pytest.approx(989.4e12 / 2)
    assert h100.macs_per_s("fp8") == pytest.approx(1978.9e12 / 2)
    assert h100.macs_per_s("tf32") == pytest.approx(494.7e12 / 2)
    assert h100.dram_bytes_per_s == pytest.approx(3.35e12)
    assert h100.special_ops_per_s == pytest.approx(16 * 132 * h100.clock_hz)
    a100 = load_target("a100_sxm")
    assert a100.macs_per_s("bf16") == pytest.approx(312e12 / 2)
    assert a100.macs_per_s("int8") == pytest.approx(624e12 / 2)
    assert a100.clock_hz == pytest.approx(1.41e9)
    _one_line_error(lambda: a100.macs_per_s("fp8"), "a100_sxm", "fp8", "a100_sxm.yaml")


def test_edge_accelerator():
    t = load_target("edge_int8")
    assert t.kind == "accelerator" and t.tech == "horowitz45" and t.clock_hz == pytest.approx(0.5e9)
    assert t.mac_array == {"rows": 16, "cols": 16, "format": "int8"}
    assert t.macs_per_s("int8") == pytest.approx(256 * 0.5e9)
    assert t.macs_per_s("int4") == pytest.approx(512 * 0.5e9)
    assert t.macs_per_s("int16") == pytest.approx(64 * 0.5e9)
    assert t.special_units == {"exp": 4, "div": 1, "sqrt": 1}
    assert t.special_ops_per_s == pytest.approx(6 * 0.5e9)
    assert t.vector_ops_per_s == pytest.approx(16 * 0.5e9)
    assert t.onchip_bytes == 512 * 1024 + 128 * 1024
    assert t.dram_bytes_per_s == pytest.approx(4266e6 * 4)
    assert t.attention_query_tile == 16
    msg = _one_line_error(lambda: t.macs_per_s("bf16"), "edge_int8.yaml", "bf16", "int4, int8, int16", "--format int8")
    assert msg.startswith("target edge_int8 (")


def test_cpu_dev_is_measured():
    t = load_target("cpu_dev")
    assert t.kind == "cpu" and t.macs_per_s("fp32") > 1e9
    assert "measure_cpu.py" in t.sources[t.source_of("peak_macs_per_s.fp32")]


def test_loading_writes_nothing(tmp_path):
    (tmp_path / "tech").mkdir(), (tmp_path / "targets").mkdir()
    for d in (tables.TECH_DIR, tables.TARGET_DIR):
        for p in d.glob("*.yaml"):
            (tmp_path / d.name / p.name).write_text(p.read_text())
    dirs = (tables.TECH_DIR, tables.TARGET_DIR, tmp_path / "tech", tmp_path / "targets")

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for d in dirs for p in d.iterdir()}
    before = snapshot()
    for p in (tmp_path / "tech").iterdir():  # fresh paths: read for real, not from the cache
        load_tech(p)
    for p in (tmp_path / "targets").iterdir():
        load_target(p)
    assert snapshot() == before


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_names_suggest_the_closest():
    _one_line_error(lambda: load_target("h100_sx"), "unknown target 'h100_sx'", "did you mean 'h100_sxm'", "edge_int8")
    _one_line_error(lambda: load_tech("horowitz54"), "unknown technology", "did you mean 'horowitz45'")
    _one_line_error(lambda: load_target("nowhere/x.yaml"), "nowhere/x.yaml", "not found")


def _edited(tmp_path: Path, name: str, edit, directory=tables.TARGET_DIR) -> Path:
    data = _raw(directory / f"{name}.yaml")
    edit(data)
    path = tmp_path / f"{name}_{len(list(tmp_path.iterdir()))}.yaml"  # a new file each time
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nkind: gpu\npeak_macs_per_s: {bf16: {value: 1\n")
    msg = _one_line_error(lambda: load_target(path), str(path), "line ", "YAML")
    assert "line 3" in msg or "line 4" in msg
    path.write_text("- just\n- a list\n")
    _one_line_error(lambda: load_target(path), str(path), "mapping")


def test_missing_key(tmp_path):
    path = _edited(tmp_path, "h100_sxm", lambda d: d.pop("dram_bytes_per_s"))
    _one_line_error(lambda: load_target(path), f"{path}: dram_bytes_per_s: missing")
    path = _edited(tmp_path, "horowitz45", lambda d: d["memory"].pop("sram_bit_area_um2"), tables.TECH_DIR)
    _one_line_error(lambda: load_tech(path), f"{path}: memory.sram_bit_area_um2: missing")


def test_unknown_key(tmp_path):
    path = _edited(tmp_path, "h100_sxm", lambda d: d.update(dram_bw=d.pop("dram_bytes_per_s")))
    _one_line_error(lambda: load_target(path), f"{path}: dram_bw:", "unknown key 'dram_bw'")
    path = _edited(tmp_path, "horowitz45", lambda d: d["energy_pj"]["mult"].update(int12=d["energy_pj"]["mult"]["int8"]),
                   tables.TECH_DIR)
    assert load_tech(path).energy_pj("mult", "int12") == pytest.approx(0.2)  # any format name is a valid key
    path = _edited(tmp_path, "horowitz45", lambda d: d["energy_pj"].update(div=d["energy_pj"]["mult"]), tables.TECH_DIR)
    _one_line_error(lambda: load_tech(path), f"{path}: energy_pj.div:", "unknown key 'div'")


def test_non_numeric_value(tmp_path):
    path = _edited(tmp_path, "h100_sxm", lambda d: d["peak_macs_per_s"]["bf16"].update(value="fast"))
    msg = _one_line_error(lambda: load_target(path))
    assert msg == f"{path}: peak_macs_per_s.bf16.value: expected a positive number, got 'fast'"
    path = _edited(tmp_path, "h100_sxm", lambda d: d["clock_ghz"].update(value=-1))
    _one_line_error(lambda: load_target(path), f"{path}: clock_ghz.value: expected a positive number, got -1")
    path = tmp_path / "exponent.yaml"
    path.write_text((tables.TARGET_DIR / "h100_sxm.yaml").read_text().replace("3.35e+12", "3.35e12"))
    _one_line_error(lambda: load_target(path), "dram_bytes_per_s.value", "3.35e+12")
    path = _edited(tmp_path, "horowitz45", lambda d: d["memory"]["sram_array_efficiency"].update(value=1.5),
                   tables.TECH_DIR)
    _one_line_error(lambda: load_tech(path), "memory.sram_array_efficiency.value", "no larger than 1.0")


def test_missing_or_unknown_source(tmp_path):
    path = _edited(tmp_path, "h100_sxm", lambda d: d["clock_ghz"].pop("source"))
    _one_line_error(lambda: load_target(path), f"{path}: clock_ghz.source: missing")
    path = _edited(tmp_path, "horowitz45", lambda d: d["energy_pj"]["add"]["int8"].pop("source"), tables.TECH_DIR)
    _one_line_error(lambda: load_tech(path), f"{path}: energy_pj.add.int8.source: missing")
    path = _edited(tmp_path, "h100_sxm", lambda d: d["dram_bytes"].update(source="nvidia_h10"))
    _one_line_error(lambda: load_target(path), f"{path}: dram_bytes.source:", "did you mean 'nvidia_h100'")


def test_file_without_sources_accepts_bare_numbers(tmp_path):
    def strip(d):
        d.pop("sources")
        for key in ("energy_pj", "area_um2"):
            for prim in d[key].values():
                for fmt, fig in prim.items():
                    prim[fmt] = fig["value"]
        for entry in d["memory"]["sram_read_pj_per_64bit"]:
            entry.pop("source")
        d["memory"]["dram_pj_per_64bit"].pop("source")
        d["memory"]["sram_bit_area_um2"] = 0.3
        d["memory"]["sram_array_efficiency"] = {"value": 0.5}
    tech = load_tech(_edited(tmp_path, "horowitz45", strip, tables.TECH_DIR))
    assert tech.energy_pj("mult", "int8") == pytest.approx(0.2) and tech.source_of("energy_pj", "mult", "int8") == ""
    assert tech.sram_area_mm2(1000) == pytest.approx(8000 * 0.3 / 0.5 * 1e-6)


def test_accelerator_rules(tmp_path):
    path = _edited(tmp_path, "edge_int8", lambda d: d["clock_ghz"].update(value=1.0))
    _one_line_error(lambda: load_target(path), "peak_macs_per_s.int8", "rows x cols x clock")
    path = _edited(tmp_path, "edge_int8", lambda d: d.update(tech=None))
    _one_line_error(lambda: load_target(path), f"{path}: tech:", "accelerator")
    path = _edited(tmp_path, "edge_int8", lambda d: d.update(onchip_bytes={"value": 1, "source": "design"}))
    _one_line_error(lambda: load_target(path), f"{path}: onchip_bytes:", "unknown key")
    path = _edited(tmp_path, "edge_int8", lambda d: d.update(tech="horowitz54"))
    _one_line_error(lambda: load_target(path), f"{path}: tech: unknown technology", "did you mean 'horowitz45'")


def test_scaled_tech_cycle_is_an_error(tmp_path):
    path = tmp_path / "loop.yaml"
    text = (tables.TECH_DIR / "horowitz45_7nm.yaml").read_text()
    path.write_text(text.replace("name: horowitz45_7nm", "name: loop").replace("base: horowitz45", "base: loop.yaml"))
    cwd = os.getcwd()
    _one_line_error(lambda: load_tech(path), "base", "cycle")
    assert os.getcwd() == cwd
