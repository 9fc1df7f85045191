"""docs/hardware.md is what `python -m hardware.rtl docs` would write, and the stored synthesis results
it is built from still match the Verilog the generator writes; the PPA estimate reads them."""
from __future__ import annotations

import torch

from hardware import docs, results
from ppa.estimate import estimate

from conftest import tiny_config


def test_stored_results_match_the_generator():
    assert results.stale() == [], "the generator changed: run python -m hardware.rtl docs"
    for v in results.DOC_VARIANTS:
        for b in results.DOC_BITS:
            assert results.lookup(v, b) is not None, f"no stored result for {v} at {b} bits"


def test_docs_page_is_current():
    assert docs.DOCS.read_text() == docs.render(), "docs/hardware.md is stale: run python -m hardware.rtl docs --render_only"


def test_stored_results_show_the_expected_structure():
    for b in results.DOC_BITS:
        soft, cons = results.lookup("softmax", b), results.lookup("consmax", b)
        assert cons["operators"].get("$div", 0) == 0 and cons["flip_flops"] == 0
        assert soft["operators"]["$div"] == 1 and soft["flip_flops"] > 0
        assert soft["nand2_eq"] > cons["nand2_eq"]  # the direction the ConSmax paper reports
    for v in results.DOC_VARIANTS:
        assert results.lookup(v, 16)["area_um2"] > results.lookup(v, 8)["area_um2"]


def test_ppa_prices_the_special_units_with_the_synthesised_normaliser():
    with torch.device("meta"):
        from model import GPT
        soft = GPT(tiny_config(softmax_variant_attn="softmax"))
        relu = GPT(tiny_config(softmax_variant_attn="relumax"))
    est = estimate(soft, target="edge_int8", fmt="int8")
    r = results.lookup("softmax", 8)
    units = est.target.special_units["exp"]
    scale = (est.tech.node_nm / results.LIBRARY_NODE_NM) ** 2
    assert est.area["normaliser_units"] == r["area_um2"] * scale * units * 1e-6
    assert "exp_units" not in est.area
    assert any(r["module"] in n for n in est.notes)
    assert "normaliser_units" not in estimate(relu, target="edge_int8", fmt="int8").area  # no exponential in it
    assert "normaliser_units" not in estimate(soft, target="edge_int8", fmt="int4").area  # none at 4 bits
