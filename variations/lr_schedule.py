"""Learning-rate schedules: `--lr_schedule NAME` (train.py), with their knobs declared beside them.

Every class takes the training settings `(tc)` (a TrainConfig); `lr(it)` is the learning rate of
optimiser step `it` (0-based). All start with the same linear warmup: step it < --warmup_iters takes
--learning_rate * (it + 1) / (warmup_iters + 1); the schedule owns the steps after it. The decay
ends at --lr_decay_iters (default --max_iters) at --min_lr (default learning_rate / 10), where a
schedule has an end. --no-decay_lr keeps --learning_rate constant from step 0 (no warmup), as
before schedules were a registry kind. Draw one without training:

    python -m analysis.plot_lr_schedule --preset cpu --lr_schedule wsd --out wsd.png
"""
from __future__ import annotations

import math

from errors import UserError
from variations.registry import create, knob, register

WSD_DECAY_FRACTION = knob("wsd_decay_fraction", 0.2, "wsd: share of the steps up to lr_decay_iters spent in the "
                          "final decay (the rest after warmup is stable at learning_rate), in (0, 1]", scope="train")
WSD_DECAY_SHAPE = knob("wsd_decay_shape", "linear", "wsd: shape of the final decay to min_lr: linear, cosine, or "
                       "sqrt (1 - sqrt(progress), Hägele et al. 2024)", choices=("linear", "cosine", "sqrt"),
                       scope="train")


class Schedule:
    """Base of every schedule: the shared linear warmup, then `decay(it)` for it >= warmup_iters."""

    def __init__(self, tc):
        self.tc = tc
        self.peak, self.floor, self.warmup = tc.learning_rate, tc.min_lr, tc.warmup_iters
        self.decay_iters = tc.lr_decay_iters or tc.max_iters  # where a decaying schedule reaches min_lr

    def check(self) -> None:
        """A one-line UserError for settings this schedule cannot use (called by TrainConfig)."""

    def lr(self, it: int) -> float:
        if it < self.warmup:
            return self.peak * (it + 1) / (self.warmup + 1)
        return self.decay(it)

    def decay(self, it: int) -> float:
        raise NotImplementedError


@register("lr_schedule", "cosine")
class Cosine(Schedule):
    """Warmup, then cosine decay from learning_rate to min_lr at lr_decay_iters, then min_lr (nanoGPT's; the default).

    lr = min_lr + (1 + cos(pi r)) / 2 (learning_rate - min_lr), r = (it - warmup) / (lr_decay_iters - warmup).
    """

    def decay(self, it):
        if it >= self.decay_iters:
            return self.floor
        ratio = (it - self.warmup) / (self.decay_iters - self.warmup)  # 0 -> 1
        return self.floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.peak - self.floor)


@register("lr_schedule", "linear")
class Linear(Schedule):
    """Warmup, then a straight line from learning_rate to min_lr at lr_decay_iters, then min_lr."""

    def decay(self, it):
        if it >= self.decay_iters:
            return self.floor
        ratio = (it - self.warmup) / (self.decay_iters - self.warmup)
        return self.peak + ratio * (self.floor - self.peak)


@register("lr_schedule", "constant")
class Constant(Schedule):
    """Warmup, then learning_rate for good (min_lr and lr_decay_iters are not read)."""

    def decay(self, it):
        return self.peak


@register("lr_schedule", "wsd", knobs=[WSD_DECAY_FRACTION, WSD_DECAY_SHAPE])
class WarmupStableDecay(Schedule):
    """Warmup-stable-decay (Hu et al., 2024, MiniCPM; Hägele et al., 2024): learning_rate until the last wsd_decay_fraction of the steps, then a decay to min_lr at lr_decay_iters.

    The decay starts at step S = lr_decay_iters - round(wsd_decay_fraction x lr_decay_iters) (not
    before the warmup ends) and has progress p = (it - S) / (lr_decay_iters - S): linear
    (1 - p), cosine ((1 + cos(pi p)) / 2) or sqrt (1 - sqrt(p)) of the way from learning_rate to min_lr.
    A run can be branched off the stable phase and cooled down at any length (the point of WSD).
    """

    def check(self):
        if not 0 < self.tc.wsd_decay_fraction <= 1:
            raise UserError(f"--wsd_decay_fraction must be in (0, 1], got {self.tc.wsd_decay_fraction}")

    @property
    def decay_start(self) -> int:
        return max(self.warmup, self.decay_iters - round(self.tc.wsd_decay_fraction * self.decay_iters))

    def decay(self, it):
        start = self.decay_start
        if it < start:
            return self.peak
        if it >= self.decay_iters:
            return self.floor
        p = (it - start) / (self.decay_iters - start)
        shape = self.tc.wsd_decay_shape
        left = 1 - p if shape == "linear" else 0.5 * (1 + math.cos(math.pi * p)) if shape == "cosine" else 1 - math.sqrt(p)
        return self.floor + left * (self.peak - self.floor)


@register("lr_schedule", "inverse_sqrt")
class InverseSqrt(Schedule):
    """Warmup, then learning_rate x sqrt(max(warmup_iters, 1) / it): peak at the end of the warmup, then 1/sqrt(step) (Vaswani et al., 2017).

    No end: min_lr and lr_decay_iters are not read.
    """

    def decay(self, it):
        w = max(self.warmup, 1)
        return self.peak * math.sqrt(w / max(it, w))


def build_schedule(tc) -> Schedule:
    """The --lr_schedule of `tc`."""
    return create("lr_schedule", tc.lr_schedule, tc)
