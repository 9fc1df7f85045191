"""The PPA estimate: priced counts against hand-computed formulas, the traffic rules (GQA, windows,
weights per batch), the normalisers' terms, the H100 decode roofline, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

import variations  # noqa: F401
from errors import UserError
from gpt_conf import GPTConfig
from model import GPT
from ppa import functions as fn
from ppa.estimate import estimate, prefill_counts
from ppa.tables import load_target, load_tech
from variations.cost import Cost
from variations.registry import names

from conftest import tiny_config

TECH = load_tech("horowitz45")


class OneLayer:
    """A 'model' of one linear layer: what the estimator reads (config.block_size, cost(T))."""

    def __init__(self, layer, block_size: int = 8):
        self.layer = layer
        self.config = type("C", (), {"block_size": block_size})()

    def cost(self, T: int) -> dict[str, Cost]:
        return {"linear": self.layer.cost(T)}


def linear(kind: str = "linear", n: int = 2048, m: int = 2048, **cfg):
    from variations.registry import create
    return create("linear", kind, tiny_config(**cfg), n, m)


def meta_gpt(**kw) -> GPT:
    with torch.device("meta"):
        return GPT(GPTConfig(**{"vocab_size": 96, **kw}))


# ------------------------------------------------------------------------------ linear layers alone
@pytest.mark.parametrize("fmt", ["int8", "int16", "int4"])
def test_linear_energy_is_macs_times_mac_energy_plus_its_traffic(fmt):
    """A 2048 x 2048 layer (4 MiB and more: too big for edge_int8's SRAM, so DRAM): per decoded token,
    MACs x (E_mult + E_add(int32)) + weight bits x E_DRAM per bit, exactly."""
    n = m = 2048
    est = estimate(OneLayer(linear(n=n, m=m)), target="edge_int8", fmt=fmt)
    bits = int(fmt[3:])
    e_mac = TECH.energy_pj("mult", fmt) + TECH.energy_pj("add", "int32")
    row = est.rows["decode"]["linear"]
    assert row.compute_pj == pytest.approx(n * m * e_mac)
    assert row.memory_pj == pytest.approx(n * m * bits * TECH.dram_pj_per_bit("mid"))
    assert row.dram_bytes == pytest.approx(n * m * bits / 8)
    # and the roofline: weight bytes over the DRAM bandwidth against MACs over the array's rate
    target = load_target("edge_int8")
    assert row.memory_s == pytest.approx(n * m * bits / 8 / target.dram_bytes_per_s)
    rate_fmt = fmt if fmt in target.peak_macs_per_s else "int8"
    assert row.compute_s == pytest.approx(n * m / target.macs_per_s(rate_fmt))
    assert row.latency_s == max(row.compute_s, row.memory_s)


def test_halving_every_bit_width_lowers_energy_by_the_tables_ratio():
    layer = OneLayer(linear())
    e16 = estimate(layer, target="edge_int8", fmt="int16", accumulate="operand").rows["decode"]["linear"]
    e8 = estimate(layer, target="edge_int8", fmt="int8", accumulate="operand").rows["decode"]["linear"]
    ratio = ((TECH.energy_pj("mult", "int16") + TECH.energy_pj("add", "int16"))
             / (TECH.energy_pj("mult", "int8") + TECH.energy_pj("add", "int8")))
    assert e16.compute_pj / e8.compute_pj == pytest.approx(ratio)
    assert e16.memory_pj / e8.memory_pj == pytest.approx(2.0)  # half the bits moved


def test_quantised_layers_are_priced_in_their_own_formats():
    """--linear_variant quantized tags its MACs int4*int8 and its weights int4: the default format does
    not change their price; bitlinear's ternary multiplies cost nothing and its weights 2 bits."""
    q = OneLayer(linear("quantized", quant_weight_bits=4, quant_act_bits=8))
    a = estimate(q, target="h100_sxm", fmt="bf16").rows["decode"]["linear"]
    b = estimate(q, target="h100_sxm", fmt="fp32").rows["decode"]["linear"]
    assert a.ops_pj["macs"] == b.ops_pj["macs"] == pytest.approx(
        2048 * 2048 * (math.sqrt(TECH.energy_pj("mult", "int4") * TECH.energy_pj("mult", "int8"))
                       + TECH.energy_pj("add", "int32")))
    assert a.onchip_bytes == pytest.approx(2048 * 2048 * 4 / 8)  # int4 weights: 2 MiB, within the 50 MB L2
    t = estimate(OneLayer(linear("bitlinear")), target="h100_sxm").rows["decode"]["linear"]
    assert t.ops_pj["macs"] == pytest.approx(2048 * 2048 * TECH.energy_pj("add", "int32"))
    assert t.onchip_bytes == pytest.approx(2048 * 2048 * 2 / 8)


# ------------------------------------------------------------------------------------- the KV cache
def kv_bytes(model, phase="decode", **kw) -> float:
    est = estimate(model, target="h100_sxm", **kw)
    return sum(p.kv_bytes for name, p in est.rows[phase].items() if name.endswith("attention"))


def test_gqa_with_one_kv_head_cuts_decode_kv_traffic_by_n_head():
    full = kv_bytes(meta_gpt(n_layer=2, n_head=8, n_kv_head=8, n_embd=64, block_size=128))
    one = kv_bytes(meta_gpt(n_layer=2, n_head=8, n_kv_head=1, n_embd=64, block_size=128))
    assert full / one == pytest.approx(8)
    # bf16: per layer per token 2 (k, v) x 8 heads x 8 channels x (128 read + 1 written) x 2 bytes
    assert full == pytest.approx(2 * 2 * 8 * 8 * (128 + 1) * 2)


def test_a_window_halves_kv_reads_past_the_window():
    def reads(window):
        model = meta_gpt(n_layer=1, n_head=4, n_embd=64, block_size=128, window_size=window)
        return sum(c.kv_read for k, c in model.cost(128).items() if k.endswith("attention"))
    assert reads(64) == reads(None) / 2
    model = meta_gpt(n_layer=1, n_head=4, n_embd=64, block_size=128, window_size=64)
    full = meta_gpt(n_layer=1, n_head=4, n_embd=64, block_size=128)
    assert kv_bytes(model) < kv_bytes(full) and estimate(model, target="h100_sxm").total("decode").latency_s > 0


def test_decode_reads_weights_once_per_batch_and_prefill_once_per_batch_of_prompts():
    model = meta_gpt(n_layer=2, n_head=4, n_embd=64, block_size=64)
    e1, e4 = (estimate(model, target="edge_int8", batch=b) for b in (1, 4))
    w1 = e1.rows["decode"]["layer.0.mlp"].onchip_bytes + e1.rows["decode"]["layer.0.mlp"].dram_bytes
    w4 = e4.rows["decode"]["layer.0.mlp"].onchip_bytes + e4.rows["decode"]["layer.0.mlp"].dram_bytes
    assert w1 == pytest.approx(4 * w4)
    pre = e1.rows["prefill"]["layer.0.mlp"]
    assert pre.onchip_bytes + pre.dram_bytes == pytest.approx(w1 / 64)


def test_prefill_counts_are_the_mean_over_positions():
    model = meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16)
    mean = prefill_counts(model, 16)["layer.0.attention"]
    by_hand = sum(model.cost(t)["layer.0.attention"].exp for t in range(1, 17)) / 16
    assert mean.exp == pytest.approx(by_hand) and mean.exp == pytest.approx(2 * 8.5)


