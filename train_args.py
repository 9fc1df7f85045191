"""Command-line and config-file settings of train.py, derived from the config dataclasses.

Model flags come from `GPTConfig` (gpt_conf.py), training flags from `TrainConfig` below; each flag
is spelled as its field and documented by the field's help text, and component choices come from
the registry. Precedence, lowest to highest:

    field defaults  <  --preset NAME  <  --config FILE.yaml|json  <  flags on the command line

    python train.py --preset cpu --softmax_variant_attn consmax --max_iters 500
    python train.py --config my_run.yaml --n_layer 8
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path


from errors import ArgumentParser, UserError, unknown_name_message
from io_utils import read_data_file
from devices import DTYPES, choose_device
from activation_stats import parse_range
from gpt_conf import BOUNDS, GPTConfig, base_type, check_value, estimate_train_bytes
from variations.registry import all_knobs, check_training_settings

INIT_FROM = ("scratch", "resume")  # or a run directory / checkpoint file to take the weights from


def _f(default, help: str, group: str, **meta):
    return field(default=default, metadata={"help": help, "group": group, **meta})


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = _f("shakespeare_char", "data set: a folder under data/ or a path holding train.bin, val.bin, meta.json", "data")
    # --- training ---
    batch_size: int = _f(12, "sequences per micro-batch (per process); a run whose estimated memory "
                         "(gpt_conf.estimate_train_bytes) exceeds the device's is refused before it starts",
                         "training", minimum=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimiser step, summed over all processes", "training",
                                          minimum=1)
    max_iters: int = _f(5000, "optimiser steps to train for", "training", minimum=0)
    max_seconds: float = _f(None, "stop after this much wall time (seconds, summed over resumes)", "training", above=0.0)
    max_tokens: int = _f(None, "stop after this many training tokens", "training", minimum=1)
    optimizer: str = _f("adamw", "optimiser (variations/optimizer.py; its knobs: the 'optimizer and schedule' group)",
                        "training", registry="optimizer")
    lr_schedule: str = _f("cosine", "learning-rate schedule after the warmup (variations/lr_schedule.py; draw one: "
                          "python -m analysis.plot_lr_schedule)", "training", registry="lr_schedule")
    learning_rate: float = _f(6e-4, "peak learning rate", "training", above=0.0)
    min_lr: float = _f(None, "final learning rate of the decay (cosine, linear, wsd); default learning_rate / 10",
                       "training", minimum=0.0)
    warmup_iters: int = _f(100, "linear warmup steps", "training", minimum=0)
    lr_decay_iters: int = _f(None, "step where the decay reaches min_lr; default max_iters", "training",
                              minimum=1)
    decay_lr: bool = _f(True, "warmup + --lr_schedule (off: constant learning_rate from step 0)", "training")
    weight_decay: float = _f(0.1, "weight decay (matrices and embeddings only): decoupled for adamw, lion, "
                             "adafactor, muon; an L2 term for adam and sgd", "training", minimum=0.0)
    beta1: float = _f(0.9, "beta1 of adamw, adam, lion (and muon's AdamW part)", "training", minimum=0.0, below=1.0)
    beta2: float = _f(0.95, "beta2 of adamw, adam, lion (and muon's AdamW part)", "training", minimum=0.0, below=1.0)
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)", "training", minimum=0.0)
    patience: int = _f(None, "early stopping: evaluations without a better val loss before stopping", "training",
                        minimum=1)
    allow_nonfinite_loss: bool = _f(False, "keep training when the loss becomes nan or inf (to study divergence); by "
                                    "default the run stops there with status failed (checked at log steps and "
                                    "evaluations, where the loss is read anyway)", "training")
    seed: int = _f(1337, "random seed (weights, dropout, batches)", "training")
    init_from: str = _f("scratch", "scratch: a new model; resume: continue the run in out_dir from ckpt_last.pt; "
                        "RUN (a run directory or checkpoint file): start from its weights, model config and tokenizer "
                        "with a fresh optimiser and step count (fine-tuning, continued pre-training); gpt2, "
                        "gpt2-medium, gpt2-large, gpt2-xl (the local Hugging Face cache) or a Hugging Face GPT-2 folder "
                        "or .safetensors file: OpenAI's GPT-2 weights (pretrained.py)", "training")
    # --- supervised fine-tuning ---
    sft_data: str = _f(None, "JSONL file of {prompt, completion} or {messages} lines: fine-tune on the assistant's "
                       "tokens only (losses are on completion tokens); usually with --init_from RUN", "fine-tuning")
    sft_val_fraction: float = _f(0.1, "share of the SFT examples held out for validation (fixed split, at least one; 0: none, no validation)", "fine-tuning",
                                     minimum=0.0, below=1.0)
    sft_pack: bool = _f(True, "pack several whole SFT examples into each block_size row (off: one per row, padded)", "fine-tuning")
    # --- logging and output ---
    out_dir: str = _f(None, "run directory; default out/<dataset>", "logging")
    overwrite: bool = _f(False, "start from scratch in an out_dir that already holds a run, replacing it", "logging")
    eval_interval: int = _f(250, "evaluate (and checkpoint) every this many steps", "logging", minimum=1)
    eval_iters: int = _f(20, "batches per split in each evaluation", "logging", minimum=1)
    log_interval: int = _f(10, "log the training loss every this many steps", "logging", minimum=1)
    print_cost: bool = _f(False, "print the hardware cost per component before training: operation counts (MACs, "
                          "exp, div, ... per token) and the PPA estimate on --ppa_target (energy, latency, area)",
                          "logging")
    activation_stats_interval: int = _f(None, "record activation statistics (abs max, RMS, kurtosis, share outside "
                                        "--activation_stats_range) per layer and site every this many steps, on the "
                                        "training batch, to OUT_DIR/activation_stats.jsonl (activation_stats.py); "
                                        "unset: no hooks at all", "logging", minimum=1)
    activation_stats_range: str = _f("8:4", "BITS:POINT, the signed fixed-point format whose overflow the activation "
                                     "statistics count (8:4 holds -8 .. 7.9375)", "logging")
    tensorboard: bool = _f(False, "also write the logged scalars (losses, lr, tokens/s, MFU) to OUT_DIR/tensorboard/ "
                           "(needs: pip install tensorboard)", "logging")
    # --- hardware estimate (ppa/estimate.py; written to summary.json) ---
    ppa_target: str = _f("edge_int8", "hardware target of the energy/latency/area estimates: a name from ppa/targets/ "
                         "(analysis/cost_report.py --list) or a target YAML file", "hardware estimate")
    ppa_tech: str = _f(None, "technology table of the estimates: a name from ppa/tech/ or a YAML file; default the "
                       "target's own, else horowitz45", "hardware estimate")
    ppa_format: str = _f(None, "number format of the operations the configuration does not quantise (fp32, bf16, "
                         "fp16, fp8, int8, ...); default an accelerator target's native format, else --dtype",
                         "hardware estimate")
    # --- system ---
    device: str = _f("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps", "system")
    dtype: str = _f("auto", "auto: bfloat16 on CUDA that supports it, float16 on other CUDA, else float32", "system", choices=DTYPES)
    compile: bool = _f(False, "torch.compile the model", "system")
    peak_flops: float = _f(None, "device peak FLOP/s for MFU; default from a table of common GPUs", "system", above=0.0)
    threads: int = _f(None, "CPU threads of torch's intra-op work (torch.set_num_threads); default: torch's own "
                      "(one per core). On a shared or busy machine give the number of free cores: threads that "
                      "wait for a busy core slow every step", "system", minimum=1)
    gradient_checkpointing: bool = _f(False, "recompute each block's activations in the backward pass instead of "
                                      "storing them: activation memory of one block, ~1/3 more compute", "system")
    fsdp: bool = _f(False, "under torchrun: shard weights, gradients and optimiser state over the processes "
                    "(FSDP2 fully_shard per block) instead of replicating them (DDP)", "system")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # each value, by the same check as flags and config files (its metadata)
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), base_type(hints[f.name]), f.metadata,
                                              flag=True))
        if self.min_lr is None:
            self.min_lr = self.learning_rate / 10
        check_training_settings(self)  # --optimizer and --lr_schedule with their knobs
        parse_range(self.activation_stats_range)
        if self.activation_stats_interval and self.compile:
            raise UserError("--activation_stats_interval records through forward hooks, which --compile would "
                            "recompile around at every recorded step; drop one of them")
        if self.out_dir is None:
            self.out_dir = default_out_dir(str(Path(self.sft_data).with_suffix("")) if self.sft_data else self.dataset)


def _knob_field(k):
    meta = {"help": k.help, "group": "optimizer and schedule", "knob": True}
    if k.choices is not None:
        meta["choices"] = k.choices
    if k.minimum is not None:
        meta["minimum"] = k.minimum
    return (k.name, k.value_type, field(default=k.default, metadata=meta))


# TrainConfig = the fields above + one field per knob of an optimiser or schedule (scope "train",
# declared beside the variant in variations/optimizer.py and variations/lr_schedule.py)
TrainConfig = dataclasses.make_dataclass("TrainConfig", [_knob_field(k) for k in all_knobs("train")],
                                         bases=(TrainConfig,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = "The training settings: data, optimiser and schedule, logging, hardware estimate, system."

# Named starting points; flags and --config override them.
PRESETS: dict[str, dict] = {
    # seconds on a laptop; what the tests train
    "debug": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=20, eval_interval=10,
                  eval_iters=2, log_interval=1, warmup_iters=2, learning_rate=1e-3),
    # karpathy/nanoGPT's CPU run of shakespeare_char (README): 4x4x128, context 64, batch 12, 2000 steps.
    # Our shakespeare_char is a different, larger corpus than nanoGPT's tinyshakespeare (42 plays, vocab 84,
    # 4.55M train tokens vs 65 and 1.0M): its val loss is not nanoGPT's 1.88 (data/shakespeare_char/README.md)
    "cpu": dict(dataset="shakespeare_char", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                dropout=0.0, max_iters=2000, lr_decay_iters=2000, learning_rate=1e-3, min_lr=1e-4,
                beta2=0.99, warmup_iters=100, eval_interval=250, eval_iters=20, log_interval=50, device="cpu"),
    # GPT-2 small (124M) as nanoGPT trains it: ~0.5M tokens per step (12 x 1024 x 40)
    "gpt2": dict(dataset="shakespeare", n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=12,
                 gradient_accumulation_steps=40, max_iters=600000, lr_decay_iters=600000, learning_rate=6e-4,
                 min_lr=6e-5, warmup_iters=2000, weight_decay=0.1, beta2=0.95, eval_interval=1000,
                 eval_iters=200, log_interval=10, compile=True),
}


# ---------------------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Setting:
    """One setting of train.py: a field of GPTConfig ('model') or TrainConfig ('train').

    The one place a value is checked: argparse (through `check`), config files, presets, sweeps and
    both searches call `check`; GPTConfig/TrainConfig.__post_init__ then check combinations."""
    name: str
    owner: str          # "model" | "train"
    default: object
    type: type          # bool, int, float, str or list (a per-layer list of registry names or of bit widths)
    help: str
    group: str          # the --help group
    registry: str | None = None           # the registry kind whose names the value takes
    fixed_choices: tuple | None = None    # or a fixed set of values
    layerlist_of: str | None = None       # the field a per-layer list overrides
    bounds: tuple = ()                    # (key, number) pairs of the declared range (gpt_conf.BOUNDS)
    site_bits: bool = False               # an --act_bits_<site>: bit widths, one or per layer

    @property
    def choices(self) -> list | None:
        if self.registry is not None:
            from variations.registry import names
            return names(self.registry)
        return list(self.fixed_choices) if self.fixed_choices is not None else None

    def check(self, value, where: str = "", flag: bool = False):
        """The value as train.py takes it, or a one-line UserError prefixed with `where`.
        Numbers written as strings (YAML reads 1e-3 as a string) are parsed as a flag would be; a
        per-layer list may be given as one space-separated string; registry names are normalised
        and must be registered (the closest one is named otherwise)."""
        meta = {"registry": self.registry, "choices": self.fixed_choices, "site_bits": self.site_bits or None,
                **dict(self.bounds)}
        return check_value(self.name, value, self.type, {k: v for k, v in meta.items() if v is not None}, where,
                           flag)


@functools.lru_cache(maxsize=None)
def _schema() -> dict[str, Setting]:
    specs = {}
    for owner, cls in (("model", GPTConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if not f.init:
                continue
            meta = f.metadata
            specs[f.name] = Setting(
                name=f.name, owner=owner, default=f.default if f.default is not MISSING else None,
                type=base_type(hints[f.name]), help=meta.get("help", ""),
                group="model" if owner == "model" else meta["group"], registry=meta.get("registry"),
                fixed_choices=tuple(meta["choices"]) if "choices" in meta else None,
                layerlist_of=meta.get("layerlist_of"), site_bits=bool(meta.get("site_bits")),
                bounds=tuple((k, meta[k]) for k in BOUNDS if meta.get(k) is not None))
    return specs


def schema() -> dict[str, Setting]:
    """name -> Setting for every setting of train.py, model settings first."""
    return dict(_schema())


def setting(name: str, where: str = "") -> Setting:
    """The Setting called `name`; an unknown name is a UserError naming the closest one."""
    specs = _schema()
    if name not in specs:
        at = f"{where}: " if where else ""
        raise UserError(at + unknown_name_message("setting", str(name), specs)
                        + " (python train.py --help lists every setting)")
    return specs[name]


def check(name: str, value, where: str = ""):
    """`value` for setting `name` as train.py would accept it (see Setting.check)."""
    return setting(name, where).check(value, where)


# train.py arguments that are not settings but name other settings: a preset, a config file
LAUNCH_ARGS = ("preset", "config")


def check_launch_arg(name: str, value, where: str = ""):
    """A setting, or one of LAUNCH_ARGS (a preset name; a config file, which is read and checked)."""
    at = f"{where}: " if where else ""
    if name == "preset":
        if value not in PRESETS:
            raise UserError(at + unknown_name_message("preset", str(value), PRESETS))
        return value
    if name == "config":
        if not isinstance(value, str):
            raise UserError(f"{at}'config' must be a file path, got {value!r}")
        try:
            load_config_file(value)
        except UserError as e:
            raise UserError(f"{at}{e}") from None
        return value
    return check(name, value, where)


def settings_problem(settings: dict) -> str | None:
    """None when train.py would accept these flat settings as a model and training configuration
    (each value, then GPTConfig and TrainConfig as a whole), else the reason in one line."""
    try:
        checked = {k: check(k, v) for k, v in settings.items()}
        GPTConfig(**{k: v for k, v in checked.items() if _schema()[k].owner == "model"})
        TrainConfig(**{**{k: v for k, v in checked.items() if _schema()[k].owner == "train"}, "out_dir": "unused"})
    except UserError as e:
        return str(e)
    except (TypeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def load_config_file(path: str) -> dict:
    """Flat mapping of settings from YAML or JSON; an unknown key or a bad value is a UserError."""
    data = read_data_file(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    return {k: check(k, v, f"config file {path}") for k, v in data.items()}


def _flag_type(spec: Setting):
    """argparse `type` of a flag: Setting.check parses the text and checks it (a bad name: the closest one)."""
    def convert(text: str):
        try:
            return spec.check(text, flag=True)
        except ValueError as e:  # UserError is a ValueError
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = spec.type.__name__ if spec.type is not list else "name"
    return convert


def _preset_type(text: str) -> str:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(unknown_name_message("preset", text, PRESETS))
    return text


class _Parser(ArgumentParser):
    """A bad value reads '--beta1 must be in [0, 1), got 2.0', not argparse's 'argument --beta1: --beta1 ...'."""

    def error(self, message: str):
        super().error(re.sub(r"^argument (--\S+): \1\b", r"\1", message))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py", allow_abbrev=False,
                        description="Train a GPT assembled from registry components on a memmapped data set.")
    p.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    p.add_argument("--preset", type=_preset_type, metavar="{" + ",".join(sorted(PRESETS)) + "}",
                   help="named starting point (config file and flags override it)")
    p.add_argument("--list_variants", action="store_true", help="print every registered component and exit")
    groups = {g: p.add_argument_group(g) for g in ("model", "data", "training", "optimizer and schedule", "fine-tuning", "logging", "hardware estimate", "system")}
    for spec in _schema().values():
        default = spec.default
        help_text = spec.help + (f" (default: {default})" if default is not None else "")
        kwargs = dict(help=help_text, default=argparse.SUPPRESS)  # SUPPRESS: only typed flags appear
        if spec.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.type is list and spec.registry is None:  # bit widths, one or per layer: --act_bits_scores 8 4
            kwargs.update(nargs="+", type=int, metavar="BITS")
        elif spec.type is list:  # a per-layer list of registry names: --attention_variant_layerlist causal linear
            kwargs.update(nargs="+", type=_flag_type(Setting(**{**spec.__dict__, "type": str})), metavar="NAME")
        else:
            kwargs["type"] = _flag_type(spec)
            choices = spec.choices
            kwargs["metavar"] = "{" + ",".join(choices) + "}" if choices is not None else spec.type.__name__.upper()
        groups[spec.group].add_argument(f"--{spec.name}", **kwargs)
    return p


