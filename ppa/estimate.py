"""Energy, latency and area of a configuration: variations/cost.py's counts priced on a target.

One place counts (the model's `cost(T)`), this file prices. Per component and in total:

* energy per token (pJ), compute and memory apart: every counted operation is composed from adds and
  multiplies in its number format (ppa/functions.py) and priced by the technology table
  (ppa/tables.py); every byte moved is priced per bit at the memory level it comes from.
* latency (us) by a roofline on the target: per component (one layer's attention, one layer's MLP,
  ...) the larger of its compute time and its memory time, then summed over components. Within a
  component compute and memory overlap fully; components run one after another; the unit classes
  of one component (MAC array or tensor cores, vector lanes, special-function units) do not overlap
  (conservative: a kernel that hides the exponentials behind the matrix products takes the max).
  Kernel launches, synchronisation and on-chip bandwidth are not modelled.
* area (mm^2), accelerator targets only: the MAC array, the special-function units the configuration
  needs (sized by their compositions), the vector lanes and the SRAM; and separately the SRAM that
  would hold every weight on chip. Where the attention normaliser has a stored gate-level synthesis
  at the format's integer width (hardware/synthesised/, `python -m hardware.rtl docs`) and that unit
  has an exponential (softmax, softermax, consmax), each exp unit is that synthesised normaliser unit instead (area `normaliser_units`, scaled from 180 nm to the
  technology's node by the square of the node ratio; its delay is noted in cycles of the clock).

Two phases, batch B, context T:

* decode: one new token per sequence at context T (the last position, the most expensive). Every
  weight is read once per step for the whole batch (so per token: weight bytes / B); each sequence
  reads its KV cache (what the counts' kv_read says: n_kv_head heads, a window's last W entries)
  and appends its new entry (kv_write).
* prefill: B prompts of T tokens. Per token, the mean over positions t = 1..T of the decode counts
  at context t (a causal kernel skips the masked half; above 256 positions, over 256 evenly spaced
  ones: `prefill_positions`); weights are read once per batch (weight
  bytes / (B T)); each token writes its cache entry, and the cached keys and values are re-read
  once per tile of `attention_query_tile` queries (FlashAttention-style tiling).
  Activations between layers are assumed to stay on chip in both phases.

Memory levels: the weights are read from on-chip SRAM when all of them fit in the target's on-chip
memory, else from DRAM; the KV cache likewise when it fits beside the weights. DRAM energy is the
table's per-bit figure (the middle of its range by default); on-chip reads are priced at the SRAM
energy of the target's on-chip capacity, at most one 1 MiB bank (SRAM_BANK_BYTES); only DRAM
traffic takes time (on-chip bandwidth is not modelled).

Formats: an amount the counts tag (a quantised linear layer's "int4*int8" MACs, its "int4" weights)
is priced in that format; an untagged one in the default format: --format if given, else an
accelerator's native (its MAC array's) format, else the training dtype (auto: bf16 on a GPU
target, fp32 on a CPU). The notes of an Estimate say which formats were assumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from errors import UserError
from ppa import functions as fn
from ppa.tables import Target, Tech, load_target, load_tech, parse_format
from variations.cost import DEFAULT, Cost, total

DTYPE_FORMATS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DEFAULT_TARGET = "edge_int8"
DEFAULT_TECH = "horowitz45"
# a large on-chip memory is banked: a read reaches one bank, taken as 1 MiB (the largest SRAM of
# Horowitz's table), so a 50 MB GPU L2 is not priced as one 50 MB array
SRAM_BANK_BYTES = 2 ** 20
PREFILL_POSITIONS = 256  # positions averaged for the prefill counts (prefill_positions)
PHASES = ("prefill", "decode")
# summary.json keys (declared once here; run_dir.py lists them): phase figures per token, and area
SUMMARY_KEYS = {
    "energy_pj_per_token_prefill": "energy per token of prefill (pJ: compute + memory), ppa_target",
    "energy_pj_per_token_decode": "energy per token of decode at full context (pJ: compute + memory)",
    "memory_energy_pj_per_token_decode": "the memory part of energy_pj_per_token_decode (pJ)",
    "latency_us_per_token_prefill": "prefill time of the batch divided by its tokens (us, roofline)",
    "latency_us_per_token_decode": "time of one decode step at full context (us, roofline)",
    "area_mm2": "datapath area of an accelerator target: MAC array + special units + vector lanes + SRAM",
    "weights_sram_mm2": "SRAM area that would hold every weight on chip at its format",
}
LIMITS = (
    "A first-order model: per-operation energies of one 45 nm table, not a synthesised design "
    "(only the normaliser units' area comes from synthesis, where hardware/synthesised/ has it); "
    "the scaled technology is a projection.",
    "The count does not separate elementwise adds from multiplies: each is priced half and half.",
    "Exponentials and reciprocals are polynomial and Newton compositions; lookup-table or "
    "piecewise-linear units, which cheap hardware uses, would be cheaper.",
    "Activations between layers stay on chip; on-chip bandwidth, register files and operand "
    "delivery inside the MAC array are not priced; only DRAM traffic takes time.",
    "Latency is a roofline: peak rates, no kernel launches, no synchronisation, no pipeline fill; "
    "unit classes of one component do not overlap, components run one after another.",
    "GPU and CPU targets are priced with the logic technology table too (45 nm by default), and "
    "their DRAM with the table's DRAM figure, not their HBM's own energy per bit.",
    "Prefill re-reads the KV cache once per query tile; a linear-attention state is written once "
    "per token in prefill (an upper bound: a chunked kernel writes it once per chunk).",
    "Decode is priced at full context (the last position), batch 1 unless given.",
)
SUMMARY_TEXT = {"ppa_target": "the hardware target of the PPA estimates (train.py --ppa_target)",
                "ppa_format": "the default number format the PPA estimates assumed"}


@dataclass
class Priced:
    """One component's figures for one phase: energies and bytes per token, times per step."""
    compute_pj: float = 0.0
    memory_pj: float = 0.0
    compute_s: float = 0.0
    memory_s: float = 0.0
    latency_s: float = 0.0  # a component's roofline max(compute_s, memory_s); a sum keeps the sum of maxima
    dram_bytes: float = 0.0
    onchip_bytes: float = 0.0
    kv_bytes: float = 0.0  # of those bytes, the KV cache's (read + written) per token
    ops_pj: dict = field(default_factory=dict)  # compute energy by counted operation: {"exp": pJ, ...}

    @classmethod
    def component(cls, **figures) -> "Priced":
        return cls(latency_s=max(figures["compute_s"], figures["memory_s"]), **figures)

    @property
    def energy_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s > self.compute_s else "compute"

    def __add__(self, other: "Priced") -> "Priced":
        out = Priced(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__ if k != "ops_pj"})
        out.ops_pj = {op: self.ops_pj.get(op, 0.0) + other.ops_pj.get(op, 0.0) for op in {*self.ops_pj, *other.ops_pj}}
        return out

    def to_dict(self) -> dict:
        return {"energy_pj": self.energy_pj, "compute_pj": self.compute_pj, "memory_pj": self.memory_pj,
                "latency_us": self.latency_s * 1e6, "compute_us": self.compute_s * 1e6,
                "memory_us": self.memory_s * 1e6, "dram_bytes": self.dram_bytes, "onchip_bytes": self.onchip_bytes,
                "kv_bytes": self.kv_bytes, "ops_pj": dict(sorted(self.ops_pj.items()))}