# ----------------------------------------------------------------------------------- the normalisers
def attention_ops(norm: str, fmt: str = "int8") -> dict:
    est = estimate(meta_gpt(n_layer=1, n_head=4, n_embd=64, block_size=64, softmax_variant_attn=norm),
                   target="edge_int8", fmt=fmt)
    return est.rows["decode"]["layer.0.attention"].ops_pj


def test_consmax_has_no_max_reduction_and_no_division_softmax_has_both():
    soft, cons = attention_ops("softmax"), attention_ops("consmax")
    assert soft["reduce"] > 0 and soft["cmp"] > 0 and soft["div"] > 0
    assert cons.get("reduce", 0) == cons.get("cmp", 0) == cons.get("div", 0) == 0
    assert cons["exp"] == pytest.approx(soft["exp"])  # the same exponentials


def test_softermax_uses_base_two_exponentials_cheaper_than_natural_ones():
    softer, soft = attention_ops("softermax"), attention_ops("softmax")
    assert softer.get("exp", 0) == 0 and soft.get("exp2", 0) == 0
    for fmt in ("int8", "fp16", "fp32"):  # 2^x saves the multiply by log2 e
        assert fn.op_cost(TECH, "exp2", fmt) == pytest.approx(fn.op_cost(TECH, "exp", fmt) - TECH.energy_pj("mult", fmt))


@pytest.mark.parametrize("name", names("softmax"))
def test_every_normaliser_is_priced(name):
    """Registry-driven: every normaliser's estimate is finite and positive on the edge target."""
    ops = attention_ops(name)
    assert all(math.isfinite(v) and v >= 0 for v in ops.values()) and sum(ops.values()) > 0


# --------------------------------------------------------------------------------- special functions
def test_compositions_grow_with_precision_and_are_documented():
    assert fn.poly_degree(8) < fn.poly_degree(24)
    assert [fn.newton_steps(p) for p in (4, 8, 11, 24)] == [0, 1, 2, 3]
    import numpy as np
    d = fn.poly_degree(11)  # the degree found meets the bound; one less does not
    grid = np.linspace(0, 1, 4001)
    for deg, ok in ((d, True), (d - 1, False)):
        poly = np.polynomial.chebyshev.Chebyshev.interpolate(np.exp2, deg, domain=[0, 1])
        assert (np.max(np.abs(poly(grid) - np.exp2(grid))) < 2.0 ** -11) == ok
    # a reciprocal: seed (1 mult, 1 add) + 2 Newton steps (2 mult, 1 add each) at fp16
    assert fn.compose("div", "fp16") == {("mult", "fp16"): 5, ("add", "fp16"): 3}
    assert fn.compose("macs", "int4*int8") == {("mult", "int4*int8"): 1, ("add", "int32"): 1}


