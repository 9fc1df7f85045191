"""Memory and scale: gradient checkpointing (same gradients, same dropout, fewer saved activations),
FSDP2 sharding under torchrun with gloo on CPU (same losses as DDP, exact resume, checkpoints that
sample.py reads), and TensorBoard scalars. DDP itself is tested in tests/test_train.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import sample
import train
from errors import UserError
from model import GPT

from conftest import ROOT, read_metrics, tiny_config


def run(char_data, out_dir, *flags):
    return train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out_dir),
                       "--device", "cpu", *flags])


def train_losses(out_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(out_dir) if r["type"] == "train"}


# ------------------------------------------------------------------------ gradient checkpointing

def grads_of(model: GPT, idx: torch.Tensor, seed: int) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_the_same_gradients(dropout):
    model = GPT(tiny_config(dropout=dropout, position_variant="rope")).train()
    idx = torch.randint(0, 37, (3, 17), generator=torch.Generator().manual_seed(1))
    plain = grads_of(model, idx, seed=5)
    model.gradient_checkpointing = True
    recomputed = grads_of(model, idx, seed=5)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_recomputation_replays_the_dropout_rng():
    """What makes the dropout case above hold: the non-reentrant checkpoint restores the RNG state
    before recomputing. Without that (preserve_rng_state=False) the recomputed masks differ."""
    model = GPT(tiny_config(dropout=0.5)).train()
    block, x = model.transformer.h[0], torch.randn(2, 8, 32, requires_grad=True)

    def grad_of_input(**kw):
        x.grad = None
        torch.manual_seed(3)
        out = checkpoint(block, x, model.position, use_reentrant=False, **kw)
        out.sum().backward()
        return x.grad.clone()

    torch.manual_seed(3)
    block(x, model.position).sum().backward()
    reference = x.grad.clone()
    assert torch.equal(grad_of_input(), reference)
    assert not torch.allclose(grad_of_input(preserve_rng_state=False), reference)


def saved_activation_bytes(model: GPT, idx: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx[:, :-1], idx[:, 1:])
    return total


def test_checkpointing_saves_activation_memory_and_recomputes_each_block_once():
    model = GPT(tiny_config(n_layer=4)).train()
    idx = torch.randint(0, 37, (4, 17))
    full = saved_activation_bytes(model, idx)
    model.gradient_checkpointing = True
    assert saved_activation_bytes(model, idx) < full / 2

    calls = []
    model.transformer.h[1].register_forward_pre_hook(lambda *a: calls.append(1))  # recomputation stops early: no post-hook
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert len(calls) == 2  # forward, then the recomputation in backward
    calls.clear()
    with torch.no_grad():
        model(idx[:, :-1])
    model.eval()
    model(idx[:, :-1], idx[:, 1:])
    out = model.generate(idx[:1, :4], 5, temperature=0)  # KV-cached generation: no checkpointing
    assert len(calls) == 2 + 5 and out.shape == (1, 9)


def test_train_with_gradient_checkpointing_matches_without(char_data, tmp_path):
    flags = ["--max_iters", "6", "--eval_interval", "3", "--dropout", "0.1"]
    run(char_data, tmp_path / "plain", *flags)
    summary = run(char_data, tmp_path / "ckpt", *flags, "--gradient_checkpointing")
    assert train_losses(tmp_path / "ckpt") == train_losses(tmp_path / "plain")
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["train"]["gradient_checkpointing"] is True


# ------------------------------------------------------------------------ FSDP

def test_fsdp_needs_torchrun(char_data, tmp_path):
    with pytest.raises(UserError) as e:
        run(char_data, tmp_path / "f", "--fsdp")
    assert str(e.value) == ("--fsdp shards the model over the processes that torchrun starts; launch with "
                            "torchrun --standalone --nproc_per_node N train.py ... --fsdp, or drop --fsdp")
    assert not (tmp_path / "f").exists()


def torchrun(*flags: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_fsdp_two_processes_match_ddp_resume_and_sample(char_data, tmp_path):
    """FSDP2 (with gradient checkpointing) on 2 CPU processes over gloo takes the same steps as
    DDP; its full-state checkpoint resumes exactly and has DDP's layout, so sample.py reads it."""
    common = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--eval_interval", "3",
              "--log_interval", "1", "--gradient_accumulation_steps", "2"]
    torchrun(*common, "--out_dir", str(tmp_path / "ddp"), "--max_iters", "6")
    torchrun(*common, "--out_dir", str(tmp_path / "fsdp"), "--max_iters", "3", "--fsdp", "--gradient_checkpointing")
    torchrun("--out_dir", str(tmp_path / "fsdp"), "--dataset", str(char_data), "--init_from", "resume",
             "--max_iters", "6")  # keeps --fsdp from the checkpoint
    ddp, fsdp = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "fsdp")
    assert sorted(fsdp) == list(range(1, 7))
    assert fsdp == pytest.approx(ddp, rel=1e-5, abs=1e-6)
    assert len(set(fsdp.values())) == 6  # it trained

    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 6
    assert summary["num_params"] == json.loads((tmp_path / "ddp" / "summary.json").read_text())["num_params"]
    a = torch.load(tmp_path / "fsdp" / "ckpt_last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "ckpt_last.pt", weights_only=True)
    assert a["train_config"]["fsdp"] is True and a["iter_num"] == 6
    assert list(a["model"]) == list(b["model"])  # full, unsharded tensors under the usual names
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()  # indices, as torch's own
    for i, state in a["optimizer"]["state"].items():
        assert state["step"].item() == 6
        torch.testing.assert_close(state["exp_avg"], b["optimizer"]["state"][i]["exp_avg"], rtol=1e-4, atol=1e-7)
    text = sample.main(["--out_dir", str(tmp_path / "fsdp"), "--ckpt", "last", "--max_new_tokens", "10",
                        "--device", "cpu", "--start", "A"])
    assert len(text[0]) == 11


# ------------------------------------------------------------------------ TensorBoard

def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_and_resume(char_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    run(char_data, out, "--max_iters", "4", "--eval_interval", "2", "--tensorboard")
    train.main(["--out_dir", str(out), "--dataset", str(char_data), "--init_from", "resume", "--max_iters", "6"])
    tags = scalars(out)
    assert {"train/loss", "train/lr", "train/tokens_per_s", "eval/train_loss", "eval/val_loss"} <= set(tags)
    assert "train/mfu" not in tags  # no MFU on CPU: None values are not logged
    evals = [r for r in read_metrics(out) if r["type"] == "eval"]
    assert tags["eval/val_loss"] == [(r["iter"], pytest.approx(r["val_loss"])) for r in evals]  # once per step
    assert [s for s, _ in tags["eval/val_loss"]] == [0, 2, 4, 6]
    assert tags["train/loss"] == [(it, pytest.approx(loss)) for it, loss in sorted(train_losses(out).items())]


def test_tensorboard_missing_is_one_clear_error(char_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(UserError) as e:
        run(char_data, tmp_path / "tb", "--tensorboard")
    assert str(e.value) == ("--tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or pip install 'ppa-gpt[tensorboard]'), or drop --tensorboard")
    assert not (tmp_path / "tb").exists()


def test_tensorboard_hparams_hold_the_settings_and_final_numbers(char_data, tmp_path):
    """The HParams plugin's records, read back from the event files: the run's settings and its final
    summary numbers, so `tensorboard --logdir out/<sweep>` compares a sweep run by run."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    out = tmp_path / "tb"
    summary = run(char_data, out, "--max_iters", "2", "--eval_interval", "2", "--n_layer", "1", "--tensorboard")
    plugin = {}
    for path in sorted((out / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    plugin[value.tag] = data
    start = plugin["_hparams_/session_start_info"].session_start_info
    assert start.hparams["model/n_layer"].number_value == 1
    assert start.hparams["train/max_iters"].number_value == 2
    assert start.hparams["model/softmax_variant_attn"].string_value == "softmax"
    metrics = {m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos}
    assert {"summary/best_val_loss", "summary/num_params", "summary/tokens_per_s"} <= metrics
    tags = scalars(out)
    assert tags["summary/best_val_loss"] == [(2, pytest.approx(summary["best_val_loss"]))]
    assert tags["summary/num_params"] == [(2, summary["num_params"])]