@dataclass
class Estimate:
    target: Target
    tech: Tech
    fmt: str
    context: int
    batch: int
    rows: dict  # phase -> {row name: Priced}; energies per token, latencies per step of the phase
    tokens: dict  # phase -> tokens per step (decode B, prefill B T)
    area: dict  # part -> mm^2 (accelerators), else {}
    notes: list = field(default_factory=list)

    def total(self, phase: str) -> Priced:
        out = Priced()
        for p in self.rows[phase].values():
            out = out + p
        return out

    def grouped(self, phase: str) -> dict:
        """Rows summed over layers: {'embedding', 'attention', 'mlp', 'norms', ...}."""
        out: dict[str, Priced] = {}
        for name, p in self.rows[phase].items():
            key = name.split(".", 2)[2] if name.startswith("layer.") else name
            out[key] = out.get(key, Priced()) + p
        return out

    def summary(self) -> dict:
        """The summary.json keys (SUMMARY_KEYS, SUMMARY_TEXT)."""
        pre, dec = self.total("prefill"), self.total("decode")
        area = self.area.get("total")
        return {"energy_pj_per_token_prefill": pre.energy_pj, "energy_pj_per_token_decode": dec.energy_pj,
                "memory_energy_pj_per_token_decode": dec.memory_pj,
                "latency_us_per_token_prefill": pre.latency_s * 1e6 / self.tokens["prefill"],
                "latency_us_per_token_decode": dec.latency_s * 1e6,
                "area_mm2": area, "weights_sram_mm2": self.area.get("weights_sram"),
                "ppa_target": self.target.name, "ppa_format": self.fmt}

    def to_dict(self) -> dict:
        return {"target": self.target.name, "tech": self.tech.name, "format": self.fmt, "context": self.context,
                "batch": self.batch, "summary": self.summary(), "area_mm2": self.area, "notes": self.notes,
                **{phase: {"tokens_per_step": self.tokens[phase],
                           "rows": {k: p.to_dict() for k, p in self.grouped(phase).items()},
                           "total": self.total(phase).to_dict()} for phase in PHASES}}


