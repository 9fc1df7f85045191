"""Hardware cost of a run's model, per component and in total: parameters, MACs and the non-linear
operations (exp, div, sqrt, cmp, row reductions) per token, plus activation memory.

    python analysis/cost_report.py --out_dir out/quickstart
    python analysis/cost_report.py --out_dir out/quickstart --context 1024 --per_layer --json cost.json
    python analysis/cost_report.py --config my_run.yaml          # a model that was never trained

Counts are analytic (variations/cost.py), per token of a forward pass at the given context length;
training costs about 3x the forward MACs. The model is rebuilt from the run's config.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


from errors import ArgumentParser, UserError, run_cli
from gpt_conf import GPTConfig, pad_vocab
from run_dir import CONFIG, RunDir
from variations.cost import cost_table, group_by_component, per_token_summary


def model_config_of(args) -> GPTConfig:
    if args.out_dir:
        config = RunDir(args.out_dir).read_config()
        if "model" not in config:
            raise UserError(f"{RunDir(args.out_dir).file(CONFIG)} has no 'model' section; is it a ppa-gpt run directory?")
        return GPTConfig.from_dict(config["model"])
    import train_args
    settings = train_args.parse_args(["--config", args.config])
    return GPTConfig(**{"vocab_size": pad_vocab(args.vocab_size), **settings.model})


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/cost_report.py", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--out_dir", help="run directory (reads its config.json)")
    src.add_argument("--config", help="train.py config file (YAML/JSON) describing the model")
    p.add_argument("--vocab_size", type=int, default=50257, help="with --config: vocabulary when the file has none")
    p.add_argument("--context", type=int, default=None, help="context length T (default: block_size)")
    p.add_argument("--per_layer", action="store_true", help="one row per layer and part instead of per component")
    p.add_argument("--json", help="also write the rows and totals to this JSON file")
    args = p.parse_args(argv)

    import torch

    from model import GPT
    cfg = model_config_of(args)
    T = args.context or cfg.block_size
    if T < 1:
        raise UserError(f"--context must be at least 1, got {T}")
    with torch.device("meta"):  # shapes only: no memory for the weights, any model size
        model = GPT(cfg)
    rows = model.cost(T)
    shown = rows if args.per_layer else group_by_component(rows)
    from rich.console import Console
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(cost_table(shown, f"hardware cost per token, forward pass, context {T}"))
    result = {"context": T, "rows": {k: c.to_dict() for k, c in shown.items()}, "total": per_token_summary(rows)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