@dataclass
class Settings:
    """What the user set (preset, config file and flags merged), split into model and training keys.
    train.py turns them into a GPTConfig (once the data set's vocab_size is known) and a TrainConfig
    (for a resume, on top of the checkpoint's)."""
    model: dict
    train: dict
    list_variants: bool = False


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    config_path, preset, list_variants = ns.pop("config", None), ns.pop("preset", None), ns.pop("list_variants")
    merged: dict = {}
    if preset:
        merged.update(PRESETS[preset])
    if config_path:
        merged.update(load_config_file(config_path))
    merged.update(ns)
    specs = _schema()
    model = {k: v for k, v in merged.items() if specs[k].owner == "model"}
    train = {k: v for k, v in merged.items() if specs[k].owner == "train"}
    return Settings(model=model, train=train, list_variants=list_variants)


def settings_to_argv(settings: dict) -> list[str]:
    """Flat settings -> train.py flags, the inverse of parsing (None: left out, the default applies).
    Used by the sweep runner and the searches to launch `python train.py ...`."""
    argv = []
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, float):
            argv += [f"--{key}", repr(value)]  # repr: the exact float back
        else:
            argv += [f"--{key}", str(value)]
    return argv


def default_out_dir(dataset: str) -> str:
    """out/<data set name>: where a run goes when --out_dir is not given."""
    return str(Path("out") / Path(dataset).name)


