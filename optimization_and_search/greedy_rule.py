"""The greedy efficiency-per-cost method as pure functions: which candidates a step tries, how a
candidate's seeds are combined, which candidate is adopted, and what a plateau does. No I/O: the
driver (hyperparam_search.py) runs the trainings, keeps the log and calls these on its records.

    cands = build_candidates(baseline_settings, {"n_layer": 1, "n_embd": 32}, multiples=2)
    aggregate(cand, seeds=[1, 2])                       # mean objective and cost over the seeds
    chosen = rank_candidates(baseline, cands, min_improvement=0.01)
    outcome = step_outcome(chosen, on_plateau="stop")  # adopted | no_improvement | raise_iters

The rule (the objective is minimised): improvement = baseline objective - candidate objective, added
cost = candidate cost - baseline cost.

* `dominates`: improves by more than min_improvement at no added cost (added cost <= 0). The
  dominating candidate with the largest improvement is adopted outright (then the cheaper one),
  however steep another candidate's ratio.
* `improves`: improves by more than min_improvement at a positive added cost; efficiency =
  improvement / added cost. Without a dominating candidate, the highest efficiency is adopted (then
  the larger improvement).
* never adopted, whatever the cost: `worse` (improvement < 0), `equal` (0), `too_small`
  (0 < improvement <= min_improvement), `no_result` (no finite objective or cost).

Exact ties keep the candidates' order: the first one listed wins. A record is a dict: a baseline or
candidate has `settings`, `runs` (one per seed: seed, status, objective, cost, error) and gets
`status`, `objective`, `objective_std`, `cost`; a ranked candidate gets `improvement`, `added_cost`,
`efficiency` (None unless `improves`), `verdict` and `chosen`. These are the keys of the search log.
"""
from __future__ import annotations

import math

from optimization_and_search.results import spread

ON_PLATEAU = ("stop", "raise_iters")


# ------------------------------------------------------------------------------------ candidates
def base_value(settings: dict, name: str):
    """The value a run with these settings trains with: the setting, else train.py's default."""
    import train_args  # in the functions that need it: analysis/plot_search.py reads trajectory() without torch
    return settings[name] if settings.get(name) is not None else train_args.setting(name).default


def layerlist_keys() -> list[str]:
    import train_args
    return [s.name for s in train_args.schema().values() if s.layerlist_of]


def with_value(settings: dict, name: str, value) -> dict:
    """settings with `name` set to `value`; a new n_layer rewrites every per-layer list the settings hold
    (written out per layer, cycling as the model does, then the last layer's entry repeated)."""
    new = dict(settings)
    new[name] = value
    if name == "n_layer":
        old = base_value(settings, "n_layer")
        for key in layerlist_keys():
            lst = settings.get(key)
            if lst:
                per_layer = [lst[i % len(lst)] for i in range(old)]
                new[key] = (per_layer + [per_layer[-1]] * max(0, value - old))[:max(value, 0)]
    return new


def grown_value(base, increment, multiple: int):
    if isinstance(base, int) and isinstance(increment, int):
        return base + multiple * increment
    return round(float(base) + multiple * float(increment), 12)  # 0.1 + 0.2 -> 0.3, not 0.30000000000000004


def build_candidates(settings: dict, params: dict, multiples: int) -> list[dict]:
    """One record per (parameter, multiple): name, change, settings, status pending, or skipped with the
    reason train.py would refuse the settings for."""
    import train_args
    out = []
    for name, inc in params.items():
        base = base_value(settings, name)
        for m in range(1, multiples + 1):
            value = grown_value(base, inc, m)
            new = with_value(settings, name, value)
            change = {k: v for k, v in new.items() if settings.get(k) != v}
            cand = {"name": f"{name}={value}", "param": name, "multiple": m, "value": value, "change": change,
                    "settings": new, "status": "pending", "runs": []}
            problem = train_args.settings_problem(new)
            if problem:
                cand.update(status="skipped", reason=problem)
            out.append(cand)
    return out


def raise_iters(settings: dict, factor: float) -> dict:
    """settings with max_iters (and lr_decay_iters, when set) multiplied by factor."""
    new = dict(settings)
    for key in ("max_iters", "lr_decay_iters"):
        value = settings.get(key) if key == "lr_decay_iters" else base_value(settings, key)
        if value is not None:
            new[key] = int(math.ceil(value * factor))
    return new


# ------------------------------------------------------------------------------------ the decision
def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _run_problem(run: dict) -> str | None:
    """Why a seed's run gives no usable result, or None."""
    if run["status"] == "failed":
        return run.get("error", "failed")
    bad = next((k for k in ("objective", "cost") if not finite(run.get(k))), None)
    return f"the {bad} is not a finite number: {run.get(bad)!r}" if bad and run["status"] == "completed" else None


