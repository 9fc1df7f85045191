"""nanoGPT's CPU recipe reproduced: karpathy/nanoGPT's own train.py against our `cpu` preset, over seeds,
on the same data, with both final models scored on the same held-out tokens.

    python benchmarks/repro_nanogpt.py --nanogpt /path/to/nanoGPT --seeds 1337 1338 1339

What runs: for each seed, `train.main` with `--preset cpu --seed S` (4 x 4 x 128, context 64, batch 12,
2000 iterations) and nanoGPT's train.py with the same model, optimiser, schedule, batch and evaluation
cadence (bench_train.nanogpt_argv), in a temporary copy of the checkout whose data/<dataset>/ links our
train.bin and val.bin (bench_train.prepare_nanogpt). The copy is patched in one line, shown in the JSON:
nanoGPT seeds with a fixed `torch.manual_seed(1337 + seed_offset)`, which becomes `seed + seed_offset`
with `seed = 1337` declared before its configurator runs, so `--seed=S` reaches it. It saves its
checkpoint at every evaluation (always_save_checkpoint=True), so its ckpt.pt is the model after
max_iters updates, as our ckpt_last.pt is.

The score: both final models' mean cross-entropy over the whole validation split, cut into consecutive
non-overlapping windows of block_size tokens (the same tokens for every run and both implementations;
505,728 tokens for shakespeare_char). Each implementation's own best val loss during training is kept
beside it (ours on train.EVAL_SEED's fixed windows; nanoGPT's on its own random batches). The difference
of the means comes with Welch's t 95% interval (analysis/compare.welch_interval): "agree" when it holds 0.

Figures and the environment go to --json (default benchmarks/results/repro_nanogpt_cpu.json).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import train
import train_args
from analysis.compare import verdict, welch_interval
from benchmarks import bench_train as bt
from devices import choose_device, choose_dtype
from io_utils import atomic_write_json
from model import GPT
from provenance import provenance
from run_dir import RunDir

SEED_LINE = "torch.manual_seed(1337 + seed_offset)"
SEED_PATCH = "torch.manual_seed(seed + seed_offset)"
CONFIGURATOR_LINE = "exec(open('configurator.py').read())"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "repro_nanogpt_cpu.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repro_nanogpt.py", allow_abbrev=False,
                                description="karpathy/nanoGPT's train.py vs our cpu preset over seeds, both final "
                                            "models scored on the whole validation split.")
    p.add_argument("--nanogpt", required=True, metavar="PATH",
                   help="checkout of karpathy/nanoGPT (train.py, model.py, configurator.py)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339], help="seeds (default: 1337 1338 1339)")
    p.add_argument("--preset", default="cpu", choices=sorted(train_args.PRESETS), help="our preset (default: cpu)")
    p.add_argument("--iters", type=int, help="training iterations (default: the preset's max_iters)")
    p.add_argument("--extra", action="append", default=[], metavar="FLAGS",
                   help="further train.py flags for ours (and, through the resolved settings, nanoGPT)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures (default: {DEFAULT_JSON})")
    p.add_argument("--verbose", action="store_true", help="show the training runs' own output")
    return p


# ------------------------------------------------------------------------------------ nanoGPT's seed
def patch_seed(train_py: Path) -> str:
    """Make nanoGPT's fixed seed a setting; returns the patch as a unified-diff-like text."""
    text = train_py.read_text()
    if text.count(SEED_LINE) != 1 or text.count(CONFIGURATOR_LINE) != 1:
        raise SystemExit(f"{train_py}: expected exactly one '{SEED_LINE}' and one '{CONFIGURATOR_LINE}' "
                         f"(karpathy/nanoGPT's train.py); this checkout differs, so its seed cannot be set")
    text = text.replace(CONFIGURATOR_LINE, "seed = 1337  # repro_nanogpt.py: settable with --seed=N\n"
                        + CONFIGURATOR_LINE).replace(SEED_LINE, SEED_PATCH)
    train_py.write_text(text)
    return f"+ seed = 1337  (before: {CONFIGURATOR_LINE})\n- {SEED_LINE}\n+ {SEED_PATCH}"