# ------------------------------------------------------------------------------------ the roofline
def test_h100_decode_of_a_124m_model_is_memory_bound_at_weight_bytes_over_bandwidth():
    """GPT-2 small at bf16, batch 1: every weight read once per token from HBM. The stated overhead
    is the KV cache (read at context T) and compute-bound small components (norms, residual)."""
    model = meta_gpt(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    est = estimate(model, target="h100_sxm", context=1024)
    h100 = load_target("h100_sxm")
    dec = est.rows["decode"]
    weight_bytes = sum(c.weights for c in model.cost(1024).values()) * 2
    kv = sum(p.kv_bytes for p in dec.values())
    total = est.total("decode").latency_s
    assert all(dec[k].bound == "memory" for k in dec if k.endswith(("attention", "mlp")) or k == "lm_head")
    assert weight_bytes / h100.dram_bytes_per_s < total <= (weight_bytes + kv) / h100.dram_bytes_per_s * 1.01
    assert est.summary()["latency_us_per_token_decode"] == pytest.approx(total * 1e6)


def test_area_counts_the_units_the_configuration_needs():
    est = estimate(meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16), target="edge_int8")
    target = load_target("edge_int8")
    arr = target.mac_array
    assert est.area["mac_array"] == pytest.approx(
        arr["rows"] * arr["cols"] * (TECH.area_um2("mult", "int8") + TECH.area_um2("add", "int32")) * 1e-6)
    assert est.area["sram"] == pytest.approx(TECH.sram_area_mm2(sum(target.sram_bytes.values())))
    assert est.area["total"] == pytest.approx(sum(v for k, v in est.area.items() if k not in ("total", "weights_sram")))
    assert estimate(meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16), target="h100_sxm").area == {}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_targets_formats_and_tables_are_one_line_errors(tmp_path):
    model = meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16)
    with pytest.raises(UserError, match="did you mean 'h100_sxm'") as e:
        estimate(model, target="h100_sx")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="edge_int8.*bf16") as e:  # an int8 accelerator cannot run bf16
        estimate(model, target="edge_int8", fmt="bf16")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown"):
        estimate(model, target="edge_int8", fmt="int99")
    bad = tmp_path / "tech.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="tech.yaml"):
        estimate(model, target="h100_sxm", tech=str(bad))


def test_docs_are_generated_from_the_code():
    from ppa.__main__ import DOCS, docs_markdown
    assert DOCS.read_text() == docs_markdown(), "docs/ppa.md is stale: run python -m ppa --docs"


def test_a_table_without_an_entry_the_configuration_needs_names_the_file_and_key(tmp_path):
    """A user's technology file with integer entries only: a bf16 configuration cannot be priced."""
    import yaml
    data = yaml.safe_load((load_tech("horowitz45").path).read_text())
    for section in ("energy_pj", "area_um2"):
        for prim in data[section]:
            data[section][prim] = {k: v for k, v in data[section][prim].items() if not k.startswith("fp")}
    path = tmp_path / "intonly.yaml"
    path.write_text(yaml.safe_dump(data))
    model = meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16)
    with pytest.raises(UserError, match=r"intonly.yaml: energy_pj.add: has no float entry to derive bf16") as e:
        estimate(model, target="h100_sxm", tech=str(path), fmt="bf16")
    assert "\n" not in str(e.value)
    assert estimate(model, target="h100_sxm", tech=str(path), fmt="int8").total("decode").energy_pj > 0


def test_long_contexts_average_sampled_positions_exactly_for_affine_counts():
    """Above 256 positions prefill samples them; attention counts are affine in t, so the mean is exact."""
    model = meta_gpt(n_layer=1, n_head=2, n_embd=32, block_size=1024)
    mean = prefill_counts(model, 1024)["layer.0.attention"]
    exact = sum(model.cost(t)["layer.0.attention"].macs for t in range(1, 1025)) / 1024
    assert mean.macs == pytest.approx(exact, rel=1e-12)
    calls = []
    big = meta_gpt(n_layer=2, n_head=2, n_embd=32, block_size=1_000_000)
    counted = OneLayer(None, block_size=1_000_000)
    counted.cost = lambda T: calls.append(T) or big.cost(T)
    estimate(counted, target="h100_sxm")  # not a million evaluations of the counts
    assert len(calls) == 1 + 256 and min(calls) >= 1 and max(calls) == 1_000_000
