"""The schedule registry (variations/lr_schedule.py): every schedule equals its formula at chosen steps,
all share the warmup, cosine is train.py's schedule from before the registry bit for bit, and the plot
command draws schedules without training."""
from __future__ import annotations

import math

import pytest

import train
from errors import UserError
from train_args import TrainConfig
from variations.lr_schedule import build_schedule
from variations.registry import names

PEAK, FLOOR, WARMUP, DECAY = 1.0, 0.1, 10, 110


def _tc(name: str, **kw) -> TrainConfig:
    return TrainConfig(lr_schedule=name, learning_rate=PEAK, min_lr=FLOOR, warmup_iters=WARMUP, lr_decay_iters=DECAY,
                       max_iters=200, out_dir="unused", **kw)


# schedule -> (knobs, {step: expected lr after the warmup}), written out from each formula
EXPECTED = {
    "cosine": ({}, {10: 1.0, 60: 0.55, 35: 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 110: 0.1, 150: 0.1}),
    "linear": ({}, {10: 1.0, 60: 0.55, 35: 0.775, 110: 0.1, 199: 0.1}),
    "constant": ({}, {10: 1.0, 60: 1.0, 199: 1.0}),
    # decay over the last 0.2 x 110 = 22 steps: starts at 88, linear to 0.1 at 110
    "wsd": ({}, {10: 1.0, 87: 1.0, 88: 1.0, 99: 1.0 - 0.9 * 11 / 22, 109: 1.0 - 0.9 * 21 / 22, 110: 0.1, 150: 0.1}),
    "inverse_sqrt": ({}, {10: 1.0, 40: 0.5, 90: 1 / 3, 1000: math.sqrt(10 / 1000)}),
}


def test_every_schedule_has_expected_values_here():
    assert sorted(EXPECTED) == names("lr_schedule")


@pytest.mark.parametrize("name", names("lr_schedule"))
def test_schedule_equals_its_formula(name):
    knobs, expected = EXPECTED[name]
    tc = _tc(name, **knobs)
    for it, lr in expected.items():
        assert train.get_lr(it, tc) == pytest.approx(lr), (name, it)


@pytest.mark.parametrize("name", names("lr_schedule"))
def test_every_schedule_warms_up_alike(name):
    tc = _tc(name)
    assert [train.get_lr(it, tc) for it in range(WARMUP)] == [PEAK * (it + 1) / (WARMUP + 1) for it in range(WARMUP)]
    assert train.get_lr(5, TrainConfig(lr_schedule=name, learning_rate=0.3, decay_lr=False)) == 0.3


@pytest.mark.parametrize("shape, left", [("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
                                         ("sqrt", lambda p: 1 - math.sqrt(p))])
def test_wsd_decay_fraction_and_shapes(shape, left):
    tc = _tc("wsd", wsd_decay_fraction=0.5, wsd_decay_shape=shape)  # decay over 55 steps from 55
    assert build_schedule(tc).decay_start == 55
    assert train.get_lr(54, tc) == 1.0
    for it in (55, 70, 100, 109):
        assert train.get_lr(it, tc) == pytest.approx(0.1 + left((it - 55) / 55) * 0.9)
    assert train.get_lr(110, tc) == pytest.approx(0.1)
    assert build_schedule(_tc("wsd", wsd_decay_fraction=1.0)).decay_start == WARMUP  # never inside the warmup


def _old_get_lr(it, tc):
    """train.get_lr before schedules became a registry kind (kept here as the reference)."""
    if not tc.decay_lr:
        return tc.learning_rate
    if it < tc.warmup_iters:
        return tc.learning_rate * (it + 1) / (tc.warmup_iters + 1)
    decay_iters = tc.lr_decay_iters or tc.max_iters
    if it >= decay_iters:
        return tc.min_lr
    ratio = (it - tc.warmup_iters) / (decay_iters - tc.warmup_iters)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.learning_rate - tc.min_lr)


def test_default_cosine_is_the_old_schedule_bit_for_bit():
    for tc in (TrainConfig(out_dir="unused"), TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                                                          lr_decay_iters=2000, max_iters=2000, out_dir="unused")):
        assert tc.lr_schedule == "cosine"
        assert all(train.get_lr(it, tc) == _old_get_lr(it, tc) for it in range(0, 6000, 7))


@pytest.mark.parametrize("kw, message", [
    (dict(lr_schedule="cosin"), "--lr_schedule: unknown lr_schedule 'cosin'; did you mean 'cosine'?"),
    (dict(wsd_decay_fraction=0.3), "--wsd_decay_fraction is read by --lr_schedule wsd only"),
    (dict(lr_schedule="wsd", wsd_decay_fraction=0.0), "--wsd_decay_fraction must be in (0, 1], got 0.0"),
    (dict(lr_schedule="wsd", wsd_decay_shape="cubic"), "unknown value for --wsd_decay_shape 'cubic'; valid: cosine, linear, sqrt"),
])
def test_bad_schedule_settings_are_one_line_errors(kw, message):
    with pytest.raises(UserError) as e:
        TrainConfig(out_dir="unused", **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_plot_command_draws_schedules_without_training(tmp_path, capsys):
    from analysis import plot_lr_schedule
    out = tmp_path / "s.png"
    result = plot_lr_schedule.main(["--preset", "debug", "--max_iters", "50", "--compare", "wsd", "inverse_sqrt",
                                    "--out", str(out), "--steps", "0", "30"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(result["curves"]) == ["cosine", "wsd", "inverse_sqrt"]
    tc = result["configs"]["wsd"]
    assert result["curves"]["wsd"] == [train.get_lr(it, tc) for it in range(50)]
    assert "step 30: cosine" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown lr_schedule 'wsdd'"):
        plot_lr_schedule.main(["--compare", "wsdd", "--out", str(out)])
    with pytest.raises(UserError, match="give --out"):
        plot_lr_schedule.main(["--preset", "debug"])
