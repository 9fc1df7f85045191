"""train_args: flags derived from the dataclasses, precedence of presets, config files and flags."""
from __future__ import annotations

import json

import pytest

import train_args
from errors import UserError
from gpt_conf import GPTConfig
from train_args import PRESETS, TrainConfig, parse_args
from variations.registry import names


def test_every_field_is_a_flag_with_help():
    parser = train_args.build_parser()
    dests = {a.dest: a for a in parser._actions}
    for cls in (GPTConfig, TrainConfig):
        for name, f in cls.__dataclass_fields__.items():
            assert name in dests, name
            assert dests[name].help and f.metadata["help"] in dests[name].help


def test_precedence_defaults_preset_config_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("n_layer: 7\nlearning_rate: 0.002\nbatch_size: 5\n")
    s = parse_args(["--preset", "cpu", "--config", str(cfg), "--batch_size", "3"])
    assert s.model["n_embd"] == PRESETS["cpu"]["n_embd"]  # preset
    assert s.model["n_layer"] == 7  # config file over preset
    assert s.train["learning_rate"] == 0.002
    assert s.train["batch_size"] == 3  # flag over config file
    tc = TrainConfig(**s.train)
    assert tc.beta2 == PRESETS["cpu"]["beta2"] and tc.weight_decay == 0.1  # preset, default


def test_json_config_and_bool_flags(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"bias": True, "compile": False, "dropout": 0}))
    s = parse_args(["--config", str(cfg), "--no-bias"])
    assert s.model == {"bias": False, "dropout": 0.0}
    assert s.train == {"compile": False}
    assert parse_args(["--decay_lr"]).train == {"decay_lr": True}


def test_only_given_settings_are_recorded():
    assert parse_args([]).model == {} and parse_args([]).train == {}


@pytest.mark.parametrize("text,message", [
    ("n_layers: 3\n", "unknown setting 'n_layers'; did you mean 'n_layer'?"),
    ("dtype: fp16\n", "unknown value for 'dtype' 'fp16'"),
    ("bias: 1\n", "'bias' must be bool"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("n_layer: [\n", "cannot be parsed"),
])
def test_config_file_errors(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError) as e:
        parse_args(["--config", str(cfg)])
    assert message in str(e.value) and str(cfg) in str(e.value)


def test_missing_config_file():
    with pytest.raises(UserError, match="config file nope.yaml not found"):
        parse_args(["--config", "nope.yaml"])


def test_presets_are_valid():
    for name, preset in PRESETS.items():
        s = parse_args(["--preset", name])
        GPTConfig(vocab_size=65, **s.model)
        TrainConfig(**s.train)
    cpu = PRESETS["cpu"]  # nanoGPT's CPU settings
    assert (cpu["n_layer"], cpu["n_head"], cpu["n_embd"], cpu["block_size"], cpu["batch_size"]) == (4, 4, 128, 64, 12)
    g = PRESETS["gpt2"]
    assert (g["n_layer"], g["n_head"], g["n_embd"], g["block_size"]) == (12, 12, 768, 1024)


def test_flags_are_not_abbreviated():
    with pytest.raises(UserError, match="unknown flag '--n_lay'"):
        parse_args(["--n_lay", "3"])


# ---------------------------------------------------------------- the settings schema
def test_the_schema_describes_every_setting():
    schema = train_args.schema()
    owners = [spec.owner for spec in schema.values()]
    assert owners == sorted(owners)  # model settings first, then training settings
    lr = schema["learning_rate"]
    assert (lr.owner, lr.type, lr.group, lr.default) == ("train", float, "training", 6e-4)
    assert schema["softmax_variant_attn"].choices == names("softmax")
    assert schema["dtype"].choices == ["auto", "float32", "bfloat16", "float16"]
    assert schema["attention_variant_layerlist"].layerlist_of == "attention_variant"


@pytest.mark.parametrize("name, value, expected", [
    ("learning_rate", "1e-3", 1e-3),          # YAML reads 1e-3 as a string
    ("learning_rate", 3, 3.0),                # ints become floats
    ("n_layer", "4", 4),
    ("softmax_variant_attn", "ConSmax", "consmax"),  # registry names are normalised
    ("attention_variant_layerlist", "causal Linear", ["causal", "linear"]),
    ("decay_lr", False, False),
    ("min_lr", None, None),
])
def test_check_accepts_and_normalises(name, value, expected):
    assert train_args.check(name, value) == expected


@pytest.mark.parametrize("name, value, message", [
    ("learning_rate", "fast", "setting 'learning_rate' must be float, got 'fast'"),
    ("n_layer", 2.5, "setting 'n_layer' must be int"),
    ("decay_lr", "yes", "setting 'decay_lr' must be bool"),
    ("softmax_variant_attn", "consmx", "unknown softmax 'consmx'; did you mean 'consmax'?"),
    ("dtype", "fp16", "unknown value for 'dtype' 'fp16'"),
    ("attention_variant_layerlist", [], "must be a non-empty list of names"),
    ("learnng_rate", 1.0, "unknown setting 'learnng_rate'; did you mean 'learning_rate'?"),
])
def test_check_rejects_with_one_line(name, value, message):
    with pytest.raises(UserError) as e:
        train_args.check(name, value, "sweep.yaml: run 3")
    assert message in str(e.value) and str(e.value).startswith("sweep.yaml: run 3: ")
    assert "\n" not in str(e.value)


def test_flags_config_files_and_launch_args_share_the_check(tmp_path):
    (tmp_path / "c.yaml").write_text("softmax_variant_attn: ConSmax\nlearning_rate: 1e-3\n")
    s = train_args.parse_args(["--config", str(tmp_path / "c.yaml")])
    assert s.model["softmax_variant_attn"] == "consmax" and s.train["learning_rate"] == 1e-3
    with pytest.raises(UserError, match="unknown softmax 'consmx'"):
        train_args.parse_args(["--softmax_variant_attn", "consmx"])
    assert train_args.check_launch_arg("preset", "cpu") == "cpu"
    with pytest.raises(UserError, match="unknown preset 'cpuu'; did you mean 'cpu'?"):
        train_args.check_launch_arg("preset", "cpuu")
    with pytest.raises(UserError, match="config file .* not found"):
        train_args.check_launch_arg("config", str(tmp_path / "none.yaml"))


def test_settings_problem_checks_combinations():
    assert train_args.settings_problem({"n_layer": 2, "n_head": 2, "n_embd": 32}) is None
    assert "n_embd" in train_args.settings_problem({"n_head": 3, "n_embd": 32})
    assert "'learning_rate' must be positive, got -1.0" in train_args.settings_problem({"learning_rate": -1.0})


# ---------------------------------------------------------------- declared ranges (issue 12)
@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number, got inf"),
    (["--dropout", "nan"], "--dropout must be a finite number, got nan"),
    (["--weight_decay=-inf"], "--weight_decay must be a finite number, got -inf"),
    (["--beta1", "2"], "--beta1 must be in [0, 1), got 2.0"),
    (["--beta2", "-1"], "--beta2 must be in [0, 1), got -1.0"),
    (["--learning_rate", "0"], "--learning_rate must be positive, got 0.0"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--n_layer", "0"], "--n_layer must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--max_iters", "-1"], "--max_iters must be at least 0, got -1"),
    (["--batch_size", "1e8"], "--batch_size must be int, got '1e8' (an int is written in digits: 100000000)"),
])
def test_flags_refuse_non_finite_and_out_of_range_values(flags, message):
    with pytest.raises(UserError) as e:
        parse_args(flags)
    assert str(e.value) == f"{message} (python train.py --help lists every flag)"


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta1=2.0), "--beta1 must be in [0, 1), got 2.0"),
    (dict(learning_rate=float("nan")), "--learning_rate must be a finite number, got nan"),
    (dict(batch_size=0), "--batch_size must be at least 1, got 0"),
    (dict(sft_val_fraction=1.0), "--sft_val_fraction must be in [0, 1), got 1.0"),
    (dict(batch_size=1e8), "--batch_size must be int, got 100000000.0 (an int is written in digits: 100000000)"),
])
def test_train_config_checks_each_value_by_its_metadata(kwargs, message):
    with pytest.raises(UserError) as e:
        TrainConfig(**kwargs)
    assert str(e.value) == message


