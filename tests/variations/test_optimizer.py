"""The optimiser registry (variations/optimizer.py): every registered optimiser takes the step of its
reference (torch's own optimiser built by hand with the expected settings, or the paper's formula
computed by hand), trains the debug preset to a lower loss, and resumes loss for loss; bad settings
are one-line errors."""
from __future__ import annotations

import copy

import pytest
import torch

import train
from conftest import read_metrics, tiny_config
from errors import UserError
from model import GPT
from train_args import TrainConfig
from variations.optimizer import Lion, build_optimizer, decay_groups, muon_assignment
from variations.registry import names

LR, WD, BETAS = 0.01, 0.1, (0.9, 0.95)


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(bias=True))


def _set_grads(model: GPT, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _tc(name: str, **kw) -> TrainConfig:
    return TrainConfig(optimizer=name, learning_rate=LR, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1],
                       out_dir="unused", **kw)


def _lion_by_hand(model: GPT):
    """Lion's first step from the paper's Algorithm 2 (m0 = 0): c = (1 - b1) g, p -= lr (sign(c) + wd p)."""
    with torch.no_grad():
        for p in model.parameters():
            wd = WD if p.dim() >= 2 else 0.0
            p.copy_(p - LR * (torch.sign((1 - BETAS[0]) * p.grad) + wd * p))


def _sgd_nesterov_by_hand(model: GPT, momentum: float):
    """SGD, first step (buffer = g + wd p), Nesterov: p -= lr (d + momentum d), d = g + wd p."""
    with torch.no_grad():
        for p in model.parameters():
            d = p.grad + (WD if p.dim() >= 2 else 0.0) * p
            p.copy_(p - LR * (d + momentum * d))


def _adamw_reference(model: GPT):
    torch.optim.AdamW(decay_groups(model, WD), lr=LR, betas=BETAS).step()


REFERENCE = {
    "adamw": (dict(), _adamw_reference),
    "adam": (dict(), lambda m: torch.optim.Adam(decay_groups(m, WD), lr=LR, betas=BETAS).step()),
    "sgd": (dict(sgd_momentum=0.8, sgd_nesterov=True), lambda m: _sgd_nesterov_by_hand(m, 0.8)),
    "lion": (dict(), _lion_by_hand),
    "adafactor": (dict(adafactor_beta2_decay=-0.5, adafactor_d=2.0),
                  lambda m: torch.optim.Adafactor(decay_groups(m, WD), lr=LR, beta2_decay=-0.5, d=2.0).step()),
    "muon": (dict(muon_lr=0.05, muon_momentum=0.9, muon_ns_steps=3), None),  # below: its two parts
}


def _muon_reference(model: GPT):
    where = muon_assignment(model)
    named = dict(model.named_parameters())
    torch.optim.Muon([named[n] for n, part in where.items() if part == "muon"], lr=0.05, weight_decay=WD,
                     momentum=0.9, nesterov=True, ns_steps=3).step()
    torch.optim.AdamW(decay_groups(model, WD, [named[n] for n, part in where.items() if part == "adamw"]), lr=LR,
                      betas=BETAS).step()


def test_every_optimizer_has_a_reference_here():
    assert sorted(REFERENCE) == names("optimizer")


@pytest.mark.parametrize("name", names("optimizer"))
def test_one_step_equals_the_reference_step(name):
    knobs, reference = REFERENCE[name]
    ours, ref = _model(), _model()
    _set_grads(ours)
    _set_grads(ref)
    opt = build_optimizer(ours, _tc(name, **knobs), "cpu")
    opt.step()
    (reference or _muon_reference)(ref)
    initial = _model()
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {n}: {m}")
        assert not torch.equal(a, initial.get_parameter(n)), f"{name}: {n} did not move"


def test_lion_matches_the_paper_over_several_steps():
    """Three steps of Lion against the formula, the momentum carried by hand."""
    torch.manual_seed(0)
    p = torch.randn(5, 3, requires_grad=True)
    ref, m = p.detach().clone(), torch.zeros(5, 3)
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    for step in range(3):
        g = torch.randn(5, 3)
        p.grad = g.clone()
        opt.step()
        c = 0.9 * m + 0.1 * g
        ref = ref - 0.1 * (torch.sign(c) + 0.5 * ref)
        m = 0.99 * m + 0.01 * g
        torch.testing.assert_close(p.detach(), ref)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)


