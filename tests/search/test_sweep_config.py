"""optimization_and_search/sweep_config.py: exact run lists for every construct, names, validation errors."""
from __future__ import annotations

import json

import pytest

from errors import UserError
from optimization_and_search.launch import train_argv
from optimization_and_search.sweep_config import (build_sweep, expand, load_sweep, range_values, run_names,
                                                  short_keys, value_label)


def runs_of(raw, overrides=None) -> list[dict]:
    return expand(raw, overrides)[0]


def names_of(raw) -> list[str]:
    return [r.name for r in build_sweep(raw, "t").runs]


# ----------------------------------------------------------------------------------- constructs
def test_cartesian_product_and_scalars():
    raw = {"n_layer": [1, 2], "n_head": 2, "dropout": [0.0, 0.1]}
    assert runs_of(raw) == [
        {"n_layer": 1, "n_head": 2, "dropout": 0.0}, {"n_layer": 1, "n_head": 2, "dropout": 0.1},
        {"n_layer": 2, "n_head": 2, "dropout": 0.0}, {"n_layer": 2, "n_head": 2, "dropout": 0.1}]
    sweep = build_sweep(raw, "t")
    assert [r.name for r in sweep.runs] == ["nl-1_dropout-0", "nl-1_dropout-0.1", "nl-2_dropout-0", "nl-2_dropout-0.1"]
    assert sweep.varied == ["n_layer", "dropout"] and sweep.fixed == {"n_head": 2}


def test_ranges_inclusive_ints_and_floats():
    assert range_values({"start": 1, "end": 5, "step": 2}) == [1, 3, 5]
    assert range_values({"start": 1, "end": 6, "step": 2}) == [1, 3, 5]
    assert range_values({"start": 2, "end": 4}) == [2, 3, 4]
    assert range_values({"start": 0.0, "end": 0.3, "step": 0.1}) == [0.0, 0.1, 0.2, 0.3]
    assert range_values({"start": 8, "end": 2, "step": -3}) == [8, 5, 2]
    assert runs_of({"n_layer": {"range": {"start": 1, "end": 3}}}) == [{"n_layer": 1}, {"n_layer": 2}, {"n_layer": 3}]
    assert runs_of({"dropout": {"range": {"start": 0.1, "end": 0.2, "step": 0.05}}}) == [
        {"dropout": 0.1}, {"dropout": 0.15}, {"dropout": 0.2}]
    assert runs_of({"n_layer": [1, {"range": {"start": 4, "end": 8, "step": 4}}]}) == [
        {"n_layer": 1}, {"n_layer": 4}, {"n_layer": 8}]
    with pytest.raises(UserError, match="never reaches"):
        range_values({"start": 1, "end": 5, "step": -1})
    with pytest.raises(UserError, match="never reaches"):
        range_values({"start": 1, "end": 5, "step": 0})
    with pytest.raises(UserError, match="range takes start, end and step"):
        range_values({"start": 1, "stop": 5})
    with pytest.raises(UserError, match="must be int"):  # a float range for an int setting
        runs_of({"n_layer": {"range": {"start": 1, "end": 2, "step": 0.5}}})


def test_parameter_groups_union_merge_and_nesting():
    raw = {"n_layer": 2, "n_head": [2, 4],
           "parameter_groups": [
               {"softmax_variant_attn": "softmax"},
               {"softmax_variant_attn": "consmax", "n_layer": 3,   # the group wins over the base
                "parameter_groups": [{"consmax_beta_init": [1.0, 2.0]}, {"consmax_gamma_init": 50.0}]}]}
    assert runs_of(raw) == [
        {"n_layer": 2, "n_head": 2, "softmax_variant_attn": "softmax"},
        {"n_layer": 2, "n_head": 4, "softmax_variant_attn": "softmax"},
        {"n_layer": 3, "n_head": 2, "softmax_variant_attn": "consmax", "consmax_beta_init": 1.0},
        {"n_layer": 3, "n_head": 2, "softmax_variant_attn": "consmax", "consmax_beta_init": 2.0},
        {"n_layer": 3, "n_head": 4, "softmax_variant_attn": "consmax", "consmax_beta_init": 1.0},
        {"n_layer": 3, "n_head": 4, "softmax_variant_attn": "consmax", "consmax_beta_init": 2.0},
        {"n_layer": 3, "n_head": 2, "softmax_variant_attn": "consmax", "consmax_gamma_init": 50.0},
        {"n_layer": 3, "n_head": 4, "softmax_variant_attn": "consmax", "consmax_gamma_init": 50.0}]
    assert names_of(raw) == [
        "nl-2_nh-2_sva-softmax", "nl-2_nh-4_sva-softmax",
        "nl-3_nh-2_sva-consmax_cbi-1", "nl-3_nh-2_sva-consmax_cbi-2", "nl-3_nh-4_sva-consmax_cbi-1",
        "nl-3_nh-4_sva-consmax_cbi-2", "nl-3_nh-2_sva-consmax_cgi-50", "nl-3_nh-4_sva-consmax_cgi-50"]


