"""optimization_and_search/greedy_rule.py on hand-computed examples: the mean over seeds, the verdicts and
the choice (ties, better and cheaper, negative cost change, min_improvement, missing or NaN objectives),
the plateau policy, and the candidates a step builds."""
from __future__ import annotations

import math

import pytest

from optimization_and_search import greedy_rule as rule

BASE = {"objective": 2.0, "cost": 10.0, "status": "completed"}


def cand(name, objective, cost, status="completed"):
    return {"name": name, "status": status, "objective": objective, "cost": cost}


def run(seed, objective, cost, status="completed", **kw):
    return {"seed": seed, "status": status, "objective": objective, "cost": cost, **kw}


# ------------------------------------------------------------------------------------ seeds
def test_aggregate_means_over_the_seeds():
    entry = {"runs": [run(1, 1.0, 10.0), run(2, 1.2, 20.0), run(3, 1.4, 30.0)]}
    rule.aggregate(entry, [1, 2, 3])
    assert entry["status"] == "completed"
    assert entry["objective"] == pytest.approx(1.2) and entry["cost"] == pytest.approx(20.0)
    assert entry["objective_std"] == pytest.approx(0.2)  # sample std of 1.0, 1.2, 1.4
    one = {"runs": [run(7, 3.0, 5.0)], "reason": "stale"}
    rule.aggregate(one, [7])
    assert (one["objective"], one["cost"], one["objective_std"]) == (3.0, 5.0, 0.0) and "reason" not in one


def test_aggregate_waits_for_missing_seeds_and_fails_on_a_failed_one():
    pending = {"runs": []}
    rule.aggregate(pending, [1, 2])
    assert pending["status"] == "pending" and "objective" not in pending
    running = {"runs": [run(1, 1.0, 1.0)]}
    rule.aggregate(running, [1, 2])
    assert running["status"] == "running"
    failed = {"runs": [run(1, 1.0, 1.0), {"seed": 2, "status": "failed", "error": "CUDA out of memory"}]}
    rule.aggregate(failed, [1, 2])
    assert failed["status"] == "failed" and failed["reason"] == "seed 2: CUDA out of memory"


def test_aggregate_treats_a_missing_or_nan_objective_as_a_failed_seed():
    nan = {"runs": [run(1, 1.0, 1.0), run(2, float("nan"), 1.0)]}
    rule.aggregate(nan, [1, 2])
    assert nan["status"] == "failed" and nan["reason"] == "seed 2: the objective is not a finite number: nan"
    missing = {"runs": [{"seed": 1, "status": "completed", "objective": 1.0}]}
    rule.aggregate(missing, [1])
    assert missing["status"] == "failed" and missing["reason"] == "seed 1: the cost is not a finite number: None"
    assert nan["runs"][1]["status"] == "completed"  # the runs themselves are left as recorded


# ------------------------------------------------------------------------------------ verdicts
def test_verdicts_by_hand():
    assert rule.verdict(-0.1, 5.0) == "worse"
    assert rule.verdict(-0.1, -5.0) == "worse"        # cheaper but worse: never adopted
    assert rule.verdict(0.0, -5.0) == "equal"
    assert rule.verdict(0.3, 0.0) == "dominates"      # no added cost
    assert rule.verdict(0.3, -4.0) == "dominates"     # negative cost change
    assert rule.verdict(0.3, 4.0) == "improves"
    assert rule.verdict(0.01, -1.0, min_improvement=0.01) == "too_small"  # up to min_improvement: none
    assert rule.verdict(0.02, -1.0, min_improvement=0.01) == "dominates"


def test_efficiency_is_improvement_per_added_cost():
    a = cand("a", 1.5, 20.0)   # improvement 0.5, added 10: 0.05
    b = cand("b", 1.75, 12.0)  # improvement 0.25, added 2: 0.125
    c = cand("c", 1.0, 110.0)  # improvement 1.0, added 100: 0.01
    assert rule.rank_candidates(BASE, [a, b, c]) is b
    assert [x["efficiency"] for x in (a, b, c)] == pytest.approx([0.05, 0.125, 0.01])
    assert [x["improvement"] for x in (a, b, c)] == pytest.approx([0.5, 0.25, 1.0])
    assert [x["added_cost"] for x in (a, b, c)] == pytest.approx([10.0, 2.0, 100.0])
    assert [x["chosen"] for x in (a, b, c)] == [False, True, False]


def test_a_cheaper_and_better_candidate_wins_over_any_ratio():
    steep = cand("steep", 1.0, 11.0)   # improvement 1.0 for 1 unit: efficiency 1.0
    cheap = cand("cheap", 1.9, 8.0)    # improvement 0.1, cost change -2: dominates
    assert rule.rank_candidates(BASE, [steep, cheap]) is cheap
    assert cheap["verdict"] == "dominates" and cheap["efficiency"] is None and cheap["added_cost"] == -2.0
    assert steep["verdict"] == "improves" and steep["efficiency"] == pytest.approx(1.0)
    # among dominating candidates: the larger improvement, then the cheaper
    bigger = cand("bigger", 1.5, 10.0)
    assert rule.rank_candidates(BASE, [cheap, bigger, steep]) is bigger
    same_but_cheaper = cand("same_but_cheaper", 1.5, 9.0)
    assert rule.rank_candidates(BASE, [bigger, same_but_cheaper]) is same_but_cheaper


