"""Hardware cost of a run's model, per component and in total: operation counts per token (parameters,
MACs, exp, div, sqrt, cmp, row reductions, weight and KV-cache reads) and their price on a hardware
target: energy per token, latency, datapath area.

    python analysis/cost_report.py --out_dir out/quickstart
    python analysis/cost_report.py --out_dir out/quickstart --target h100_sxm --context 1024 --json cost.json
    python analysis/cost_report.py --config my_run.yaml --target edge_int8 --format int16
    python analysis/cost_report.py --list                       # the targets and technologies

Counts are analytic (variations/cost.py), per token of a forward pass at the given context length;
training costs about 3x the forward MACs. The prices come from ppa/estimate.py (its docstring states
the model and its assumptions) with a technology table (ppa/tech/) and a target (ppa/targets/),
by name or as your own YAML file. The model is rebuilt from the run's config.json, shapes only.
"""
from __future__ import annotations

import sys


from io_utils import atomic_write_json
from errors import ArgumentParser, UserError, run_cli
from gpt_conf import GPTConfig, pad_vocab
from run_dir import CONFIG, RunDir
from ppa.estimate import DEFAULT_TARGET, DEFAULT_TECH, estimate
from ppa.report import ppa_tables
from variations.cost import cost_table, group_by_component, per_token_summary


def list_choices() -> dict:
    from ppa.tables import load_target, load_tech, target_names, tech_names
    from rich.console import Console
    from rich.table import Table
    table = Table(title="PPA targets (ppa/targets/) and technologies (ppa/tech/)")
    for col in ("kind", "name", "description"):
        table.add_column(col)
    for name in target_names():
        table.add_row("target", name, load_target(name).description)
    for name in tech_names():
        table.add_row("tech", name, load_tech(name).description)
    Console().print(table)
    return {"targets": target_names(), "tech": tech_names()}


def model_config_of(args) -> tuple[GPTConfig, dict]:
    if args.out_dir:
        config = RunDir(args.out_dir).read_config()
        if "model" not in config:
            raise UserError(f"{RunDir(args.out_dir).file(CONFIG)} has no 'model' section; is it a ppa-gpt run directory?")
        return GPTConfig.from_dict(config["model"]), config.get("train", {})
    import train_args
    settings = train_args.parse_args(["--config", args.config])
    return GPTConfig(**{"vocab_size": pad_vocab(args.vocab_size), **settings.model}), settings.train


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/cost_report.py", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--out_dir", help="run directory (reads its config.json)")
    src.add_argument("--config", help="train.py config file (YAML/JSON) describing the model")
    src.add_argument("--list", action="store_true", help="list the shipped targets and technologies and exit")
    p.add_argument("--vocab_size", type=int, default=50257, help="with --config: vocabulary when the file has none")
    p.add_argument("--context", type=int, default=None, help="context length T (default: block_size)")
    p.add_argument("--per_layer", action="store_true", help="one row per layer and part instead of per component")
    p.add_argument("--target", help=f"hardware target: a name from ppa/targets/ or a YAML file (default: the run's "
                   f"--ppa_target, else {DEFAULT_TARGET})")
    p.add_argument("--tech", help="technology table: a name from ppa/tech/ or a YAML file (default: the target's own, "
                   f"else {DEFAULT_TECH})")
    p.add_argument("--format", help="number format of the operations the model does not quantise (fp32, bf16, int8, "
                   "...; default: an accelerator's native format, else the dtype)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (weights are read once per step)")
    p.add_argument("--accumulate", choices=("wide", "operand"), default="wide",
                   help="sums in int32/fp32 (wide) or in the operands' own format")
    p.add_argument("--json", help="also write the rows, totals and the estimate to this JSON file")
    args = p.parse_args(argv)
    if args.list:
        return list_choices()

    import torch

    from model import GPT
    cfg, train = model_config_of(args)
    T = args.context or cfg.block_size
    if T < 1:
        raise UserError(f"--context must be at least 1, got {T}")
    with torch.device("meta"):  # shapes only: no memory for the weights, any model size
        model = GPT(cfg)
    rows = model.cost(T)
    # first: a bad target or table stops before anything is printed. With --target, the run's own tech
    # and format (chosen for its target) do not carry over
    est = estimate(model, target=args.target or train.get("ppa_target") or DEFAULT_TARGET,
                   tech=args.tech or (None if args.target else train.get("ppa_tech")), context=T, batch=args.batch,
                   fmt=args.format or (None if args.target else train.get("ppa_format")),
                   dtype=train.get("dtype", "auto"), accumulate=args.accumulate)
    shown = rows if args.per_layer else group_by_component(rows)
    from rich.console import Console
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(cost_table(shown, f"hardware cost per token, forward pass, context {T}"))
    for table in ppa_tables(est):
        console.print(table)
    result = {"context": T, "rows": {k: c.to_dict() for k, c in shown.items()}, "total": per_token_summary(rows),
              "ppa": est.to_dict()}
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