def default_of(name: str):
    """The default value of a TrainConfig field."""
    return TrainConfig.__dataclass_fields__[name].default


def resolved_dict(model_config: GPTConfig, train_config: TrainConfig) -> dict:
    """The full resolved configuration of a run, as written to config.json."""
    return {"model": asdict(model_config), "train": asdict(train_config)}


def check_fits(model_config: GPTConfig, tc: TrainConfig) -> None:
    """Refuse, in one line and before anything is allocated, a run whose estimated memory
    (gpt_conf.estimate_train_bytes, a low estimate) exceeds the memory of the device it would run on:
    the GPU's, or the host's RAM for cpu and mps. A size typed with a few zeros too many (--batch_size
    100000000) would otherwise hang the machine in allocation or swap."""
    device = choose_device(tc.device)
    if device.type == "cuda":
        import torch
        capacity = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
            return
    shards = int(os.environ.get("WORLD_SIZE", "1")) if tc.fsdp else 1
    need = estimate_train_bytes(model_config, tc.batch_size, tc.gradient_checkpointing, shards)
    if need > capacity:
        raise UserError(f"--batch_size {tc.batch_size} x --block_size {model_config.block_size} with --n_layer "
                        f"{model_config.n_layer}, --n_embd {model_config.n_embd}, vocab {model_config.vocab_size} "
                        f"needs at least {need / 2**30:,.1f} GiB, more than the {capacity / 2**30:,.1f} GiB of "
                        f"{device.type}; lower --batch_size (use --gradient_accumulation_steps) or the model size")


if __name__ == "__main__":  # python train_args.py --preset cpu: show the resolved settings
    s = parse_args(sys.argv[1:])
    print(json.dumps({"model": s.model, "train": asdict(TrainConfig(**s.train))}, indent=2))