def test_ties_keep_the_order_of_the_candidates():
    first, second = cand("first", 1.5, 20.0), cand("second", 1.5, 20.0)
    assert rule.rank_candidates(BASE, [first, second]) is first
    assert rule.rank_candidates(BASE, [second, first]) is second
    d1, d2 = cand("d1", 1.8, 9.0), cand("d2", 1.8, 9.0)
    assert rule.rank_candidates(BASE, [d1, d2]) is d1
    # equal efficiency (0.02): the larger improvement wins
    small, large = cand("small", 1.8, 20.0), cand("large", 1.6, 30.0)
    assert rule.rank_candidates(BASE, [small, large]) is large


def test_min_improvement_and_worse_or_equal_are_never_chosen():
    worse_cheap, equal_cheap = cand("worse_cheap", 2.1, 1.0), cand("equal_cheap", 2.0, 1.0)
    small = cand("small", 1.75, 11.0)  # improvement 0.25 (exact in binary, as is the threshold)
    assert rule.rank_candidates(BASE, [worse_cheap, equal_cheap, small], min_improvement=0.25) is None
    assert [c["verdict"] for c in (worse_cheap, equal_cheap, small)] == ["worse", "equal", "too_small"]
    assert not any(c["chosen"] for c in (worse_cheap, equal_cheap, small))
    assert rule.rank_candidates(BASE, [worse_cheap, equal_cheap, small]) is small  # without the threshold


def test_missing_or_nan_objectives_are_never_chosen():
    nan, missing = cand("nan", float("nan"), 5.0), {"name": "missing", "status": "completed", "cost": 5.0}
    inf_cost = cand("inf_cost", 1.0, math.inf)
    good = cand("good", 1.9, 30.0)
    skipped, failed = {"name": "s", "status": "skipped"}, cand("f", 0.1, 1.0, status="failed")
    assert rule.rank_candidates(BASE, [nan, missing, inf_cost, skipped, failed, good]) is good
    assert [c["verdict"] for c in (nan, missing, inf_cost)] == ["no_result"] * 3
    assert nan["improvement"] is None and not nan["chosen"]
    assert "verdict" not in skipped and "verdict" not in failed and not failed["chosen"]
    assert rule.rank_candidates(BASE, [nan]) is None
    with pytest.raises(ValueError, match="baseline"):
        rule.rank_candidates({"objective": float("nan"), "cost": 1.0}, [good])


def test_step_outcome_and_the_plateau_policy():
    assert rule.step_outcome(cand("x", 1.0, 1.0)) == "adopted"
    assert rule.step_outcome(cand("x", 1.0, 1.0), "raise_iters") == "adopted"
    assert rule.step_outcome(None) == "no_improvement"
    assert rule.step_outcome(None, "raise_iters") == "raise_iters"
    with pytest.raises(ValueError):
        rule.step_outcome(None, "continue")
    assert rule.raise_iters({"max_iters": 100, "lr_decay_iters": 80}, 1.5) == {"max_iters": 150, "lr_decay_iters": 120}
    assert rule.raise_iters({"max_iters": 3}, 2.5) == {"max_iters": 8}  # rounded up; no lr_decay_iters added
    assert rule.raise_iters({}, 2.0)["max_iters"] == 10000  # train.py's default (5000) doubled


# ------------------------------------------------------------------------------------ candidates
def test_candidates_by_hand():
    base = {"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1}
    cands = rule.build_candidates(base, {"n_head": 1, "dropout": 0.1}, multiples=2)
    assert [c["name"] for c in cands] == ["n_head=3", "n_head=4", "dropout=0.2", "dropout=0.3"]
    assert [c["status"] for c in cands] == ["skipped", "pending", "pending", "pending"]
    assert "not divisible" in cands[0]["reason"]
    assert cands[1]["change"] == {"n_head": 4} and cands[1]["settings"] == {**base, "n_head": 4}
    assert cands[3]["value"] == 0.3 and type(cands[1]["value"]) is int
    assert rule.grown_value(2, 3, 2) == 8 and rule.grown_value(0.1, 0.1, 2) == pytest.approx(0.3)
    assert rule.base_value({}, "n_layer") == 6 and rule.base_value({"n_layer": None}, "n_layer") == 6  # the default


def test_trajectory_and_final_model_follow_the_adopted_path():
    log = {"steps": [
        {"index": 1, "baseline": {"source": "measured", "status": "completed", "objective": 2.0, "cost": 10.0},
         "outcome": "adopted", "chosen": "n_layer=3",
         "candidates": [cand("n_layer=3", 1.5, 15.0), cand("n_embd=48", 1.8, 14.0)]},
        {"index": 2, "baseline": {"source": "step 1: n_layer=3", "status": "completed"}, "outcome": "raise_iters",
         "candidates": []},
        {"index": 3, "baseline": {"source": "measured", "status": "completed", "objective": 1.2, "cost": 15.0},
         "outcome": "no_improvement", "candidates": []}]}
    assert [(p["step"], p["label"], p["objective"], p["measured"]) for p in rule.trajectory(log)] == [
        (1, "start", 2.0, True), (1, "n_layer=3", 1.5, False), (3, "more iters", 1.2, True)]
    assert rule.trajectory({}) == []
    assert rule.final_model(log) is log["steps"][2]["baseline"]  # measured after the raise: the last word
    assert rule.final_model({"steps": log["steps"][:1]})["name"] == "n_layer=3"
    assert rule.final_model({"steps": []}) is None