# ------------------------------------------------------------------------------- the default format
def default_format(target: Target, dtype: str = "auto", override: str | None = None) -> str:
    """--format, else an accelerator's native format, else the dtype (auto: bf16 on GPUs, fp32 on CPUs)."""
    if override:
        return parse_format(override).name
    if target.kind == "accelerator":
        return target.mac_array["format"]
    if dtype in (None, "auto"):
        return "bf16" if target.kind == "gpu" else "fp32"
    return DTYPE_FORMATS[dtype]


def resolve(tag, fmt: str) -> str:
    """A count's format tag with the placeholders (untagged None, "default") replaced by `fmt`."""
    if tag is None:
        return fmt
    return "*".join(fmt if part == DEFAULT else part for part in tag.split("*"))


# ----------------------------------------------------------------------------------------- the counts
def prefill_positions(T: int) -> list[int]:
    """The positions whose counts prefill averages: all of 1..T up to PREFILL_POSITIONS of them, else
    that many evenly spaced ones, the midpoints of equal slices of 1..T rounded down and up in turn
    (their mean is (T + 1) / 2 when the slices are whole): exact for counts affine in the context, as
    every attention's are below a window, and within the rounding of t otherwise."""
    if T <= PREFILL_POSITIONS:
        return list(range(1, T + 1))
    mids = [(i + 0.5) * T / PREFILL_POSITIONS + 0.5 for i in range(PREFILL_POSITIONS)]
    return [min(T, max(1, math.floor(m) if i % 2 == 0 else math.ceil(m))) for i, m in enumerate(mids)]


def prefill_counts(model, T: int) -> dict[str, Cost]:
    """Per row, the mean over positions t = 1..T of the counts at context t (module docstring)."""
    positions = prefill_positions(T)
    sums: dict[str, Cost] = {}
    for t in positions:
        for k, c in model.cost(t).items():
            sums[k] = sums[k] + c if k in sums else c
    return {k: c.repeat(1 / len(positions)) for k, c in sums.items()}


def mac_rate_format(target: Target, tag: str, notes: set) -> str:
    """The format whose MAC rate a MAC runs at: its product's format; a narrower integer than any the
    target lists runs on the next wider integer units."""
    prod = fn.product_format(tag)
    if prod.name in target.peak_macs_per_s or prod.kind != "int":
        return prod.name
    wider = sorted((parse_format(n) for n in target.peak_macs_per_s if n.startswith("int")), key=lambda f: f.bits)
    for f in wider:
        if f.bits >= prod.bits:
            notes.add(f"{prod.name} MACs run on {target.name}'s {f.name} units (no {prod.name} rate listed)")
            return f.name
    return prod.name  # target.macs_per_s raises the one-line error


def special_rate(target: Target, op: str) -> float:
    """Special-function results per second for `op` on the target."""
    units = target.special_units or {}
    kind = "exp" if op in ("exp", "exp2") else op
    if units:
        n = units.get(kind, 0)
        if not n:
            raise UserError(f"target {target.name} ({target.path}) has no {kind} units (special_units.{kind}) but "
                            f"the configuration needs {op}; add units to the file or choose another target")
        return n * target.clock_hz
    return target.special_ops_per_s


