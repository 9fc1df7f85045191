"""Draw a learning-rate schedule without training: the lr train.py would set at every step.

    python -m analysis.plot_lr_schedule --preset cpu --out cosine.png
    python -m analysis.plot_lr_schedule --preset cpu --lr_schedule wsd --wsd_decay_fraction 0.3 --out wsd.png
    python -m analysis.plot_lr_schedule --preset cpu --compare cosine linear wsd inverse_sqrt --out all.png
    python -m analysis.plot_lr_schedule --config run.yaml --optimizer muon --out muon.png --steps 0 100 1000

Every train.py flag is accepted (--preset, --config, --learning_rate, --warmup_iters, --lr_schedule and
its knobs, ...), read exactly as train.py reads it; the curve is train.get_lr at steps 0 .. max_iters - 1.
With --optimizer muon the Muon matrices' curve (lr times muon_lr / learning_rate) is drawn as well.
--compare draws several schedules with the same settings. --steps prints the lr at chosen steps. The PNG
is written atomically.
"""
from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path

import train
import train_args
from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes
from variations.registry import check_training_settings, names, normalize


def schedule_curve(tc) -> list[float]:
    """The learning rate of every step 0 .. max_iters - 1 of training settings `tc`."""
    return [train.get_lr(it, tc) for it in range(tc.max_iters)]


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/plot_lr_schedule.py", description=__doc__.splitlines()[0],
                       epilog="Any other flag is a train.py flag (python train.py --help).")
    p.add_argument("--out", metavar="FIG.png", help="PNG file to write (without it: only --steps are printed)")
    p.add_argument("--compare", nargs="+", metavar="SCHEDULE",
                   help=f"draw these schedules with the same settings: {', '.join(names('lr_schedule'))}")
    p.add_argument("--steps", nargs="+", type=int, metavar="STEP", help="print the learning rate at these steps")
    p.add_argument("--log_y", action="store_true", help="logarithmic learning-rate axis")
    args, rest = p.parse_known_args(argv)
    if not args.out and not args.steps:
        raise UserError("give --out FIG.png to draw the schedule, or --steps N ... to print it")
    settings = train_args.parse_args(rest)
    tc = train_args.TrainConfig(**{**settings.train, "out_dir": "unused"})
    configs = {tc.lr_schedule: tc}
    for name in args.compare or ():
        alt = dataclasses.replace(tc, lr_schedule=train_args.check("lr_schedule", name, "--compare"))
        check_training_settings(alt)
        configs[normalize(name)] = alt
    curves = {name: schedule_curve(c) for name, c in configs.items()}
    scale = tc.muon_lr / tc.learning_rate if tc.optimizer == "muon" else None

    for step in args.steps or ():
        if step < 0:
            raise UserError(f"--steps must be 0 or more, got {step}")
        print(f"step {step}: " + ", ".join(f"{name} {train.get_lr(step, c):.6g}" for name, c in configs.items()))
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
        for name, lrs in curves.items():
            ax.plot(range(len(lrs)), lrs, label=name)
            if scale is not None:
                ax.plot(range(len(lrs)), [lr * scale for lr in lrs], linestyle="--", label=f"{name} (muon matrices)")
        if args.log_y:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{tc.optimizer}, warmup {tc.warmup_iters}, lr {tc.learning_rate:g} -> min_lr {tc.min_lr:g}, "
                     f"{tc.max_iters} steps")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(Path(args.out), buf.getvalue())
        print(f"wrote {args.out}: " + ", ".join(curves))
    return {"curves": curves, "configs": configs}


if __name__ == "__main__":
    sys.exit(run_cli(main))
