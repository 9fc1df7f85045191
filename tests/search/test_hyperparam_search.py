"""optimization_and_search/hyperparam_search.py: the greedy efficiency search on cheap synthetic
objectives (no training), plus one tiny real search end to end and analysis/plot_search.py."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from errors import UserError
from optimization_and_search import greedy_rule
from optimization_and_search import hyperparam_search as hs

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("plot_search", ROOT / "analysis" / "plot_search.py")
plot_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_search)

BASE = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "max_iters": 100}


def quiet():
    return Console(file=io.StringIO(), width=200)


def make_spec(tmp_path, **kw) -> hs.SearchSpec:
    args = dict(name="t", baseline=dict(BASE), params={"n_layer": 1}, multiples=1, steps=3, seeds=[1],
                log=str(tmp_path / "log.yaml"), out_root=str(tmp_path / "runs"))
    args.update(kw)
    return hs.SearchSpec(**args)


def search(tmp_path, evaluate, **kw) -> dict:
    return hs.run_search(make_spec(tmp_path, **kw), evaluate, console=quiet())


def table_evaluator(table: dict, calls: list | None = None):
    """objective and cost looked up by the candidate's (n_layer, n_embd)."""
    def evaluate(settings, seed):
        if calls is not None:
            calls.append((settings["n_layer"], settings["n_embd"], seed))
        obj, cost = table[(settings["n_layer"], settings["n_embd"])]
        return {"objective": obj, "cost": cost}
    return evaluate


def cand(name, objective, cost):
    return {"name": name, "status": "completed", "objective": objective, "cost": cost}


# ------------------------------------------------------------------------------ the decision rule
def test_every_named_cost_is_a_numeric_summary_key():
    """--cost energy|latency|area (the PPA estimate) and the older names all resolve to summary keys."""
    from run_dir import numeric_summary_keys
    assert set(hs.COSTS.values()) <= set(numeric_summary_keys())
    assert hs.COSTS["energy"] == "energy_pj_per_token_decode" and hs.COSTS["area"] == "area_mm2"
    assert hs.fmt_num("energy", 2.5e6) == "2.5 uJ" and hs.fmt_num("latency", 85.0) == "85 us"


def test_better_and_cheaper_wins_over_a_higher_ratio():
    base = {"objective": 1.0, "cost": 100.0}
    steep = cand("steep", 0.5, 101.0)     # improvement 0.5 per 1 unit: ratio 0.5
    cheap = cand("cheap", 0.95, 90.0)     # small improvement, but cheaper: dominates
    assert greedy_rule.rank_candidates(base, [steep, cheap])["name"] == "cheap"
    assert cheap["verdict"] == "dominates" and cheap["efficiency"] is None and cheap["chosen"]
    assert steep["verdict"] == "improves" and steep["efficiency"] == pytest.approx(0.5) and not steep["chosen"]
    # among dominating candidates the largest improvement wins, then the cheaper one
    same_cost = cand("same_cost", 0.8, 100.0)
    assert greedy_rule.rank_candidates(base, [steep, cheap, same_cost])["name"] == "same_cost"
    twin = cand("twin", 0.8, 95.0)
    assert greedy_rule.rank_candidates(base, [same_cost, twin])["name"] == "twin"


def test_worse_or_equal_is_never_chosen_whatever_its_cost():
    base = {"objective": 1.0, "cost": 100.0}
    worse_cheap = cand("worse_cheap", 1.01, 1.0)
    equal_cheap = cand("equal_cheap", 1.0, 1.0)
    equal_dear = cand("equal_dear", 1.0, 500.0)
    assert greedy_rule.rank_candidates(base, [worse_cheap, equal_cheap, equal_dear]) is None
    assert [c["verdict"] for c in (worse_cheap, equal_cheap, equal_dear)] == ["worse", "equal", "equal"]
    assert not any(c["chosen"] for c in (worse_cheap, equal_cheap, equal_dear))
    # a real improvement among them is chosen even though it is the most expensive
    better = cand("better", 0.9, 1000.0)
    assert greedy_rule.rank_candidates(base, [worse_cheap, equal_cheap, better])["name"] == "better"
    # improvements up to min_improvement count as none
    small = cand("small", 0.995, 50.0)
    assert greedy_rule.rank_candidates(base, [small], min_improvement=0.01) is None and small["verdict"] == "too_small"