def test_common_group_fixed_and_left_out_of_names():
    raw = {"common_group": {"max_iters": 100, "device": "cpu"}, "n_layer": [1, 2]}
    assert runs_of(raw) == [{"max_iters": 100, "device": "cpu", "n_layer": 1},
                            {"max_iters": 100, "device": "cpu", "n_layer": 2}]
    assert names_of(raw) == ["nl-1", "nl-2"]
    # a key set in one group only tells its runs apart (present vs absent); common keys never show
    assert names_of({"common_group": {"max_iters": 100}, "parameter_groups": [{}, {"dropout": 0.1}]}) == [
        "run", "dropout-0.1"]
    with pytest.raises(UserError, match="one fixed value per setting"):
        runs_of({"common_group": {"n_layer": [1, 2]}})
    with pytest.raises(UserError, match="'n_layer' is in common_group and also set elsewhere"):
        runs_of({"common_group": {"n_layer": 2}, "parameter_groups": [{"n_layer": 3}]})
    with pytest.raises(UserError, match="belongs at the top"):
        runs_of({"parameter_groups": [{"common_group": {"n_layer": 2}}]})


def test_named_groups_static_variation_and_alternates():
    named = {"rms": {"norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm"},   # a static bundle
             "gqa": {"n_kv_head": [1, 2]},                                            # a variation bundle
             "rope": {"position_variant": "rope", "rope_theta": [1000.0, 10000.0]},
             "alibi": {"position_variant": "alibi"}}
    assert runs_of({"named_groups": named, "n_head": 4, "use": ["rms", "gqa"]}) == [
        {"n_head": 4, "norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm", "n_kv_head": 1},
        {"n_head": 4, "norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm", "n_kv_head": 2}]
    assert runs_of({"named_groups": named, "use": "rms"}) == [{"norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm"}]
    raw = {"named_groups": named, "n_layer": [1, 2], "alternates": ["rope", "alibi"]}
    assert runs_of(raw) == [
        {"n_layer": 1, "position_variant": "rope", "rope_theta": 1000.0},
        {"n_layer": 1, "position_variant": "rope", "rope_theta": 10000.0},
        {"n_layer": 2, "position_variant": "rope", "rope_theta": 1000.0},
        {"n_layer": 2, "position_variant": "rope", "rope_theta": 10000.0},
        {"n_layer": 1, "position_variant": "alibi"}, {"n_layer": 2, "position_variant": "alibi"}]
    assert names_of(raw) == ["nl-1_pv-rope_rt-1000", "nl-1_pv-rope_rt-10000", "nl-2_pv-rope_rt-1000",
                             "nl-2_pv-rope_rt-10000", "nl-1_pv-alibi", "nl-2_pv-alibi"]
    # several independent choices: the product of the alternatives
    raw = {"named_groups": named, "alternates": [["alibi", "rms"], ["gqa"]], "n_head": 2}
    assert runs_of(raw) == [
        {"n_head": 2, "position_variant": "alibi", "n_kv_head": 1}, {"n_head": 2, "position_variant": "alibi", "n_kv_head": 2},
        {"n_head": 2, "norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm", "n_kv_head": 1},
        {"n_head": 2, "norm_variant": "rmsnorm", "norm_variant_final": "rmsnorm", "n_kv_head": 2}]
    # named groups nest (a group may use another) and are usable inside parameter groups
    nested = {"named_groups": {"base": {"n_layer": 2, "use": ["inner"]}, "inner": {"n_embd": [32, 64]}},
              "parameter_groups": [{"use": ["base"]}, {"n_layer": 4}]}
    assert runs_of(nested) == [{"n_layer": 2, "n_embd": 32}, {"n_layer": 2, "n_embd": 64}, {"n_layer": 4}]