def aggregate(entry: dict, seeds: list) -> None:
    """Mean objective and cost over the seeds of a baseline or candidate record, and its status: failed
    when a seed failed (or gave no finite number), running/pending while seeds are missing.

    The statistics are results.spread, the arithmetic of a sweep's results.aggregate_by_config (mean,
    sample standard deviation). The policy differs on purpose: a sweep leaves a failed seed out and
    counts it, while here one failed seed fails the candidate, because the rule compares means over the
    same seeds (a mean over fewer seeds would be a different, noisier measurement)."""
    runs = {r["seed"]: r for r in entry["runs"]}
    failed = next(((r["seed"], p) for r in entry["runs"] if (p := _run_problem(r))), None)
    if failed:
        entry.update(status="failed", reason=f"seed {failed[0]}: {failed[1]}")
        return
    if any(s not in runs for s in seeds):
        entry["status"] = "running" if entry["runs"] else "pending"
        return
    objs = spread(runs[s]["objective"] for s in seeds)
    entry.update(status="completed", objective=objs["mean"], cost=spread(runs[s]["cost"] for s in seeds)["mean"],
                 objective_std=objs["std"] if objs["std"] is not None else 0.0)  # one seed: 0, as logs have held
    entry.pop("reason", None)


def verdict(improvement: float, added_cost: float, min_improvement: float = 0.0) -> str:
    """worse, equal, too_small, dominates or improves (see the module docstring)."""
    if improvement < 0:
        return "worse"
    if improvement == 0:
        return "equal"
    if improvement <= min_improvement:
        return "too_small"
    return "dominates" if added_cost <= 0 else "improves"


def rank_candidates(baseline: dict, candidates: list[dict], min_improvement: float = 0.0) -> dict | None:
    """Mark each completed candidate with improvement, added_cost, efficiency, verdict and chosen; return
    the one to adopt, or None. Dominating candidates win outright, the largest improvement first (then the
    cheaper); otherwise the highest efficiency (then the larger improvement); ties: the first listed."""
    if not (finite(baseline.get("objective")) and finite(baseline.get("cost"))):
        raise ValueError(f"the baseline has no finite objective and cost to compare with: {baseline!r}")
    dominating, improving = [], []
    for c in candidates:
        c["chosen"] = False
        if c.get("status") != "completed":
            continue
        if not (finite(c.get("objective")) and finite(c.get("cost"))):
            c.update(improvement=None, added_cost=None, efficiency=None, verdict="no_result")
            continue
        imp = baseline["objective"] - c["objective"]
        added = c["cost"] - baseline["cost"]
        c.update(improvement=imp, added_cost=added, efficiency=None, verdict=verdict(imp, added, min_improvement))
        if c["verdict"] == "dominates":
            dominating.append(c)  # efficiency infinite: logged as null
        elif c["verdict"] == "improves":
            c["efficiency"] = imp / added
            improving.append(c)
    best = None
    if dominating:
        best = max(dominating, key=lambda c: (c["improvement"], -c["added_cost"]))
    elif improving:
        best = max(improving, key=lambda c: (c["efficiency"], c["improvement"]))
    if best is not None:
        best["chosen"] = True
    return best


def step_outcome(chosen: dict | None, on_plateau: str = "stop") -> str:
    """adopted (a candidate was chosen), else what the plateau policy does: raise_iters (the next step
    trains the same model longer) or no_improvement (the search stops)."""
    if on_plateau not in ON_PLATEAU:
        raise ValueError(f"on_plateau must be one of {ON_PLATEAU}, got {on_plateau!r}")
    if chosen is not None:
        return "adopted"
    return "raise_iters" if on_plateau == "raise_iters" else "no_improvement"


def final_model(log: dict) -> dict | None:
    """The record a search log ends with: the candidate adopted last, else the last measured baseline."""
    for step in reversed(log.get("steps") or []):
        if step.get("outcome") == "adopted":
            return next(c for c in step["candidates"] if c["name"] == step["chosen"])
        if step["baseline"].get("status") == "completed":
            return step["baseline"]
    return None


def trajectory(log: dict) -> list[dict]:
    """The adopted path of a search log: the measured baselines and each adopted candidate, in order."""
    points = []
    for step in log.get("steps") or []:
        b = step.get("baseline") or {}
        if b.get("source") == "measured" and b.get("status") == "completed":
            points.append({"step": step["index"], "label": "start" if not points else "more iters",
                           "objective": b["objective"], "cost": b["cost"], "measured": True})
        if step.get("outcome") == "adopted":
            c = next(c for c in step["candidates"] if c["name"] == step["chosen"])
            points.append({"step": step["index"], "label": c["name"], "objective": c["objective"],
                           "cost": c["cost"], "measured": False})
    return points