def test_adamw_is_todays_optimizer():
    """--optimizer adamw builds exactly what GPT.configure_optimizers builds (fused AdamW, same groups)."""
    model = _model()
    tc = _tc("adamw")
    ours = build_optimizer(model, tc, "cpu")
    theirs = model.configure_optimizers(WD, LR, BETAS, "cpu")
    assert type(ours) is type(theirs) is torch.optim.AdamW
    assert ours.defaults == theirs.defaults
    assert [[id(p) for p in g["params"]] for g in ours.param_groups] == \
        [[id(p) for p in g["params"]] for g in theirs.param_groups]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = GPT(tiny_config(bias=True, softmax_variant_attn="consmax"))
    where = muon_assignment(model)
    muon = {n for n, part in where.items() if part == "muon"}
    assert muon == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"transformer.wte.weight", "position.wpe.weight", "transformer.ln_f.weight",
            "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.softmax.beta"} <= {
        n for n, part in where.items() if part == "adamw"}
    assert len(where) == len(list(model.parameters()))  # every parameter is in one part


# ------------------------------------------------------------------------ training and exact resume

TRAIN_FLAGS = {"adamw": ["--learning_rate", "3e-3"], "adam": ["--learning_rate", "3e-3", "--weight_decay", "0"],
               "sgd": ["--learning_rate", "0.5"], "lion": ["--learning_rate", "1e-3"],
               "adafactor": ["--learning_rate", "3e-2", "--weight_decay", "0"],
               "muon": ["--learning_rate", "3e-3", "--muon_lr", "0.03"]}


def _train(char_data, out, name, *flags):
    return train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                       "--optimizer", name, *TRAIN_FLAGS[name], "--eval_interval", "8", "--log_interval", "1",
                       "--lr_decay_iters", "16", "--dropout", "0.1", *flags])


def test_every_optimizer_has_training_flags_here():
    assert sorted(TRAIN_FLAGS) == names("optimizer")


@pytest.mark.parametrize("name", names("optimizer"))
def test_optimizer_trains_and_resumes_loss_for_loss(char_data, tmp_path, name):
    full = _train(char_data, tmp_path / "full", name, "--max_iters", "16")
    evals = [r["val_loss"] for r in read_metrics(tmp_path / "full") if r["type"] == "eval"]
    assert evals[-1] < evals[0] - 0.2, (name, evals)
    _train(char_data, tmp_path / "part", name, "--max_iters", "8")
    resumed = train.main(["--out_dir", str(tmp_path / "part"), "--init_from", "resume", "--max_iters", "16",
                          "--dataset", str(char_data)])
    losses = {d: {r["iter"]: r["loss"] for r in read_metrics(tmp_path / d) if r["type"] == "train"}
              for d in ("full", "part")}
    assert losses["part"] == losses["full"]  # bit for bit, every step
    assert resumed["best_val_loss"] == full["best_val_loss"]
    ckpt = torch.load(tmp_path / "part" / "ckpt_last.pt", weights_only=True)
    assert ckpt["train_config"]["optimizer"] == name


# ------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kw, message", [
    (dict(sgd_momentum=0.5), "--sgd_momentum is read by --optimizer sgd only, and this run's --optimizer is adamw: "
                             "drop --sgd_momentum or pass --optimizer sgd"),
    (dict(optimizer="lion", muon_lr=0.1), "--muon_lr is read by --optimizer muon only"),
    (dict(optimizer="sgd", sgd_momentum=0.0, sgd_nesterov=True), "--sgd_nesterov needs momentum"),
    (dict(optimizer="muon", muon_lr=0.0), "--muon_lr must be positive, got 0.0"),
    (dict(optimizer="muon", fsdp=True), "--optimizer muon needs whole (unsharded) matrices"),
    (dict(optimizer="adafactor", fsdp=True), "--optimizer adafactor needs whole (unsharded) matrices"),
    (dict(optimizer="adafactor", adafactor_beta2_decay=0.5), "--adafactor_beta2_decay must be negative"),
    (dict(optimizer="adamm"), "--optimizer: unknown optimizer 'adamm'; did you mean 'adam'?"),
    (dict(learning_rate=0.0), "--learning_rate must be positive, got 0.0"),
    (dict(learning_rate=-1e-3), "--learning_rate must be positive"),
])
def test_bad_optimizer_settings_are_one_line_errors(kw, message):
    with pytest.raises(UserError) as e:
        TrainConfig(**kw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_optimizer_knob_flags_come_from_the_registry(char_data, tmp_path):
    with pytest.raises(UserError, match="--sgd_momentum is read by --optimizer sgd only"):
        train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(tmp_path / "x"),
                    "--sgd_momentum", "0.5"])
    assert not (tmp_path / "x").exists()