def test_efficiency_ranking():
    base = {"objective": 2.0, "cost": 10.0}
    a = cand("a", 1.8, 20.0)   # 0.2 / 10 = 0.02
    b = cand("b", 1.9, 12.0)   # 0.1 / 2  = 0.05
    c = cand("c", 1.0, 110.0)  # 1.0 / 100 = 0.01
    skipped = {"name": "s", "status": "skipped"}
    assert greedy_rule.rank_candidates(base, [a, b, c, skipped])["name"] == "b"
    assert [x["efficiency"] for x in (a, b, c)] == pytest.approx([0.02, 0.05, 0.01])
    assert "verdict" not in skipped


def test_search_adopts_the_dominating_candidate(tmp_path):
    # from (2, 32): n_layer=3 has the best ratio, but n_embd=48 is better AND cheaper
    table = {(2, 32): (2.0, 100.0), (3, 32): (1.0, 101.0), (2, 48): (1.9, 99.0),
             (3, 48): (1.9, 200.0), (4, 32): (2.5, 50.0), (2, 64): (1.9, 300.0)}
    log = search(tmp_path, table_evaluator(table), params={"n_layer": 1, "n_embd": 16}, steps=2)
    step1 = log["steps"][0]
    assert step1["chosen"] == "n_embd=48" and step1["change"] == {"n_embd": 48} and step1["outcome"] == "adopted"
    verdicts = {c["name"]: c["verdict"] for c in step1["candidates"]}
    assert verdicts == {"n_layer=3": "improves", "n_embd=48": "dominates"}
    # step 2 from (2, 48): (3, 48) equal, (2, 64) equal -> nothing improves
    assert log["steps"][1]["baseline"]["source"] == "step 1: n_embd=48"
    assert log["steps"][1]["outcome"] == "no_improvement" and log["stop_reason"] == "no_improvement"
    assert log["final"]["settings"]["n_embd"] == 48 and log["final"]["change"] == {"n_embd": 48}


# ------------------------------------------------------------------------------ candidates
def test_seed_averaging(tmp_path):
    seen = []

    def evaluate(settings, seed):
        seen.append((settings["n_layer"], seed, settings["seed"], settings["out_dir"]))
        return {"objective": 3.0 - 0.5 * settings["n_layer"] + 0.1 * seed, "cost": 10.0 * settings["n_layer"] + seed,
                "note": f"seed {seed}"}

    log = search(tmp_path, evaluate, seeds=[1, 2, 3], steps=1)
    assert sorted({s for _, s, _, _ in seen}) == [1, 2, 3] and all(s == ss for _, s, ss, _ in seen)
    assert len({d for *_, d in seen}) == len(seen) == 6  # every candidate/seed pair has its own out_dir
    b, c = log["steps"][0]["baseline"], log["steps"][0]["candidates"][0]
    assert b["objective"] == pytest.approx(3.0 - 1.0 + 0.2) and b["cost"] == pytest.approx(22.0)
    assert c["objective"] == pytest.approx(3.0 - 1.5 + 0.2) and c["cost"] == pytest.approx(32.0)
    assert c["objective_std"] == pytest.approx(0.1)
    assert [r["seed"] for r in c["runs"]] == [1, 2, 3] and c["runs"][1]["note"] == "seed 2"
    assert [r["objective"] for r in c["runs"]] == pytest.approx([1.6, 1.7, 1.8])
    assert Path(c["runs"][0]["out_dir"]) == tmp_path / "runs" / "step_1" / "n_layer=3" / "seed_1"