def price_row(c: Cost, *, target: Target, tech: Tech, fmt: str, accumulate: str, notes: set) -> tuple[dict, float]:
    """({operation: compute energy pJ}, compute seconds) of one token's counts."""
    energy, seconds = {}, 0.0
    for op in fn.COMPUTE:
        for tag, amount in c.formats(op).items():
            tag = resolve(tag, fmt)
            energy[op] = energy.get(op, 0.0) + amount * fn.op_cost(tech, op, tag, accumulate)
            if op == "macs":
                seconds += amount / target.macs_per_s(mac_rate_format(target, tag, notes))
            elif op in fn.SPECIAL:
                seconds += amount / special_rate(target, op)
            else:
                seconds += amount / target.vector_ops_per_s
    return energy, seconds


def nbytes(c: Cost, count: str, fmt: str) -> float:
    """Bytes of a memory count at its formats' storage widths."""
    return sum(a * parse_format(resolve(t, fmt)).bits / 8 for t, a in c.formats(count).items())


# ------------------------------------------------------------------------------------- the estimate
def estimate(model, *, target: str | Target = DEFAULT_TARGET, tech: str | Tech | None = None,
             context: int | None = None, batch: int = 1, fmt: str | None = None, dtype: str = "auto",
             accumulate: str = "wide", dram: str = "mid") -> Estimate:
    """Price `model`'s counts (a GPT; build it on the meta device for shapes only) on `target`."""
    target = target if isinstance(target, Target) else load_target(target)
    tech = tech if isinstance(tech, Tech) else load_tech(tech or target.tech or DEFAULT_TECH)
    T = context or model.config.block_size
    if T < 1 or batch < 1:
        raise UserError(f"context and batch must be at least 1, got context {T}, batch {batch}")
    if accumulate not in ("wide", "operand"):
        raise UserError(f"accumulate must be 'wide' or 'operand', got {accumulate!r}")
    fmt = default_format(target, dtype, fmt)
    notes: set = set()
    decode, prefill = model.cost(T), prefill_counts(model, T)

    # where the weights and the KV cache live (module docstring)
    params_bytes = sum(c.params * nbytes(c, "weights", fmt) / c.weights for c in decode.values() if c.weights)
    kv_bytes = batch * sum(nbytes(c, "kv_read", fmt) for c in decode.values())
    weights_onchip = params_bytes <= target.onchip_bytes
    kv_onchip = weights_onchip and params_bytes + kv_bytes <= target.onchip_bytes
    e_dram = tech.dram_pj_per_bit(dram) * 8
    e_sram = tech.sram_read_pj_per_bit(min(target.onchip_bytes, SRAM_BANK_BYTES)) * 8
    notes.add(f"weights ({params_bytes / 2**20:.2f} MiB) read from {'on-chip SRAM' if weights_onchip else 'DRAM'}; "
              f"KV cache ({kv_bytes / 2**20:.2f} MiB at batch {batch}, context {T}) from "
              f"{'on-chip SRAM' if kv_onchip else 'DRAM'}; on-chip capacity {target.onchip_bytes / 2**20:.2f} MiB")
    tile = target.attention_query_tile

    rows, tokens = {}, {"decode": batch, "prefill": batch * T}
    for phase, counts in (("decode", decode), ("prefill", prefill)):
        n_tok = tokens[phase]
        rows[phase] = {}
        for name, c in counts.items():
            e_comp, t_comp = price_row(c, target=target, tech=tech, fmt=fmt, accumulate=accumulate, notes=notes)
            w = nbytes(c, "weights", fmt)  # once per step, shared by its tokens
            kv_read = nbytes(c, "kv_read", fmt) / (tile if phase == "prefill" else 1)
            kv = kv_read + nbytes(c, "kv_write", fmt)  # per token
            dram_b = (0 if weights_onchip else w) + (0 if kv_onchip else kv * n_tok)
            chip_b = (w if weights_onchip else 0) + (kv * n_tok if kv_onchip else 0)
            rows[phase][name] = Priced.component(
                compute_pj=sum(e_comp.values()), memory_pj=(dram_b * e_dram + chip_b * e_sram) / n_tok,
                compute_s=t_comp * n_tok, memory_s=dram_b / target.dram_bytes_per_s,
                dram_bytes=dram_b / n_tok, onchip_bytes=chip_b / n_tok, kv_bytes=kv, ops_pj=e_comp)

    untagged = total(decode.values())
    share = {op: untagged.formats(op).get(None, 0) / getattr(untagged, op) for op in fn.COMPUTE if getattr(untagged, op)}
    if share:
        notes.add(f"operations whose format the configuration does not state run in the default format {fmt} "
                  f"({', '.join(f'{op} {100 * s:.0f}%' for op, s in share.items() if s)})")
    area = datapath_area(target, tech, total(decode.values()), fmt, params_bytes, accumulate,
                         synthesised=synthesised_normaliser(model.config, fmt, target, tech, notes))
    return Estimate(target=target, tech=tech, fmt=fmt, context=T, batch=batch, rows=rows, tokens=tokens,
                    area=area, notes=sorted(notes))