def test_named_group_errors_and_warnings():
    with pytest.raises(UserError, match="unknown named group 'rsm'; did you mean 'rms'"):
        runs_of({"named_groups": {"rms": {"norm_variant": "rmsnorm"}}, "use": ["rsm"]})
    with pytest.raises(UserError, match=r"uses itself \(a -> b -> a\)"):
        runs_of({"named_groups": {"a": {"use": "b"}, "b": {"use": "a"}}, "use": "a"})
    with pytest.raises(UserError, match="named_groups.rms.norm_varient: unknown setting 'norm_varient'"):
        runs_of({"named_groups": {"rms": {"norm_varient": "rmsnorm"}}, "use": "rms"})
    _, _, warnings = expand({"named_groups": {"unused": {"n_layer": 1}}, "n_head": 2})
    assert warnings == ["named group 'unused' is defined but never used"]


def test_conditionals():
    raw = {"softmax_variant_attn": ["softmax", "consmax", "strongermax"], "n_layer": [1, 2],
           "conditionals": [
               {"when": {"softmax_variant_attn": "consmax"}, "set": {"consmax_beta_init": [1.0, 2.5]}},
               {"when": {"softmax_variant_attn": "strongermax", "n_layer": 2}, "set": {"strongermax_base": 3.0}},
               {"when": {"softmax_variant_attn": ["consmax", "strongermax"]}, "set": {"dropout": 0.1}}]}
    assert runs_of(raw) == [
        {"softmax_variant_attn": "softmax", "n_layer": 1},
        {"softmax_variant_attn": "softmax", "n_layer": 2},
        {"softmax_variant_attn": "consmax", "n_layer": 1, "consmax_beta_init": 1.0, "dropout": 0.1},
        {"softmax_variant_attn": "consmax", "n_layer": 1, "consmax_beta_init": 2.5, "dropout": 0.1},
        {"softmax_variant_attn": "consmax", "n_layer": 2, "consmax_beta_init": 1.0, "dropout": 0.1},
        {"softmax_variant_attn": "consmax", "n_layer": 2, "consmax_beta_init": 2.5, "dropout": 0.1},
        {"softmax_variant_attn": "strongermax", "n_layer": 1, "dropout": 0.1},
        {"softmax_variant_attn": "strongermax", "n_layer": 2, "strongermax_base": 3.0, "dropout": 0.1}]
    # a later conditional sees what an earlier one set
    chained = {"n_layer": [1, 2], "conditionals": [{"when": {"n_layer": 2}, "set": {"n_head": 4}},
                                                     {"when": {"n_head": 4}, "set": {"n_embd": 64}}]}
    assert runs_of(chained) == [{"n_layer": 1}, {"n_layer": 2, "n_head": 4, "n_embd": 64}]
    # conditions compare normalised values: registry names in any spelling, floats written as strings
    assert runs_of({"learning_rate": ["1e-3", 2e-3], "conditionals": [
        {"when": {"learning_rate": 0.001}, "set": {"warmup_iters": 5}}]}) == [
        {"learning_rate": 0.001, "warmup_iters": 5}, {"learning_rate": 0.002}]


def test_conditional_errors():
    with pytest.raises(UserError, match=r"conditionals\[0\].when.softmax_variant: unknown setting 'softmax_variant' \(not a train.py argument\); "
                                         "did you mean 'softmax_variant_attn'"):
        runs_of({"softmax_variant_attn": ["softmax"], "conditionals": [
            {"when": {"softmax_variant": "softmax"}, "set": {"n_layer": 2}}]})
    with pytest.raises(UserError, match="'n_head' is not set by any run"):
        runs_of({"n_layer": [1, 2], "conditionals": [{"when": {"n_head": 2}, "set": {"n_layer": 3}}]})
    with pytest.raises(UserError, match="unknown softmax 'consmx'; did you mean 'consmax'"):
        runs_of({"softmax_variant_attn": ["softmax"], "conditionals": [
            {"when": {"softmax_variant_attn": "consmx"}, "set": {"n_layer": 2}}]})
    with pytest.raises(UserError, match="a conditional is"):
        runs_of({"n_layer": [1], "conditionals": [{"if": {"n_layer": 1}, "set": {}}]})
    with pytest.raises(UserError, match=r"conditionals\[0\].set.n_layr: unknown setting"):  # checked without a match
        runs_of({"n_layer": [1], "conditionals": [{"when": {"n_layer": 5}, "set": {"n_layr": 2}}]})