def test_ints_stay_ints_and_floats_stay_floats(tmp_path):
    types = []

    def evaluate(settings, seed):
        types.append((type(settings["n_layer"]), type(settings["mlp_expansion_factor"])))
        return {"objective": 1.0 / settings["n_layer"] - 0.01 * settings["mlp_expansion_factor"], "cost": 1.0}

    log = search(tmp_path, evaluate, baseline={**BASE, "mlp_expansion_factor": 4},
                 params={"n_layer": 2.0, "mlp_expansion_factor": 0.1}, multiples=2, steps=1)
    assert set(types) == {(int, float)}
    values = {c["name"]: c["value"] for c in log["steps"][0]["candidates"]}
    assert values == {"n_layer=4": 4, "n_layer=6": 6, "mlp_expansion_factor=4.1": 4.1, "mlp_expansion_factor=4.2": 4.2}
    reloaded = yaml.safe_load(Path(tmp_path / "log.yaml").read_text())
    assert [type(c["value"]) for c in reloaded["steps"][0]["candidates"]] == [int, int, float, float]
    assert type(reloaded["steps"][0]["candidates"][0]["settings"]["n_layer"]) is int
    with pytest.raises(UserError, match="integer setting"):
        hs.validate_spec(make_spec(tmp_path, params={"n_layer": 1.5}))
    with pytest.raises(UserError, match="only int and float"):
        hs.validate_spec(make_spec(tmp_path, params={"attention_variant": 1}))
    with pytest.raises(UserError, match="did you mean 'n_layer'"):
        hs.validate_spec(make_spec(tmp_path, params={"n_layers": 1}))
    with pytest.raises(UserError, match="non-zero"):
        hs.validate_spec(make_spec(tmp_path, params={"n_layer": 0}))


def test_invalid_candidates_are_skipped_with_the_reason(tmp_path):
    calls = []

    def evaluate(settings, seed):
        calls.append(settings["n_head"])
        return {"objective": 1.0 / settings["n_head"], "cost": settings["n_head"]}

    log = search(tmp_path, evaluate, params={"n_head": 1}, multiples=3, steps=1)
    cands = {c["name"]: c for c in log["steps"][0]["candidates"]}
    assert cands["n_head=3"]["status"] == "skipped" and "not divisible" in cands["n_head=3"]["reason"]
    assert cands["n_head=4"]["status"] == "completed" and cands["n_head=5"]["status"] == "skipped"
    assert 3 not in calls and 5 not in calls and sorted(calls) == [2, 4]
    assert log["steps"][0]["chosen"] == "n_head=4"
    # an invalid baseline is an error before anything runs
    with pytest.raises(UserError, match="baseline settings are invalid.*not divisible"):
        hs.validate_spec(make_spec(tmp_path, baseline={**BASE, "n_head": 3}))


def test_n_layer_duplicates_the_last_layer_in_per_layer_lists(tmp_path):
    settings = {**BASE, "n_layer": 3, "attention_variant_layerlist": ["causal", "linear", "linear"],
                "mlp_variant_layerlist": ["mlp", "swiglu"], "norm_variant_layerlist": ["rmsnorm"]}
    grown = greedy_rule.with_value(settings, "n_layer", 5)
    assert grown["attention_variant_layerlist"] == ["causal", "linear", "linear", "linear", "linear"]
    # a cycled list is written out per layer first (mlp, swiglu, mlp), then the last layer repeated
    assert grown["mlp_variant_layerlist"] == ["mlp", "swiglu", "mlp", "mlp", "mlp"]
    assert grown["norm_variant_layerlist"] == ["rmsnorm"] * 5
    assert "activation_variant_layerlist" not in grown and settings["n_layer"] == 3  # input untouched
    assert greedy_rule.with_value(settings, "n_layer", 2)["mlp_variant_layerlist"] == ["mlp", "swiglu"]
    seen = []

    def evaluate(s, seed):
        seen.append((s["n_layer"], s.get("attention_variant_layerlist")))
        return {"objective": 1.0 / s["n_layer"], "cost": s["n_layer"]}

    log = search(tmp_path, evaluate, baseline={**BASE, "attention_variant_layerlist": ["causal", "linear"]}, steps=2)
    assert seen == [(2, ["causal", "linear"]), (3, ["causal", "linear", "linear"]),
                    (4, ["causal", "linear", "linear", "linear"])]
    assert log["steps"][0]["change"] == {"n_layer": 3, "attention_variant_layerlist": ["causal", "linear", "linear"]}