def synthesised_normaliser(config, fmt: str, target: Target, tech: Tech, notes: set) -> dict | None:
    """The gate-level result of the attention normaliser's unit (hardware/synthesised/, issue 19) when one
    is stored for this normaliser at the format's integer width and the unit has an exponential (it then
    stands for the exp units), else None; its delay goes into the notes."""
    from hardware import fixed, results
    variants = set(getattr(config, "softmax_variant_attn_layerlist", None)
                   or [getattr(config, "softmax_variant_attn", None)]) - {None}
    f = parse_format(fmt)
    if target.kind != "accelerator" or len(variants) != 1 or f.kind != "int" or not variants <= set(fixed.USES_EXP):
        return None  # a unit without an exponential (relumax) does not replace the exp units
    r = results.lookup(variants.pop(), f.bits)
    if r is None:
        return None
    scale = (tech.node_nm / results.LIBRARY_NODE_NM) ** 2
    notes.add(f"special-function units: the synthesised {r['module']} ({r['library']}: {r['area_um2']:,.0f} um^2, "
              f"{r['nand2_eq']:,.0f} NAND2 eq, {r['delay_ps'] / 1000:.2f} ns critical path = "
              f"{math.ceil(r['delay_ps'] * 1e-12 * target.clock_hz)} cycles at {target.clock_hz / 1e9:g} GHz unpipelined) "
              f"replaces the composed exp units, area scaled by ({tech.node_nm:g}/{results.LIBRARY_NODE_NM:g} nm)^2")
    return {**r, "area_um2_scaled": r["area_um2"] * scale}


def datapath_area(target: Target, tech: Tech, c: Cost, fmt: str, params_bytes: float, accumulate: str,
                  synthesised: dict | None = None) -> dict:
    """mm^2 of an accelerator's datapath for what the configuration needs (module docstring). With
    `synthesised` (synthesised_normaliser), each exp unit is that gate-level normaliser unit instead."""
    if target.kind != "accelerator":
        return {}
    um2 = 1e-6  # um^2 -> mm^2
    arr = target.mac_array
    out = {"mac_array": arr["rows"] * arr["cols"] * fn.op_cost(tech, "macs", arr["format"], accumulate, "area") * um2}
    units = target.special_units or {}
    if synthesised is not None and units.get("exp"):
        out["normaliser_units"] = units["exp"] * synthesised["area_um2_scaled"] * um2
    for kind, ops in (("exp", ("exp", "exp2")), ("div", ("div",)), ("sqrt", ("sqrt",))):
        if kind == "exp" and "normaliser_units" in out:
            continue
        needed = [op for op in ops if getattr(c, op)]
        if needed and units.get(kind):
            # a unit for the most expensive composition the configuration needs (exp covers exp2)
            worst = max(fn.op_cost(tech, op, fmt, accumulate, "area") for op in needed)
            out[f"{kind}_units"] = units[kind] * worst * um2
    lanes = target.vector_lanes or 0
    out["vector_lanes"] = lanes * (tech.area_um2("add", fmt) + tech.area_um2("mult", fmt)) * um2
    out["sram"] = tech.sram_area_mm2(sum(target.sram_bytes.values()))
    out["total"] = sum(out.values())
    out["weights_sram"] = tech.sram_area_mm2(params_bytes)
    return out