def test_every_float_setting_refuses_nan_and_infinity(tmp_path):
    floats = [s.name for s in train_args.schema().values() if s.type is float]
    assert {"learning_rate", "dropout", "beta1", "rope_theta"} <= set(floats)  # knobs included
    for name in floats:
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(UserError, match=rf"^setting '{name}' must be a finite number, got "):
                train_args.check(name, text)
    (tmp_path / "c.yaml").write_text("beta2: .nan\n")
    with pytest.raises(UserError, match=r"c.yaml: setting 'beta2' must be a finite number, got nan$"):
        parse_args(["--config", str(tmp_path / "c.yaml")])


def test_ranges_are_declared_in_the_metadata():
    schema = train_args.schema()
    assert dict(schema["beta1"].bounds) == {"minimum": 0.0, "below": 1.0}
    assert dict(schema["n_layer"].bounds) == {"minimum": 1}
    assert dict(schema["learning_rate"].bounds) == {"above": 0.0}


# ---------------------------------------------------------------- memory estimate (issue 12)
def test_a_run_beyond_the_devices_memory_is_refused():
    model = GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=32)
    train_args.check_fits(model, TrainConfig(batch_size=12, device="cpu"))  # ~ MBs
    with pytest.raises(UserError, match=r"^--batch_size 100000000 x --block_size 32 .* needs at least [\d,.]+ GiB, "
                                        r"more than the [\d,.]+ GiB of cpu; lower --batch_size"):
        train_args.check_fits(model, TrainConfig(batch_size=100_000_000, device="cpu"))
    big = GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=1 << 20, block_size=32)  # 2^40 parameters
    with pytest.raises(UserError, match="needs at least"):
        train_args.check_fits(big, TrainConfig(batch_size=1, device="cpu"))
    # gradient checkpointing and FSDP lower the estimate
    from gpt_conf import estimate_train_bytes
    assert estimate_train_bytes(model, 8, gradient_checkpointing=True) < estimate_train_bytes(model, 8)
    assert estimate_train_bytes(model, 8, shards=4) < estimate_train_bytes(model, 8)