def test_everything_combined():
    raw = {
        "common_group": {"preset": "debug", "max_iters": 6},
        "named_groups": {"rms": {"norm_variant": "rmsnorm"}, "ln": {"norm_variant": "layernorm"},
                         "wide": {"n_embd": {"range": {"start": 32, "end": 64, "step": 32}}}},
        "n_head": 2,
        "parameter_groups": [
            {"softmax_variant_attn": "softmax", "alternates": ["rms", "ln"]},
            {"softmax_variant_attn": "consmax", "use": ["wide"],
             "parameter_groups": [{"n_layer": {"range": {"start": 1, "end": 2}}}, {"n_layer": 4, "dropout": 0.1}],
             "conditionals": [{"when": {"n_layer": [2, 4], "n_embd": 64}, "set": {"consmax_beta_init": [1.5, 3.0]}}]},
        ]}
    runs = runs_of(raw)
    common = {"preset": "debug", "max_iters": 6}
    assert runs == [
        {**common, "n_head": 2, "softmax_variant_attn": "softmax", "norm_variant": "rmsnorm"},
        {**common, "n_head": 2, "softmax_variant_attn": "softmax", "norm_variant": "layernorm"},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 32, "n_layer": 1},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 32, "n_layer": 2},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 64, "n_layer": 1},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 64, "n_layer": 2, "consmax_beta_init": 1.5},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 64, "n_layer": 2, "consmax_beta_init": 3.0},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 32, "n_layer": 4, "dropout": 0.1},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 64, "n_layer": 4, "dropout": 0.1,
         "consmax_beta_init": 1.5},
        {**common, "n_head": 2, "softmax_variant_attn": "consmax", "n_embd": 64, "n_layer": 4, "dropout": 0.1,
         "consmax_beta_init": 3.0}]
    sweep = build_sweep(raw, "combo")
    assert [r.name for r in sweep.runs] == [
        "sva-softmax_nv-rmsnorm", "sva-softmax_nv-layernorm", "sva-consmax_ne-32_nl-1", "sva-consmax_ne-32_nl-2",
        "sva-consmax_ne-64_nl-1", "sva-consmax_ne-64_nl-2_cbi-1.5", "sva-consmax_ne-64_nl-2_cbi-3",
        "sva-consmax_ne-32_nl-4_dropout-0.1", "sva-consmax_ne-64_nl-4_cbi-1.5_dropout-0.1",
        "sva-consmax_ne-64_nl-4_cbi-3_dropout-0.1"]  # keys in the order they first appear in the run list
    assert sweep.fixed == {"preset": "debug", "max_iters": 6, "n_head": 2}


# ----------------------------------------------------------------------------------- values
def test_values_are_checked_and_normalised():
    assert runs_of({"softmax_variant_attn": ["ConSmax", "SoftMax"]}) == [
        {"softmax_variant_attn": "consmax"}, {"softmax_variant_attn": "softmax"}]
    assert runs_of({"learning_rate": "1e-3", "dropout": 0}) == [{"learning_rate": 0.001, "dropout": 0.0}]
    # a per-layer list: a list of names is one value, a list of lists several
    assert runs_of({"attention_variant_layerlist": ["causal", "linear"]}) == [
        {"attention_variant_layerlist": ["causal", "linear"]}]
    assert runs_of({"attention_variant_layerlist": [["causal"], ["causal", "linear"]]}) == [
        {"attention_variant_layerlist": ["causal"]}, {"attention_variant_layerlist": ["causal", "linear"]}]
    with pytest.raises(UserError, match=r"n_layr: unknown setting 'n_layr' \(not a train.py argument\); "
                                         "did you mean 'n_layer'"):
        runs_of({"n_layr": [2]})
    with pytest.raises(UserError, match="setting 'n_layer' must be int, got 'two'"):
        runs_of({"n_layer": ["two"]})
    with pytest.raises(UserError, match="setting 'bias' must be bool"):
        runs_of({"bias": [1]})
    with pytest.raises(UserError, match="unknown value for 'dtype' 'float8'"):
        runs_of({"dtype": ["float8"]})
    with pytest.raises(UserError, match="parameter_groups\\[0\\].norm_placement_attn: unknown value"):
        runs_of({"parameter_groups": [{"norm_placement_attn": "middle"}]})
    with pytest.raises(UserError, match="unknown softmax 'consmx'; did you mean 'consmax'"):
        runs_of({"softmax_variant_attn": ["softmax", "consmx"]})
    with pytest.raises(UserError, match="unknown attention 'linaer'"):
        runs_of({"attention_variant_layerlist": [["causal", "linaer"]]})
    with pytest.raises(UserError, match="unknown preset 'cpuu'; did you mean 'cpu'"):
        runs_of({"preset": "cpuu"})
    with pytest.raises(UserError, match="'out_dir' cannot be set in a sweep"):
        runs_of({"out_dir": "x"})
    with pytest.raises(UserError, match="a list of values cannot hold lists"):
        runs_of({"n_layer": [[1, 2]]})