# ------------------------------------------------------------------------------ stopping
def test_stop_reasons(tmp_path):
    def improving(s, seed):
        return {"objective": 1.0 / s["n_layer"], "cost": s["n_layer"]}

    log = search(tmp_path / "a", improving, steps=2)
    assert log["stop_reason"] == "max_steps" and log["status"] == "finished" and len(log["steps"]) == 2
    assert log["final"]["settings"]["n_layer"] == 4 and log["finished_at"]

    def flat(s, seed):
        return {"objective": 1.0, "cost": s["n_layer"]}

    log = search(tmp_path / "b", flat, steps=5)
    assert log["stop_reason"] == "no_improvement" and len(log["steps"]) == 1
    assert log["steps"][0]["outcome"] == "no_improvement" and log["steps"][0]["chosen"] is None
    assert log["final"]["settings"] == BASE and log["final"]["change"] == {}

    def broken_baseline(s, seed):
        if s["n_layer"] == 2:
            raise RuntimeError("CUDA out of memory\nmore text")
        return improving(s, seed)

    log = search(tmp_path / "c", broken_baseline)
    assert log["stop_reason"] == "baseline_failed"
    assert log["steps"][0]["baseline"]["reason"] == "seed 1: CUDA out of memory"

    def failing_candidate(s, seed):
        if s["n_layer"] == 3:
            return {"objective": float("nan"), "cost": 3.0}
        return improving(s, seed)

    log = search(tmp_path / "d", failing_candidate, params={"n_layer": 1}, multiples=2, steps=1)
    cands = {c["name"]: c for c in log["steps"][0]["candidates"]}
    assert cands["n_layer=3"]["status"] == "failed" and "not a finite number" in cands["n_layer=3"]["reason"]
    assert log["steps"][0]["chosen"] == "n_layer=4"


def test_raise_iters_on_plateau(tmp_path):
    seen = []

    def evaluate(s, seed):  # only more training helps; a deeper model never does
        seen.append((s["n_layer"], s["max_iters"], s.get("lr_decay_iters")))
        return {"objective": 100.0 / s["max_iters"], "cost": float(s["n_layer"])}

    log = search(tmp_path, evaluate, baseline={**BASE, "lr_decay_iters": 80}, on_plateau="raise_iters",
                 iters_factor=2, steps=3)
    assert [s["outcome"] for s in log["steps"]] == ["raise_iters"] * 3 and log["stop_reason"] == "max_steps"
    assert log["steps"][0]["change"] == {"max_iters": 200, "lr_decay_iters": 160}
    b2 = log["steps"][1]["baseline"]
    assert b2["source"] == "measured" and b2["settings"]["max_iters"] == 200 and b2["objective"] == pytest.approx(0.5)
    assert seen == [(2, 100, 80), (3, 100, 80), (2, 200, 160), (3, 200, 160), (2, 400, 320), (3, 400, 320)]
    with pytest.raises(UserError, match="iters_factor"):
        hs.validate_spec(make_spec(tmp_path, on_plateau="raise_iters", iters_factor=1.0))


