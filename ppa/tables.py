"""Technology tables and hardware targets: the figures a first-order energy/latency/area model prices with.

The figures are data (`ppa/tech/*.yaml`, `ppa/targets/*.yaml`), each with its source; this module reads
and validates them and holds the only formulas: how a figure the tables do not list is derived.

    from ppa.tables import load_tech, load_target, parse_format
    tech = load_tech("horowitz45")          # or a path: load_tech("my_node.yaml")
    tech.energy_pj("mult", "int4"), tech.derivation("mult", "int4"), tech.sram_read_pj_per_bit(65536)
    load_target("h100_sxm").macs_per_s("bf16")

Number formats (`parse_format`): fp32, tf32, fp16, bf16, fp8 (e4m3), intN (N = 2..32) and ternary.
`bits` is the storage width (tf32 is stored as fp32; ternary weights take 2 bits, bitnet.cpp's I2_S
packing); `precision` is the significand width with the hidden bit (fp32 24, tf32 11, fp16 11, bf16 8,
fp8 4), the width itself for ints, 2 for ternary.

Derivation rules for `Tech.energy_pj(prim, fmt)` and `Tech.area_um2(prim, fmt)`, prim "add" or "mult"
(the tables hold only cited figures; these rules are ours, and `Tech.derivation` states which applied):
- tabulated: the table's value.
- an int width not tabulated: power-law (log-log) interpolation between the two nearest tabulated widths
  of that primitive; outside the tabulated range, from the nearest entry with exponent 1 for add (a
  ripple/prefix adder grows with the bits) and 2 for mult (an array multiplier has bits^2 cells).
  E.g. int4 mult = int8 mult x (4/8)^2.
- ternary: mult is 0 (a multiply by -1/0/+1 is a select/negate folded into the adder that follows);
  add is priced as int2 by the int rule.
- a float format not tabulated (bf16, tf32, fp8): from the tabulated float format of the nearest
  significand precision by the significand rule, mult ~ precision^2 (the significand multiplier array)
  and add ~ precision (alignment shifter and significand adder dominate). E.g. bf16 mult = fp16 mult x
  (8/11)^2; tf32 has fp16's precision, so it costs what fp16 costs.
Memory: `sram_read_pj_per_bit(size)` interpolates the 64-bit SRAM read energies / 64 log-log in capacity,
extrapolating with the slope of the first/last segment; `dram_pj_per_bit("low"|"mid"|"high")` is the
DRAM access energy / 64 (mid = mean of low and high); `sram_area_mm2(size)` = bits x 6T bit-cell area /
array efficiency.

A scaled technology file names `base: <tech>` and `scale: {energy, area, rule, source}` instead of the
tables: every energy of the base (logic and memory) is multiplied by `energy`, every area (logic and the
bit cell) by `area`.

Schemas: the shipped files are the examples (every key is required unless noted there); validation is
strict, and errors are one-line `UserError`s naming the file and the dotted key. A figure is {value:
<positive number>, source: <key of the file's `sources`>}; in a file without `sources` a bare number
will do. Targets give dense MACs per second by format (1 MAC = 2 FLOP). An accelerator also gives
mac_array {rows, cols, format, source}, special_units {exp, div, sqrt, source}, vector_lanes and
sram_bytes.{weights, activations}, and its vector_ops_per_s (clock x lanes), special_ops_per_s
(clock x units) and onchip_bytes (sum of sram_bytes) are derived, not written.

Citations: horowitz45 is M. Horowitz, ISSCC 2014 (45 nm, 0.9 V) with Intel's 45 nm 6T cell (Mistry et
al., IEDM 2007); horowitz45_7nm scales it with Stillmaker & Baas, Integration 58 (2017); the targets
cite vendor datasheets; each file names the source of each figure and what was checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from errors import UserError, unknown_name_message

PACKAGE_DIR = Path(__file__).resolve().parent
TECH_DIR = PACKAGE_DIR / "tech"
TARGET_DIR = PACKAGE_DIR / "targets"
PRIMITIVES = ("add", "mult")
# Exponents of the width rules: extrapolating int widths, and the significand rule for floats.
WIDTH_EXPONENT = {"add": 1, "mult": 2}


# ---------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # 'int' | 'float' | 'ternary'
    bits: int  # storage bits
    precision: int  # significand bits incl. the hidden one (floats); the width (ints); 2 (ternary)


_NAMED_FORMATS = {
    "fp32": Format("fp32", "float", 32, 24),
    "tf32": Format("tf32", "float", 32, 11),  # 10 stored significand bits; stored in fp32 containers
    "fp16": Format("fp16", "float", 16, 11),
    "bf16": Format("bf16", "float", 16, 8),
    "fp8": Format("fp8", "float", 8, 4),  # e4m3
    "ternary": Format("ternary", "ternary", 2, 2),  # {-1, 0, +1} at 2 bits a weight (I2_S packing)
}
FORMATS: dict[str, Format] = {**_NAMED_FORMATS, **{f"int{n}": Format(f"int{n}", "int", n, n) for n in range(2, 33)}}


def parse_format(name: str) -> Format:
    """The `Format` called `name` (case-insensitive); UserError for an unknown name."""
    fmt = FORMATS.get(str(name).strip().lower())
    if fmt is None:
        raise UserError(unknown_name_message("number format", str(name), [*_NAMED_FORMATS, "intN (N = 2..32)"]))
    return fmt


def _format_order(name: str) -> tuple:
    f = FORMATS[name]
    return ({"int": 0, "ternary": 0, "float": 1}[f.kind], f.bits, f.precision)


# ------------------------------------------------------------------------------ reading and checking
def _shown(path: Path) -> str:
    """The path as a user would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{_shown(path)}: cannot read it ({e.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = (getattr(e, "problem", None) or str(e)).replace("\n", " ")
        raise UserError(f"{_shown(path)}:{line} not valid YAML ({problem}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(f"{_shown(path)}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


class _Checker:
    """Reads one file's keys, raising one-line UserErrors that name the file and the dotted key."""

    def __init__(self, path: Path, data: dict):
        self.file = _shown(path)
        sources = data.get("sources")
        if sources is not None and not (isinstance(sources, dict) and all(
                isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in sources.items())):
            self.fail("sources", "expected a mapping of short keys to citations (non-empty strings)")
        self.sources: dict[str, str] = dict(sources or {})

    def fail(self, key: str, what: str):
        raise UserError(f"{self.file}: {key}: {what}")

    def keys(self, node, key: str, required: tuple, optional: tuple = ()) -> dict:
        """`node` as a mapping with every `required` key and no key outside required + optional."""
        where = key or "top level"
        if not isinstance(node, dict):
            self.fail(where, f"expected a mapping, got {type(node).__name__} {node!r}")
        for k in node:
            if k not in required and k not in optional:
                self.fail(f"{key}.{k}" if key else str(k), unknown_name_message("key", str(k), [*required, *optional]))
        for k in required:
            if k not in node:
                self.fail(f"{key}.{k}" if key else k, "missing; add it (see the schema in ppa/tables.py)")
        return node

    def number(self, value, key: str, integer: bool = False, upper: float | None = None) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if ok and integer and value != int(value):
            ok = False
        if ok and upper is not None and value > upper:
            ok = False
        if not ok:
            kind = "a positive integer" if integer else "a positive number"
            bound = f" no larger than {upper}" if upper is not None else ""
            hint = ""
            if isinstance(value, str) and "e" in value.lower():
                try:
                    float(value)  # PyYAML follows YAML 1.1: '1e12' without the exponent's sign is text
                    hint = f" (text to YAML: write the exponent with a sign, e.g. {value.lower().replace('e', 'e+', 1)})"
                except ValueError:
                    pass
            self.fail(key, f"expected {kind}{bound}, got {value!r}{hint}")
        return int(value) if integer else float(value)

    def source(self, node: dict, key: str) -> str | None:
        if "source" not in node:
            if self.sources:
                self.fail(f"{key}.source", "missing; every figure names a key of `sources`")
            return None
        src = node["source"]
        if not isinstance(src, str) or src not in self.sources:
            self.fail(f"{key}.source", unknown_name_message("source", str(src), self.sources) + " (keys of `sources`)")
        return src

    def figure(self, node, key: str, integer: bool = False, upper: float | None = None) -> tuple[float, str | None]:
        """A {value, source} figure (a bare number only in a file without sources): (value, source key)."""
        if not isinstance(node, dict):
            if self.sources:
                self.fail(key, f"expected {{value: ..., source: ...}}, got {node!r}")
            return self.number(node, key, integer, upper), None
        self.keys(node, key, ("value",), ("source",))
        return self.number(node["value"], f"{key}.value", integer, upper), self.source(node, key)

    def text(self, node, key: str) -> str:
        if not isinstance(node, str) or not node.strip():
            self.fail(key, f"expected a non-empty string, got {node!r}")
        return node

    def resolve(self, key: str, call):
        """`call()`, with a UserError it raises re-raised under this file and `key`."""
        try:
            return call()
        except UserError as e:
            self.fail(key, str(e))

    def format_name(self, name, key: str, kinds=("int", "float", "ternary")) -> str:
        fmt = self.resolve(key, lambda: parse_format(name))
        if fmt.kind not in kinds:
            self.fail(key, f"{fmt.name} is not a {' or '.join(kinds)} format")
        return fmt.name


def _resolve(name_or_path: str | Path, directory: Path, what: str, names: list[str], relative_to: Path | None = None) -> Path:
    """A shipped file by name, else a path (relative to `relative_to` when given and found there)."""
    text = str(name_or_path)
    if text in names:
        return directory / f"{text}.yaml"
    candidates = [Path(text)] + ([relative_to / text] if relative_to is not None else [])
    for p in candidates:
        if p.is_file():
            return p.resolve()
    if text.endswith((".yaml", ".yml")) or "/" in text:
        raise UserError(f"{what} file '{text}' not found; give a path to a YAML file or one of: {', '.join(names)}")
    raise UserError(unknown_name_message(what, text, names) + " (or a path to a YAML file)")


# ----------------------------------------------------------------------------------------- technology
def tech_names() -> list[str]:
    return sorted(p.stem for p in TECH_DIR.glob("*.yaml"))


def _power_law(x: float, x0: float, y0: float, exponent: float) -> float:
    return y0 * (x / x0) ** exponent


def _loglog(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise power law through sorted (x, y) points; the end segments' slopes extrapolate."""
    if len(points) == 1:
        return points[0][1]
    i = 0
    while i < len(points) - 2 and x > points[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = points[i], points[i + 1]
    return _power_law(x, x0, y0, math.log(y1 / y0) / math.log(x1 / x0))


_UNITS = {"energy_pj": "pJ", "area_um2": "um2"}


class Tech:
    """One technology's tables (see the module docstring for the lookup rules)."""

    def __init__(self, path: Path, chain: tuple = ()):
        self.path = Path(path).resolve()
        data = _read_yaml(self.path)
        c = _Checker(self.path, data)
        base_keys = ("name", "description", "node_nm", "voltage_v")
        if "base" in data:
            c.keys(data, "", (*base_keys, "base", "scale"), ("sources",))
        else:
            c.keys(data, "", (*base_keys, "energy_pj", "area_um2", "memory"), ("sources",))
        self.name = c.text(data["name"], "name")
        self.description = c.text(data["description"], "description")
        self.node_nm = c.number(data["node_nm"], "node_nm")
        self.voltage_v = c.number(data["voltage_v"], "voltage_v")
        self.sources = dict(c.sources)
        self.scale: dict | None = None
        if "base" in data:
            self._load_scaled(c, data, chain)
        else:
            self._load_tables(c, data)

    def _load_tables(self, c: _Checker, data: dict):
        # _table[section][prim][fmt] = (value, source key)
        self._table: dict = {}
        for section in ("energy_pj", "area_um2"):
            node = c.keys(data[section], section, PRIMITIVES)
            self._table[section] = {}
            for prim in PRIMITIVES:
                entries = c.keys(node[prim], f"{section}.{prim}", (), tuple(FORMATS))
                self._table[section][prim] = {
                    c.format_name(f, f"{section}.{prim}.{f}", ("int", "float")): c.figure(v, f"{section}.{prim}.{f}")
                    for f, v in entries.items()}
        mem = c.keys(data["memory"], "memory",
                     ("sram_read_pj_per_64bit", "dram_pj_per_64bit", "sram_bit_area_um2", "sram_array_efficiency"))
        reads = mem["sram_read_pj_per_64bit"]
        if not isinstance(reads, list) or len(reads) < 2:
            c.fail("memory.sram_read_pj_per_64bit", "expected a list of at least two {size_bytes, value, source}")
        self._sram = []  # (size_bytes, pJ per 64-bit read, source)
        for i, entry in enumerate(reads):
            key = f"memory.sram_read_pj_per_64bit[{i}]"
            c.keys(entry, key, ("size_bytes", "value"), ("source",))
            self._sram.append((c.number(entry["size_bytes"], f"{key}.size_bytes", integer=True),
                               c.number(entry["value"], f"{key}.value"), c.source(entry, key)))
        self._sram.sort()
        if len({s for s, _, _ in self._sram}) != len(self._sram):
            c.fail("memory.sram_read_pj_per_64bit", "two entries have the same size_bytes")
        dram = c.keys(mem["dram_pj_per_64bit"], "memory.dram_pj_per_64bit", ("low", "high"), ("source",))
        low, high = (c.number(dram[k], f"memory.dram_pj_per_64bit.{k}") for k in ("low", "high"))
        if low > high:
            c.fail("memory.dram_pj_per_64bit", f"low ({low}) is above high ({high})")
        self._dram = {"low": low, "high": high, "source": c.source(dram, "memory.dram_pj_per_64bit")}
        self._bit_area = c.figure(mem["sram_bit_area_um2"], "memory.sram_bit_area_um2")
        self._efficiency = c.figure(mem["sram_array_efficiency"], "memory.sram_array_efficiency", upper=1.0)

    def _load_scaled(self, c: _Checker, data: dict, chain: tuple):
        base_path = c.resolve("base", lambda: _resolve(c.text(data["base"], "base"), TECH_DIR, "technology",
                                                         tech_names(), relative_to=self.path.parent))
        if base_path in chain or base_path == self.path:
            c.fail("base", f"'{data['base']}' leads back to this file (a scaling cycle)")
        base = Tech(base_path, chain + (self.path,))
        s = c.keys(data["scale"], "scale", ("energy", "area", "rule"), ("source",))
        self.scale = {"energy": c.number(s["energy"], "scale.energy"), "area": c.number(s["area"], "scale.area"),
                      "rule": c.text(s["rule"], "scale.rule"), "source": c.source(s, "scale"), "base": base.name}
        e, a = self.scale["energy"], self.scale["area"]
        self.sources = {**base.sources, **self.sources}
        self._table = {section: {prim: {f: (v * factor, src) for f, (v, src) in entries.items()}
                                 for prim, entries in base._table[section].items()}
                       for section, factor in (("energy_pj", e), ("area_um2", a))}
        self._sram = [(size, v * e, s_) for size, v, s_ in base._sram]
        self._dram = {"low": base._dram["low"] * e, "high": base._dram["high"] * e, "source": base._dram["source"]}
        self._bit_area = (base._bit_area[0] * a, base._bit_area[1])
        self._efficiency = base._efficiency  # a fraction of the macro: scaling leaves it as it is

    # -- arithmetic
    def _lookup(self, section: str, prim: str, fmt_name: str) -> tuple[float, str, list]:
        """(value, one-line account of how it was found, source keys used)."""
        if prim not in PRIMITIVES:
            raise UserError(unknown_name_message("primitive", str(prim), PRIMITIVES))
        fmt = parse_format(fmt_name)
        table, unit = self._table[section][prim], _UNITS[section]
        if fmt.name in table:
            value, src = table[fmt.name]
            how = f"tabulated ({src or 'no source'})"
            if self.scale:  # the derived lines below quote this technology's (already scaled) entries
                factor = self.scale[section.split("_")[0]]
                how = f"{self.scale['base']} {how} x {factor:.4g} ({self.scale['rule']}, {self.scale['source'] or 'no source'})"
            return value, how, [src]
        if fmt.kind == "ternary":
            if prim == "mult":
                return 0.0, "0: a multiply by -1/0/+1 is a select/negate folded into the adder", []
            value, how, srcs = self._lookup(section, prim, "int2")
            return value, f"as int2: {how}", srcs
        kind = fmt.kind
        points = sorted(((FORMATS[f].precision, v, f, s) for f, (v, s) in table.items() if FORMATS[f].kind == kind),
                        key=lambda t: t[0])
        if not points:
            raise UserError(f"{_shown(self.path)}: {section}.{prim}: has no {kind} entry to derive {fmt.name} from; add one")
        exponent = WIDTH_EXPONENT[prim]
        x = fmt.precision
        if kind == "float":  # significand rule from the nearest precision (ties: the narrower format)
            p0, v0, f0, s0 = min(points, key=lambda t: (abs(t[0] - x), t[0]))
            if x == p0:
                return v0, f"as {f0} {v0:.4g} {unit} (same significand precision, {x} bits)", [s0]
            value = _power_law(x, p0, v0, exponent)
            return value, f"{f0} {v0:.4g} {unit} x ({x}/{p0})^{exponent} (significand rule)", [s0]
        below = [t for t in points if t[0] < x]
        above = [t for t in points if t[0] > x]
        if below and above:
            (w0, v0, f0, s0), (w1, v1, f1, s1) = below[-1], above[0]
            value = _loglog(x, [(w0, v0), (w1, v1)])
            return value, f"log-log between {f0} {v0:.4g} {unit} and {f1} {v1:.4g} {unit}", [s0, s1]
        w0, v0, f0, s0 = above[0] if above else below[-1]
        why = "adder ~ bits" if prim == "add" else "array multiplier ~ bits^2"
        value = _power_law(x, w0, v0, exponent)
        return value, f"{f0} {v0:.4g} {unit} x ({x}/{w0})^{exponent} ({why})", [s0]

    def energy_pj(self, prim: str, fmt: str) -> float:
        return self._lookup("energy_pj", prim, fmt)[0]

    def area_um2(self, prim: str, fmt: str) -> float:
        return self._lookup("area_um2", prim, fmt)[0]

    def derivation(self, prim: str, fmt: str, section: str = "energy_pj") -> str:
        """How energy_pj(prim, fmt) (or area_um2 with section="area_um2") is found, in one line."""
        return self._lookup(section, prim, fmt)[1]

    def source_of(self, section: str, prim: str | None = None, fmt: str | None = None) -> str:
        """The `sources` key(s) behind a figure, comma-joined when a derivation uses two; for a scaled
        technology, the base figure's key (the factor's key is `scale["source"]`).
        section: energy_pj | area_um2 (with prim, fmt) or memory (with prim = the memory key)."""
        if section in _UNITS:
            keys = self._lookup(section, prim, fmt)[2]
        elif section == "memory":
            keys = {"sram_read_pj_per_64bit": [s for _, _, s in self._sram], "dram_pj_per_64bit": [self._dram["source"]],
                    "sram_bit_area_um2": [self._bit_area[1]], "sram_array_efficiency": [self._efficiency[1]]}.get(prim)
            if keys is None:
                raise UserError(unknown_name_message("memory figure", str(prim), ["sram_read_pj_per_64bit",
                                "dram_pj_per_64bit", "sram_bit_area_um2", "sram_array_efficiency"]))
        else:
            raise UserError(unknown_name_message("table section", str(section), [*_UNITS, "memory"]))
        return ", ".join(dict.fromkeys(k for k in keys if k))

    # -- memory
    def sram_read_pj_per_bit(self, size_bytes: float) -> float:
        if not size_bytes > 0:
            raise ValueError(f"SRAM size must be positive, got {size_bytes}")
        return _loglog(size_bytes, [(s, v / 64) for s, v, _ in self._sram])

    def dram_pj_per_bit(self, which: str = "mid") -> float:
        if which not in ("low", "mid", "high"):
            raise UserError(unknown_name_message("DRAM energy estimate", str(which), ["low", "mid", "high"]))
        if which == "mid":
            return (self._dram["low"] + self._dram["high"]) / 2 / 64
        return self._dram[which] / 64

    @property
    def sram_bit_area_um2(self) -> float:
        return self._bit_area[0]

    @property
    def sram_array_efficiency(self) -> float:
        return self._efficiency[0]

    def sram_area_mm2(self, size_bytes: float) -> float:
        return size_bytes * 8 * self.sram_bit_area_um2 / self.sram_array_efficiency * 1e-6

    def __repr__(self) -> str:
        return f"Tech({self.name!r}, {_shown(self.path)!r})"


def _cached(cache: dict, path: Path, read):
    """`read(path)`, cached by resolved path; a file changed since (mtime or size) is read again."""
    stamp = (path.stat().st_mtime_ns, path.stat().st_size)
    if path not in cache or cache[path][0] != stamp:
        cache[path] = (stamp, read(path))
    return cache[path][1]


_TECH_CACHE: dict[Path, tuple] = {}


def load_tech(name_or_path: str | Path) -> Tech:
    """A technology by name (`tech_names()`) or by path to a YAML file; cached by resolved path."""
    return _cached(_TECH_CACHE, _resolve(name_or_path, TECH_DIR, "technology", tech_names()).resolve(), Tech)


# ------------------------------------------------------------------------------------------- targets
def target_names() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.yaml"))


KINDS = ("gpu", "cpu", "accelerator")
_FIGURES = ("clock_ghz", "vector_ops_per_s", "special_ops_per_s", "dram_bytes_per_s", "dram_bytes", "onchip_bytes",
            "attention_query_tile")
_DERIVED_FOR_ACCELERATOR = ("vector_ops_per_s", "special_ops_per_s", "onchip_bytes")
_ACCELERATOR_KEYS = ("mac_array", "special_units", "vector_lanes", "sram_bytes")


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    kind: str
    description: str
    tech: str | None
    clock_hz: float
    peak_macs_per_s: dict  # format name -> dense MACs per second
    vector_ops_per_s: float
    special_ops_per_s: float
    dram_bytes_per_s: float
    dram_bytes: float
    onchip_bytes: float
    attention_query_tile: int
    mac_array: dict | None
    special_units: dict | None
    vector_lanes: int | None
    sram_bytes: dict | None
    sources: dict
    figure_sources: dict  # dotted key -> source key (None in a file without sources)

    def source_of(self, key: str) -> str | None:
        """The `sources` key of a figure, by its dotted key in the file (e.g. "peak_macs_per_s.bf16")."""
        if key not in self.figure_sources:
            raise UserError(unknown_name_message(f"figure of target {self.name}", key, self.figure_sources))
        return self.figure_sources[key]

    def macs_per_s(self, fmt: str) -> float:
        """Dense MACs per second in `fmt`; a UserError (never a fallback) when the target lacks it."""
        name = parse_format(fmt).name
        if name not in self.peak_macs_per_s:
            have = sorted(self.peak_macs_per_s, key=_format_order)
            price_at = (self.mac_array or {}).get("format") or ("bf16" if "bf16" in have else have[0])
            raise UserError(
                f"target {self.name} ({_shown(self.path)}) has no peak_macs_per_s entry for {name}; it runs "
                f"{', '.join(have)}: quantize the model (e.g. --linear_variant quantized) or price it at "
                f"--format {price_at}, or add the entry to the file")
        return self.peak_macs_per_s[name]


def _read_target(path: Path) -> Target:
    data = _read_yaml(path)
    c = _Checker(path, data)
    kind = data.get("kind")
    if kind not in KINDS:
        c.fail("kind", unknown_name_message("kind", str(kind), KINDS) if "kind" in data else "missing; add it")
    accel = kind == "accelerator"
    figures = tuple(k for k in _FIGURES if not (accel and k in _DERIVED_FOR_ACCELERATOR))
    required = ("name", "description", "kind", "tech", "peak_macs_per_s", *figures) + (_ACCELERATOR_KEYS if accel else ())
    c.keys(data, "", required, ("sources",) + (() if accel else _ACCELERATOR_KEYS))
    srcs: dict = {}

    def fig(key: str, node=None, **kw) -> float:
        value, srcs[key] = c.figure(data[key] if node is None else node, key, **kw)
        return value

    tech = data["tech"]
    if tech is not None:
        c.resolve("tech", lambda: _resolve(c.text(tech, "tech"), TECH_DIR, "technology", tech_names(),
                                           relative_to=Path(path).parent))
    elif accel:
        c.fail("tech", "an accelerator needs a technology for its datapath's energy and area; name one")
    macs_node = c.keys(data["peak_macs_per_s"], "peak_macs_per_s", (), tuple(FORMATS))
    if not macs_node:
        c.fail("peak_macs_per_s", "has no entry; add at least one format")
    macs = {c.format_name(f, f"peak_macs_per_s.{f}"): fig(f"peak_macs_per_s.{f}", v) for f, v in macs_node.items()}
    clock_hz = fig("clock_ghz") * 1e9
    values = {k: fig(k, integer=k == "attention_query_tile") for k in figures if k != "clock_ghz"}
    mac_array = special_units = sram_bytes = None
    lanes = None
    if "mac_array" in data:
        m = c.keys(data["mac_array"], "mac_array", ("rows", "cols", "format"), ("source",))
        mac_array = {"rows": int(c.number(m["rows"], "mac_array.rows", integer=True)),
                     "cols": int(c.number(m["cols"], "mac_array.cols", integer=True)),
                     "format": c.format_name(m["format"], "mac_array.format")}
        srcs["mac_array"] = c.source(m, "mac_array")
    if "special_units" in data:
        u = c.keys(data["special_units"], "special_units", ("exp", "div", "sqrt"), ("source",))
        special_units = {k: int(c.number(u[k], f"special_units.{k}", integer=True)) for k in ("exp", "div", "sqrt")}
        srcs["special_units"] = c.source(u, "special_units")
    if "vector_lanes" in data:
        lanes = int(fig("vector_lanes", integer=True))
    if "sram_bytes" in data:
        s = c.keys(data["sram_bytes"], "sram_bytes", ("weights", "activations"))
        sram_bytes = {k: fig(f"sram_bytes.{k}", s[k], integer=True) for k in ("weights", "activations")}
    if accel:
        # One owner per figure: an accelerator's rates follow from its clock and its units.
        values["vector_ops_per_s"] = clock_hz * lanes
        values["special_ops_per_s"] = clock_hz * sum(special_units.values())
        values["onchip_bytes"] = sum(sram_bytes.values())
        fmt = mac_array["format"]
        expected = mac_array["rows"] * mac_array["cols"] * clock_hz
        if fmt not in macs or not math.isclose(macs[fmt], expected, rel_tol=1e-3):
            c.fail(f"peak_macs_per_s.{fmt}", f"expected rows x cols x clock = {expected:.6g} for the array's own "
                                             f"format, got {macs.get(fmt)}; make the two agree")
    return Target(
        name=c.text(data["name"], "name"), path=Path(path).resolve(), kind=kind,
        description=c.text(data["description"], "description"), tech=tech, clock_hz=clock_hz,
        peak_macs_per_s=macs, vector_ops_per_s=values["vector_ops_per_s"],
        special_ops_per_s=values["special_ops_per_s"], dram_bytes_per_s=values["dram_bytes_per_s"],
        dram_bytes=values["dram_bytes"], onchip_bytes=values["onchip_bytes"],
        attention_query_tile=int(values["attention_query_tile"]),
        mac_array=mac_array, special_units=special_units, vector_lanes=lanes, sram_bytes=sram_bytes,
        sources=dict(c.sources), figure_sources=srcs)


_TARGET_CACHE: dict[Path, tuple] = {}


def load_target(name_or_path: str | Path) -> Target:
    """A hardware target by name (`target_names()`) or by path to a YAML file; cached by resolved path."""
    return _cached(_TARGET_CACHE, _resolve(name_or_path, TARGET_DIR, "target", target_names()).resolve(), _read_target)