def test_optimizer_cannot_change_on_resume(char_data, tmp_path):
    _train(char_data, tmp_path / "r", "adamw", "--max_iters", "2")
    with pytest.raises(UserError, match="--optimizer lion differs from the checkpoint's adamw"):
        train.main(["--out_dir", str(tmp_path / "r"), "--init_from", "resume", "--max_iters", "4",
                    "--dataset", str(char_data), "--optimizer", "lion"])


def test_muon_checkpoint_holds_both_parts(char_data, tmp_path):
    _train(char_data, tmp_path / "m", "muon", "--max_iters", "2")
    state = torch.load(tmp_path / "m" / "ckpt_last.pt", weights_only=True)["optimizer"]
    assert set(state) == {"muon", "adamw"}
    assert all("momentum_buffer" in s for s in state["muon"]["state"].values())
    assert state["muon"]["param_groups"][0]["lr_scale"] == pytest.approx(0.03 / 3e-3)
    copy.deepcopy(state)  # plain tensors and numbers


def test_optimizers_and_knobs_are_sweepable():
    """A sweep varies --optimizer and its knobs like any setting, checked before anything runs."""
    from optimization_and_search.sweep_config import build_sweep
    import train_args
    sweep = build_sweep({"common_group": {"preset": "debug"},
                         "parameter_groups": [{"optimizer": "adamw"},
                                              {"optimizer": "muon", "muon_lr": [0.01, 0.05]},
                                              {"optimizer": "sgd", "lr_schedule": "wsd", "wsd_decay_fraction": 0.3}]},
                        "opt")
    assert [r.settings.get("optimizer") for r in sweep.runs] == ["adamw", "muon", "muon", "sgd"]
    assert train_args.check("optimizer", "Muon") == "muon"
    assert train_args.settings_problem({"optimizer": "lion", "muon_lr": 0.1}).startswith("--muon_lr is read by")
    with pytest.raises(UserError, match="--sgd_momentum is read by --optimizer sgd only"):
        build_sweep({"parameter_groups": [{"optimizer": "adamw", "sgd_momentum": 0.5}]}, "bad")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "lion", "sgd"])  # adamw: tests/test_scale.py
def test_optimizer_under_fsdp_resumes_loss_for_loss(char_data, tmp_path, name):
    """Optimisers with elementwise updates shard under FSDP2 (2 CPU processes over gloo); the full
    optimiser state in the checkpoint resumes the sharded run exactly."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    def torchrun(*flags):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "train.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]

    common = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--eval_interval", "3",
              "--log_interval", "1", "--lr_decay_iters", "6", "--gradient_accumulation_steps", "2", "--fsdp",
              "--optimizer", name, *TRAIN_FLAGS[name]]
    torchrun(*common, "--out_dir", str(tmp_path / "full"), "--max_iters", "6")
    torchrun(*common, "--out_dir", str(tmp_path / "part"), "--max_iters", "3")
    torchrun("--out_dir", str(tmp_path / "part"), "--dataset", str(char_data), "--init_from", "resume",
             "--max_iters", "6")
    losses = {d: {r["iter"]: r["loss"] for r in read_metrics(tmp_path / d) if r["type"] == "train"}
              for d in ("full", "part")}
    assert sorted(losses["part"]) == list(range(1, 7)) and losses["part"] == losses["full"]
