"""analysis/reproductions.py: docs/reproductions.md is current; the normaliser section from a synthetic
log (paired intervals, before/after, the claim verdicts); missing results name the command that makes them."""
from __future__ import annotations

import json

import pytest

from analysis import reproductions as rp
from errors import UserError
from optimization_and_search.results import append_log, log_entry

SPEC = {
    "baseline": {"softmax_variant_attn": "softmax"}, "sweep": "explorations/x.yaml",
    "figures": [{"x": "exp_per_token", "out": "docs/figures/x.png"}], "cost_keys": ["exp_per_token"],
    "before": [{"variant": "consmax", "settings": {"consmax_gamma_init": 100.0}}],
    "papers": {
        "consmax": {"source": "Liu", "claim": "comparable", "setting": "GPT-2"},
        "strongermax": {"source": "Forge", "claim": "same_as", "same_as": "softermax"},
        "relumax": {"source": "Wortsman", "claim": "comparable"},
    },
}
LOSSES = {  # configuration -> best val loss for seeds 1, 2, 3
    ("softmax", None): [2.00, 2.02, 2.01],
    ("softermax", None): [2.03, 2.05, 2.04],
    ("strongermax", None): [2.03, 2.05, 2.04],
    ("consmax", None): [2.01, 2.02, 2.02],      # within noise of softmax
    ("consmax", 100.0): [2.20, 2.25, 2.21],     # before: clearly worse
    ("relumax", None): [2.30, 2.31, 2.33],      # worse
}


def write_log(path):
    for (variant, gamma), values in LOSSES.items():
        for seed, loss in zip((1, 2, 3), values):
            settings = {"softmax_variant_attn": variant, **({"consmax_gamma_init": gamma} if gamma else {}), "seed": seed}
            name = f"{variant}{'_g' if gamma else ''}_seed-{seed}"
            append_log(path, log_entry(name, status="completed", exit_code=0, run_dir=None, started_at=None,
                                       finished_at=None, settings=settings,
                                       summary={"best_val_loss": loss, "exp_per_token": 3072.0}))


def test_the_committed_page_is_current():
    assert rp.main(["--check"]) == {"stale": False}


def test_normaliser_section_from_a_synthetic_log(tmp_path):
    log = tmp_path / "log.yaml"
    write_log(log)
    text = rp.normalisers_section({**SPEC, "log": str(log)})
    assert "| softmax | 3 | 2.010 ± 0.010 | 2.000 .. 2.020 | baseline | baseline |" in text
    # consmax - softmax per seed: +0.01, 0, +0.01 -> mean +0.007, paired t over 3 seeds holds 0
    consmax = next(line for line in text.splitlines() if line.startswith("| consmax | 3"))
    assert "+0.007" in consmax and "within noise" in consmax
    assert "| consmax `--consmax_gamma_init 100` | 3 |" in text
    # before/after: default - gamma 100 per seed: -0.19, -0.23, -0.19
    after = next(line for line in text.splitlines() if line.startswith("| consmax | `--consmax_gamma_init 100`"))
    assert "-0.203" in after and "| better |" in after
    assert "**consmax** (Liu) claims loss comparable to softmax" in text and "**Agrees** at this scale." in text
    assert "**relumax** (Wortsman)" in text and "**Does not reproduce** at this scale" in text
    assert "run for run equal to softermax" in text


def test_missing_results_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(UserError, match="run_experiments.py -c explorations/x.yaml"):
        rp.normalisers_section({**SPEC, "log": str(tmp_path / "none.yaml")})
    with pytest.raises(UserError, match="repro_nanogpt.py --nanogpt"):
        rp.nanogpt_section({"results": str(tmp_path / "none.json"), "reported": "", "checkout": ""})


def test_nanogpt_section_reports_the_interval_and_the_verdict(tmp_path):
    runs = lambda vals: [{"seed": s, "val_loss_whole_split": v, "best_val_loss": v + 0.01} for s, v in zip((1, 2), vals)]  # noqa: E731
    result = {"iters": 2000, "seeds": [1, 2], "scored_tokens": 1000, "windows": 10, "block_size": 100,
              "command": "python benchmarks/repro_nanogpt.py --nanogpt N", "nanogpt_patch": "- a\n+ b",
              "ours": {"runs": runs([1.90, 1.92]), "mean": 1.91, "sd": 0.014},
              "nanogpt": {"runs": runs([1.91, 1.93]), "mean": 1.92, "sd": 0.014},
              "difference": {"test": "Welch t", "difference": -0.01, "low": -0.07, "high": 0.05},
              "agree_within_noise": True, "provenance": {"device_name": "cpu X", "threads": 1}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    text = rp.nanogpt_section({"results": str(path), "reported": "the README's  1.88", "checkout": "nanoGPT at abc"})
    assert "| 1 | 1.9000 | 1.9100 | 1.9100 | 1.9200 |" in text
    assert "Welch t 95% interval [-0.0700, +0.0500]" in text and "agree within the seed spread" in text
    assert "the README's 1.88" in text  # whitespace of the YAML folded