def load_nanogpt_model(work: Path, ckpt_path: Path) -> torch.nn.Module:
    """nanoGPT's GPT (its model.py, loaded from the copy by file path) with the checkpoint's weights."""
    spec = importlib.util.spec_from_file_location("nanogpt_model_copy", work / "model.py")
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):
        spec.loader.exec_module(module)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # nanoGPT's own format
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    return model.eval()


# ------------------------------------------------------------------------------------ the score
@torch.no_grad()
def split_loss(model: torch.nn.Module, path: Path, dtype: str, block_size: int, batch: int = 256) -> dict:
    """Mean next-token cross-entropy of `model(x, y) -> (logits, loss)` over every complete window of
    block_size tokens of a token file, windows back to back: window i predicts tokens
    i*T+1 .. i*T+T from i*T .. i*T+T-1."""
    data = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    n_windows = (len(data) - 1) // block_size
    total, count = 0.0, 0
    for start in range(0, n_windows, batch):
        idx = np.arange(start, min(start + batch, n_windows))[:, None] * block_size + np.arange(block_size)
        x = torch.from_numpy(data[idx].astype(np.int64))
        y = torch.from_numpy(data[idx + 1].astype(np.int64))
        logits, _ = model(x, y)  # both models return full-sequence logits when given targets
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return {"loss": total / count, "tokens": count, "windows": n_windows}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit("--seeds: each seed once")
    base = ["--preset", args.preset, "--no-compile"]
    for extra in args.extra:
        base += shlex.split(extra)
    if args.iters:
        base += ["--max_iters", str(args.iters), "--lr_decay_iters", str(args.iters)]
    mc, tc, meta, _ = train.build_configs(train_args.parse_args(base))
    bad = bt.nanogpt_incompatibilities(mc, tc)
    if bad:
        raise SystemExit("these settings have no nanoGPT equivalent: " + "; ".join(bad))
    device, dtype = choose_device(tc.device, None), choose_dtype(tc.dtype, choose_device(tc.device, None))
    if device.type != "cpu" or dtype != torch.float32:
        raise SystemExit("repro_nanogpt.py scores on the CPU in float32; use a CPU preset")
    data_dir = Path(meta["data_dir"])
    val = data_dir / "val.bin"
    runs = {"ours": [], "nanogpt": []}
    with tempfile.TemporaryDirectory(prefix="repro_nanogpt_") as tmp:
        tmp = Path(tmp)
        work = tmp / "nanogpt"
        dataset = bt.prepare_nanogpt(Path(args.nanogpt).expanduser().resolve(), work, data_dir, meta, mc.vocab_size)
        patch = patch_seed(work / "train.py")
        nano_common = bt.nanogpt_argv(mc, tc, device, dtype, dataset, tc.max_iters, work / "out")
        # the preset's evaluation cadence, and a checkpoint at every evaluation (the last is the final model)
        nano_common += [f"--eval_interval={tc.eval_interval}", f"--eval_iters={tc.eval_iters}",
                        f"--log_interval={tc.log_interval}", "--always_save_checkpoint=True"]
        for seed in args.seeds:
            out_dir = tmp / f"ours_{seed}"
            t0 = time.perf_counter()
            with (contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(sys.stderr)):
                summary = train.main(base + ["--seed", str(seed), "--out_dir", str(out_dir), "--overwrite",
                                             "--init_from", "scratch"])
            wall = time.perf_counter() - t0
            model = GPT.from_checkpoint(RunDir(out_dir).load_checkpoint("last")).eval()
            score = split_loss(model, val, meta["dtype"], mc.block_size)
            runs["ours"].append({"seed": seed, "val_loss_whole_split": score["loss"], "best_val_loss": summary["best_val_loss"],
                                 "final_train_loss": summary["final_train_loss"], "wall_time_s": wall,
                                 "iters": summary.get("iters", tc.max_iters)})
            print(f"seed {seed}: ours     whole-split val {score['loss']:.4f} (best on its windows "
                  f"{summary['best_val_loss']:.4f}), {wall:.0f} s", file=sys.stderr)
            ckpt = work / "out" / "ckpt.pt"
            ckpt.unlink(missing_ok=True)
            nano = bt.run_nanogpt(work, nano_common + [f"--seed={seed}"], device, tc.batch_size * mc.block_size,
                                  5, tc.max_iters, tmp / f"nanogpt_{seed}.log", args.verbose)
            log = (tmp / f"nanogpt_{seed}.log").read_text()
            own = [float(line.split("val loss ")[1]) for line in log.splitlines()
                   if line.startswith("step ") and "val loss " in line]
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)["iter_num"]
            if saved != tc.max_iters:
                raise SystemExit(f"nanoGPT's last checkpoint is from iteration {saved}, not {tc.max_iters}")
            score_n = split_loss(load_nanogpt_model(work, ckpt), val, meta["dtype"], mc.block_size)
            runs["nanogpt"].append({"seed": seed, "val_loss_whole_split": score_n["loss"],
                                    "best_val_loss": min(own) if own else None, "final_train_loss": nano["final_loss"],
                                    "wall_time_s": nano["wall_time_s"], "iters": saved})
            print(f"seed {seed}: nanoGPT  whole-split val {score_n['loss']:.4f} (best on its own batches "
                  f"{min(own) if own else float('nan'):.4f}), {nano['wall_time_s']:.0f} s", file=sys.stderr)

    ours = [r["val_loss_whole_split"] for r in runs["ours"]]
    theirs = [r["val_loss_whole_split"] for r in runs["nanogpt"]]
    test = welch_interval(ours, theirs)
    agree = test["low"] is not None and verdict(test["low"], test["high"]) == "within noise"
    result = {
        "what": "val loss of the final model over the whole validation split, ours (cpu preset) vs nanoGPT's train.py",
        "scored_tokens": score["tokens"], "windows": score["windows"], "block_size": mc.block_size,
        "iters": tc.max_iters, "seeds": args.seeds, "nanogpt_patch": patch,
        "nanogpt_argv": nano_common, "our_argv": base,
        "ours": {"runs": runs["ours"], **spread(ours)}, "nanogpt": {"runs": runs["nanogpt"], **spread(theirs)},
        "difference": test, "agree_within_noise": agree,
        "provenance": provenance(device, torch.get_num_threads(), data_dir),
        "command": "python benchmarks/repro_nanogpt.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    print(f"wrote {args.json}", file=sys.stderr)
    return result


def print_table(result: dict) -> None:
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)
    print("| run | n | whole-split val loss, mean ± sd | min .. max | best val loss during training (own windows) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, label in (("ours", "ours (train.py, cpu preset)"), ("nanogpt", "nanoGPT train.py")):
        r = result[key]
        best = [run["best_val_loss"] for run in r["runs"] if run["best_val_loss"] is not None]
        print(f"| {label} | {r['n']} | {f(r['mean'])} ± {f(r['sd'])} | {f(r['min'])} .. {f(r['max'])} | "
              f"{f(statistics.fmean(best)) if best else '-'} |")
    d = result["difference"]
    print(f"\nours - nanoGPT: {f(d['difference'], '+.4f')}, {d['test']} 95% CI [{f(d['low'], '+.4f')}, "
          f"{f(d['high'], '+.4f')}]: {'agree within the seed spread' if result['agree_within_noise'] else 'DIFFER'} "
          f"({result['scored_tokens']:,} tokens)")


if __name__ == "__main__":
    main()