def test_zero_runs_and_duplicates_are_errors():
    with pytest.raises(UserError, match=r"expands to zero runs \(n_layer has no values\)"):
        runs_of({"n_layer": [], "n_head": [2]})
    with pytest.raises(UserError, match=r"expands to zero runs \(parameter_groups\[0\].n_embd has no values\)"):
        runs_of({"n_head": 2, "parameter_groups": [{"n_embd": []}]})
    with pytest.raises(UserError, match="zero runs"):
        runs_of({"parameter_groups": []})
    with pytest.raises(UserError, match="holds the same run twice"):
        build_sweep({"parameter_groups": [{"n_layer": [1, 2]}, {"n_layer": 2}]}, "t")


def test_each_run_is_checked_like_train_py():
    with pytest.raises(UserError, match="run 'ne-30': --n_embd 30 is not divisible by --n_head 4"):
        build_sweep({"n_head": 4, "n_embd": [32, 30]}, "t")


def test_overrides_apply_to_every_run_and_stay_out_of_names():
    sweep = build_sweep({"n_layer": [1, 2], "max_iters": 100}, "t", overrides={"max_iters": "7", "device": "cpu"})
    assert [r.settings for r in sweep.runs] == [{"n_layer": 1, "max_iters": 7, "device": "cpu"},
                                                {"n_layer": 2, "max_iters": 7, "device": "cpu"}]
    assert [r.name for r in sweep.runs] == ["nl-1", "nl-2"]
    with pytest.raises(UserError, match="--set max_iter: unknown setting"):
        build_sweep({"n_layer": [1]}, "t", overrides={"max_iter": 3})


# ----------------------------------------------------------------------------------- names, argv, files
def test_names_are_short_safe_and_deterministic():
    # batch_size and block_size abbreviate alike (bs): both get the longer form
    assert run_names([{"batch_size": 4, "block_size": 8}, {"batch_size": 8, "block_size": 16}]) == [
        "batchs-4_blocks-8", "batchs-8_blocks-16"]
    assert short_keys(["relumax_divisor", "relu2max_divisor", "n_layer", "seed"]) == {
        "relumax_divisor": "relumaxd", "relu2max_divisor": "relu2maxd", "n_layer": "nl", "seed": "seed"}
    assert value_label("dataset", "/tmp/x/hamlet_char") == "hamlet_char"
    assert value_label("config", "runs/my run.yaml") == "my-run"
    assert value_label("attention_variant_layerlist", ["causal", "linear"]) == "causal+linear"
    assert value_label("bias", True) == "true" and value_label("learning_rate", 3e-05) == "3e-05"
    long_runs = [{"softmax_variant_attn_layerlist": ["softmax", "consmax"] * 10 + [s]} for s in ("softmax", "consmax")]
    names = run_names(long_runs)
    assert all(len(n) <= 80 for n in names) and names[0] != names[1] and names == run_names(long_runs)
    assert run_names([{"n_layer": 1}]) == ["run"]


def test_train_argv():
    assert train_argv({"n_layer": 2, "preset": "debug", "bias": False, "compile": True, "learning_rate": 0.001,
                     "attention_variant_layerlist": ["causal", "linear"], "max_seconds": None}) == [
        "--preset", "debug", "--n_layer", "2", "--no-bias", "--compile", "--learning_rate", "0.001",
        "--attention_variant_layerlist", "causal", "linear"]