# ------------------------------------------------------------------------------ log and resume
class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the search does not record it as a failed run."""


def test_resume_after_a_kill_does_not_rerun_finished_pairs(tmp_path):
    def objective(s, seed):
        return {"objective": 10.0 / (s["n_layer"] * s["n_embd"]) + 0.01 * seed, "cost": float(s["n_layer"] * s["n_embd"])}

    kw = dict(params={"n_layer": 1, "n_embd": 16}, multiples=2, seeds=[1, 2], steps=2)
    reference = search(tmp_path / "ref", objective, **kw)
    total = len({r["out_dir"] for st in reference["steps"]
                 for e in [st["baseline"], *st["candidates"]] for r in e["runs"]})

    first = []

    def dies_at_7(s, seed):  # killed in step 1, in the middle of a candidate (between its two seeds)
        if len(first) == 7:
            raise Killed()
        first.append((s["out_dir"]))
        return objective(s, seed)

    with pytest.raises(Killed):
        search(tmp_path / "run", dies_at_7, **kw)
    on_disk = yaml.safe_load((tmp_path / "run" / "log.yaml").read_text())
    assert on_disk["status"] == "running" and len(on_disk["steps"]) == 1
    partial = [c for c in on_disk["steps"][0]["candidates"] if len(c["runs"]) == 1]
    assert len(partial) == 1 and partial[0]["status"] == "running"

    second = []

    def counting(s, seed):
        second.append(s["out_dir"])
        return objective(s, seed)

    log = search(tmp_path / "run", counting, **kw)
    assert len(first) + len(second) == total and not set(first) & set(second)
    assert [s["chosen"] for s in log["steps"]] == [s["chosen"] for s in reference["steps"]]
    assert log["final"]["settings"] == reference["final"]["settings"]
    # resuming a finished search runs nothing; a larger step budget continues it
    again = []
    search(tmp_path / "run", lambda s, seed: again.append(1) or objective(s, seed), **kw)
    assert again == []
    log = search(tmp_path / "run", lambda s, seed: again.append(1) or objective(s, seed), **{**kw, "steps": 3})
    assert len(log["steps"]) == 3 and 0 < len(again) <= 8  # step 3's candidates only (its baseline is reused)
    # a different search under the same log is refused
    with pytest.raises(UserError, match="different search.*params"):
        search(tmp_path / "run", objective, **{**kw, "params": {"n_layer": 2}})


def test_log_is_rewritten_atomically_after_every_run(tmp_path, monkeypatch):
    writes = []
    real = hs.atomic_write_bytes
    monkeypatch.setattr(hs, "atomic_write_bytes", lambda path, data: (writes.append(path), real(path, data)))
    log_path = tmp_path / "log.yaml"
    checked = []

    def evaluate(s, seed):
        if log_path.exists():  # every finished run is on disk before the next one starts
            on_disk = yaml.safe_load(log_path.read_text())
            done = {r["out_dir"] for st in on_disk["steps"] for e in [st["baseline"], *st["candidates"]]
                    for r in e["runs"] if r["status"] == "completed"}
            checked.append(len(done))
        return {"objective": 1.0 / s["n_layer"] + 0.1 * seed, "cost": float(s["n_layer"])}

    log = search(tmp_path, evaluate, seeds=[1, 2], steps=2)
    assert checked == list(range(len(checked))) and len(checked) == 6  # 2 baseline + 2 x 2 candidate runs
    assert len(writes) >= 6 and set(writes) == {log_path}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reloaded = yaml.safe_load(log_path.read_text())
    assert reloaded["steps"] == json.loads(json.dumps(log["steps"]))
    for key in ("name", "status", "stop_reason", "started_at", "finished_at", "search", "final"):
        assert key in reloaded
    for step in reloaded["steps"]:
        assert step["started_at"] and step["finished_at"]
        for c in step["candidates"]:
            assert {"name", "change", "settings", "runs", "objective", "cost", "improvement", "added_cost",
                    "efficiency", "verdict", "chosen"} <= set(c)
            assert all(r["started_at"] and r["finished_at"] for r in c["runs"])


# ------------------------------------------------------------------------------ CLI and spec files
def test_spec_file_and_flags(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("n_layer: 2\nn_head: 2\nn_embd: 32\nmax_iters: 50\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "baseline": "base.yaml", "preset": "debug", "overrides": {"learning_rate": 0.002},
        "params": {"n_layer": 1, "n_head": 1}, "multiples": 2, "seeds": 2, "cost": "macs", "steps": 4},
        sort_keys=False))
    out = hs.main(["--spec", str(tmp_path / "s.yaml"), "--dry_run", "--", "--max_iters", "7"])
    spec = out["spec"]
    assert spec["name"] == "s" and spec["cost_key"] == "macs_per_token" and spec["seeds"] == [1337, 1338]
    assert spec["params"] == {"n_layer": 1, "n_head": 1} and spec["steps"] == 4
    b = spec["baseline"]
    assert b["max_iters"] == 7 and b["learning_rate"] == 0.002 and b["n_layer"] == 2 and b["batch_size"] == 4
    assert [c["status"] for c in out["candidates"]] == ["pending", "pending", "skipped", "pending"]
    assert spec["log"] == str(Path("hp_search_logs") / "s.yaml")
    assert "n_head=3" in capsys.readouterr().out
    # flags override the spec: --param replaces its params
    out = hs.main(["--spec", str(tmp_path / "s.yaml"), "--dry_run", "--param", "n_embd", "16", "--seeds", "1",
                   "--seed0", "7", "--cost", "iter_latency", "-K", "1", "--name", "x"])
    assert out["spec"]["params"] == {"n_embd": 16} and out["spec"]["seeds"] == [7]
    assert out["spec"]["cost_key"] == "iter_time_ms" and out["spec"]["name"] == "x"
    assert [c["name"] for c in out["candidates"]] == ["n_embd=48"]
    for argv, message in (
            (["--spec", str(tmp_path / "s.yaml"), "--cost", "parms"], "did you mean 'params'"),
            (["--spec", str(tmp_path / "s.yaml"), "--objective", "best_val"], "unknown objective"),
            (["--spec", str(tmp_path / "s.yaml"), "--", "--n_layr", "3"], "did you mean '--n_layer'"),
            (["--baseline", str(tmp_path / "base.yaml")], "no parameters to grow"),
            (["--param", "n_layer", "1"], "no baseline"),
            (["--baseline", str(tmp_path / "nope.yaml"), "--param", "n_layer", "1"], "not found"),
            (["--baseline", str(tmp_path / "base.yaml"), "--param", "n_layer", "x"], "not a number")):
        with pytest.raises(UserError, match=message):
            hs.main(argv)
    (tmp_path / "bad.yaml").write_text("baseline: base.yaml\nparam: {n_layer: 1}\n")
    with pytest.raises(UserError, match="did you mean 'params'"):
        hs.main(["--spec", str(tmp_path / "bad.yaml")])


def test_shipped_search_specs_validate():
    import train_args
    specs = sorted((ROOT / "hp_searches").glob("greedy_*.yaml"))
    baselines = sorted((ROOT / "hp_searches").glob("*_baseline.yaml"))
    assert len(specs) >= 3 and ROOT / "hp_searches" / "cpu_baseline.yaml" in baselines
    for path in specs:
        out = hs.main(["--spec", str(path), "--dry_run"])
        assert any(c["status"] == "pending" for c in out["candidates"]), path.name
    for path in baselines:  # baselines are train.py config files
        settings = train_args.load_config_file(str(path))
        assert train_args.settings_problem(settings) is None and "n_layer" in settings


def test_plot_search_writes_a_png(tmp_path):
    def evaluate(s, seed):
        return {"objective": 1.0 / s["n_layer"] + 0.3 / s["n_embd"], "cost": float(s["n_layer"] * s["n_embd"])}

    search(tmp_path, evaluate, params={"n_layer": 1, "n_embd": 16}, multiples=2, steps=3)
    out = plot_search.main([str(tmp_path / "log.yaml"), "--out", str(tmp_path / "p.png"), "--logx"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["label"] for p in plot_search.trajectory(yaml.safe_load((tmp_path / "log.yaml").read_text()))][0] == "start"
    (tmp_path / "other.yaml").write_text("name: x\nstatus: completed\n")
    with pytest.raises(UserError, match="not a hyperparam_search log"):
        plot_search.main([str(tmp_path / "other.yaml")])


# ------------------------------------------------------------------------------ real training
def test_tiny_real_search_end_to_end(char_data, tmp_path):
    """One step, K=1, one seed: baseline + one candidate, each `python train.py` in a subprocess."""
    (tmp_path / "base.yaml").write_text(f"dataset: {char_data}\ndevice: cpu\n")
    log = hs.main(["--baseline", str(tmp_path / "base.yaml"), "--preset", "debug", "--param", "n_layer", "1",
                   "--steps", "1", "-K", "1", "--seeds", "1", "--log", str(tmp_path / "log.yaml"),
                   "--out_root", str(tmp_path / "runs"), "--", "--max_iters", "6"])
    assert log["stop_reason"] == "max_steps" and log["status"] == "finished"
    step = log["steps"][0]
    b, c = step["baseline"], step["candidates"][0]
    assert b["status"] == "completed" and c["status"] == "completed" and c["name"] == "n_layer=3"
    run = tmp_path / "runs" / "step_1" / "n_layer=3" / "seed_1337"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["n_layer"] == 3 and config["train"]["max_iters"] == 6 and config["train"]["seed"] == 1337
    assert c["objective"] == pytest.approx(summary["best_val_loss"]) and c["cost"] == summary["num_params"]
    assert c["runs"][0]["summary"]["iters"] == 6 and (run / "train.log").exists()
    assert c["added_cost"] > 0 and c["verdict"] in ("improves", "worse", "equal")
    assert plot_search.main([str(tmp_path / "log.yaml"), "--out", str(tmp_path / "p.png")]).exists()


def test_in_process_evaluator_and_a_failing_run(char_data, tmp_path):
    settings = {"dataset": str(char_data), "device": "cpu", **hs.train_args.PRESETS["debug"], "max_iters": 3}
    ev = hs.TrainEvaluator("best_val_loss", "macs_per_token", in_process=True)
    out = ev({**settings, "out_dir": str(tmp_path / "a")}, 5)
    assert out["objective"] == out["summary"]["best_val_loss"] and out["cost"] == out["summary"]["macs_per_token"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["seed"] == 5
    with pytest.raises(hs.RunFailed, match="block_size"):
        ev({**settings, "block_size": 50_000, "out_dir": str(tmp_path / "b")}, 5)


# ------------------------------------------------------------------------------ concurrent runs
def decisions(log: dict) -> list:
    """Everything the search decided and measured, without the times."""
    out = []
    for step in log["steps"]:
        cands = [{k: c.get(k) for k in ("name", "status", "objective", "objective_std", "cost", "improvement",
                                        "added_cost", "efficiency", "verdict", "chosen", "reason")}
                 | {"runs": [(r["seed"], r["status"], r.get("objective"), r.get("error")) for r in c.get("runs", [])]}
                 for c in step["candidates"]]
        out.append((step["index"], step["outcome"], step["chosen"], step["change"], step["baseline"].get("objective"),
                    cands))
    return out + [log["stop_reason"], log["final"]]


def test_concurrent_runs_make_the_decisions_of_the_sequential_order(tmp_path):
    """--jobs 4: a step's candidates x seeds run together and end in a scrambled order (each sleeps a
    pseudo-random time), with one failing seed; the log's decisions equal those of --jobs 1."""
    import random
    import threading
    import time as _time

    def make(record_order):
        lock = threading.Lock()

        def evaluate(settings, seed):
            key = (settings["n_layer"], settings["n_embd"], seed)
            _time.sleep(random.Random(hash(key) % 1000).uniform(0.0, 0.05))
            with lock:
                record_order.append(key)
            if settings["n_embd"] == 96 and seed == 2:
                raise RuntimeError("out of memory")
            return {"objective": 10.0 / settings["n_layer"] + 64.0 / settings["n_embd"] + 0.01 * seed,
                    "cost": settings["n_layer"] * settings["n_embd"]}
        return evaluate

    kw = dict(params={"n_layer": 1, "n_embd": 32}, multiples=2, steps=3, seeds=[1, 2, 3])
    order1, order4 = [], []
    one = search(tmp_path / "one", make(order1), **kw)
    four = hs.run_search(make_spec(tmp_path / "four", jobs=4, **kw), make(order4), console=quiet())
    assert decisions(four) == decisions(one)
    assert sorted(order4) == sorted(order1) and order4 != order1  # the same runs, ended in another order
    assert one["steps"][0]["chosen"] is not None


def test_jobs_and_the_executor_flags_are_checked(tmp_path):
    with pytest.raises(UserError, match="--jobs must be a whole number of at least 1"):
        hs.validate_spec(make_spec(tmp_path, jobs=0))
    with pytest.raises(UserError, match="--in_process trains one run at a time"):
        hs.main(["--preset", "debug", "--param", "n_layer", "1", "--in_process", "--jobs", "2",
                 "--log", str(tmp_path / "l.yaml"), "--out_root", str(tmp_path / "o")])
    with pytest.raises(UserError, match="--partition only apply to --executor submitit"):
        hs.main(["--preset", "debug", "--param", "n_layer", "1", "--partition", "gpu",
                 "--log", str(tmp_path / "l.yaml"), "--out_root", str(tmp_path / "o")])