def test_load_sweep_yaml_and_json(tmp_path):
    (tmp_path / "s.yaml").write_text("n_layer: [1, 2]\ncommon_group:\n  max_iters: 5\n")
    sweep = load_sweep(tmp_path / "s.yaml")
    assert sweep.name == "s" and [r.name for r in sweep.runs] == ["nl-1", "nl-2"]
    (tmp_path / "s.json").write_text(json.dumps({"n_layer": [3]}))
    assert load_sweep(tmp_path / "s.json", name="other").runs[0].settings == {"n_layer": 3}
    with pytest.raises(UserError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("n_layer: [1, 2\n")
    with pytest.raises(UserError, match="cannot be parsed"):
        load_sweep(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("n_layers: [1, 2]\n")
    with pytest.raises(UserError, match=r"sweep file .*typo.yaml: n_layers: unknown setting 'n_layers'"):
        load_sweep(tmp_path / "typo.yaml")


def test_shipped_explorations_are_valid():
    from conftest import ROOT
    files = sorted((ROOT / "explorations").glob("*.yaml"))
    assert files, "explorations/ holds sweep files"
    for f in files:
        sweep = load_sweep(f)
        assert sweep.runs and not sweep.warnings, f


# ----------------------------------------------------------------------------------- seeds
def test_seeds_run_every_configuration_once_per_seed_seed_major():
    sweep = build_sweep({"n_layer": [1, 2], "max_iters": 5, "seeds": [7, 8, 9]}, "t")
    assert (sweep.configs, sweep.seeds, sweep.varied) == (2, [7, 8, 9], ["n_layer"])
    assert sweep.fixed == {"max_iters": 5}
    assert [r.name for r in sweep.runs] == ["nl-1_seed-7", "nl-2_seed-7", "nl-1_seed-8", "nl-2_seed-8",
                                            "nl-1_seed-9", "nl-2_seed-9"]
    assert [(r.config, r.seed) for r in sweep.runs[:3]] == [("nl-1", 7), ("nl-2", 7), ("nl-1", 8)]
    assert sweep.runs[0].settings == {"n_layer": 1, "max_iters": 5, "seed": 7}
    # a count starts at train.py's default seed; a single configuration is `run`
    counted = build_sweep({"n_layer": 1, "seeds": 2}, "t")
    assert [r.name for r in counted.runs] == ["run_seed-1337", "run_seed-1338"] and counted.configs == 1
    # the runner's --seeds replaces the file's
    assert build_sweep({"n_layer": [1], "seeds": 3}, "t", seeds=[5, 6]).seeds == [5, 6]
    assert build_sweep({"n_layer": [1]}, "t", seeds=1).seeds == [1337]
    no_seeds = build_sweep({"n_layer": [1, 2]}, "t")
    assert no_seeds.seeds is None and [(r.name, r.config, r.seed) for r in no_seeds.runs] == [
        ("nl-1", "nl-1", None), ("nl-2", "nl-2", None)]


@pytest.mark.parametrize("raw, seeds, message", [
    ({"n_layer": 1, "seed": [1, 2]}, None, r"'seed' varies between the runs \(1, 2\); give the seeds as the "
                                           r"top-level seeds: \[1, 2\] instead"),
    ({"n_layer": 1, "parameter_groups": [{"seed": 1}, {"seed": 2}]}, None, "'seed' varies between the runs"),
    ({"n_layer": 1, "seed": 5, "seeds": 2}, None, r"the sweep sets 'seed' \(5\) and seeds: gives the seeds"),
    ({"n_layer": 1, "common_group": {"seed": 5}}, 3, r"the sweep sets 'seed' \(5\) and --seeds gives the seeds"),
    ({"n_layer": 1, "seeds": 1337}, None, r"seeds: 1337 is a count of seeds .* list it: \[1337\]"),
    ({"n_layer": 1, "seeds": 0}, None, "a count of seeds must be at least 1"),
    ({"n_layer": 1, "seeds": [1, 1]}, None, "the seeds must differ"),
    ({"n_layer": 1, "seeds": [1, "two"]}, None, r"seeds takes a count \(3: seeds 1337, 1338, 1339\) or a list"),
    ({"n_layer": 1, "seeds": []}, None, "seeds takes a count"),
    ({"n_layer": 1, "parameter_groups": [{"seeds": 2}]}, None, "'seeds' belongs at the top of the sweep file"),
])
def test_seed_errors(raw, seeds, message):
    with pytest.raises(UserError, match=message):
        build_sweep(raw, "t", seeds=seeds)


def test_a_fixed_seed_without_seeds_is_still_a_plain_setting():
    sweep = build_sweep({"n_layer": [1, 2], "seed": 42}, "t")
    assert [r.name for r in sweep.runs] == ["nl-1", "nl-2"] and sweep.fixed == {"seed": 42}
