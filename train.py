"""Train a GPT on a memmapped token data set; one process, or many with torchrun.

    python data/shakespeare_char/prepare.py
    python train.py --preset cpu                                   # ~3 min on 2 CPU cores
    python train.py --preset cpu --softmax_variant_attn consmax --out_dir out/consmax
    python train.py --out_dir out/consmax --init_from resume       # continue a stopped run
    python train.py --init_from out/consmax --sft_data chats.jsonl --out_dir out/sft  # fine-tune (data/sft.py)
    torchrun --standalone --nproc_per_node 4 train.py --preset gpt2
    python train.py --list_variants

Features: every component from the registry; warmup + cosine learning rate; gradient accumulation
and clipping; bf16/fp16 autocast on CUDA; torch.compile; DistributedDataParallel (nccl on CUDA,
gloo on CPU) with evaluation averaged over ranks, or FSDP2 sharding (--fsdp); gradient
checkpointing; TensorBoard scalars (--tensorboard); early stopping; limits on steps, seconds and
tokens; atomic checkpoints holding model, optimiser, RNG and data-sampler state, so a resumed run
(even after SIGKILL) reproduces the uninterrupted one's losses exactly on CPU.

The run directory's files (config, tokenizer, metrics, summary, checkpoints) are named and read in
run_dir.py, which also guards it: a new run starts only in an empty folder (or with --overwrite), one
process at a time holds it (an OS file lock), and a run that ends in an error says so in summary.json
(status failed, with the error), its last checkpoint intact. A nan or inf loss is such an error
unless --allow_nonfinite_loss.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import pretrained
import train_args
from activation_stats import ActivationStats, append_rows, parse_range
from data.dataset import TokenData, check_token_ids, load_meta, resolve_data_dir
from data.sft import SFTData
from data.tokenizer import load_tokenizer
from devices import autocast, choose_device, choose_dtype, estimate_mfu, peak_flops, peak_memory_bytes
from distributed import Distributed, full_state_dicts, fully_shard_model, load_full_state_dicts
from errors import UserError, run_cli
from gpt_conf import GPTConfig, pad_vocab
from io_utils import load_checkpoint
from model import GPT
from ppa.report import ppa_tables
from provenance import fingerprint, provenance
from run_dir import ACTIVATION_STATS, METRICS, SUMMARY, RunDir, disk_full_error, ppa_summary_keys, resolve_checkpoint
from train_args import TrainConfig
from train_log import Reporter, summary_writer_class, truncate_metrics, write_hparams
from variations import kernels
from variations.lr_schedule import build_schedule
from variations.optimizer import build_optimizer, optimizer_line
from variations.cost import cost_table, group_by_component, per_token_summary

# Evaluation batches come from their own generator with a fixed seed (per rank), independent of --seed:
# every run scores the same eval_iters x batch_size windows of each split (summary.json's eval_tokens),
# so losses of different seeds, and of different runs with the same batch shape, compare on the same tokens
EVAL_SEED = 100_003


class NonFiniteLoss(UserError):
    """The loss became nan or inf: the run stops with stop_reason nan_loss (unless --allow_nonfinite_loss)."""


def check_finite(loss: float | None, what: str, it: int, tc: TrainConfig) -> None:
    """Stop on a nan/inf loss. Called where the loss is on the host anyway (log steps, evaluations):
    checking every step would cost a device sync per step; a divergence is caught within
    log_interval steps, and always before the evaluation that would checkpoint its weights."""
    if loss is not None and not math.isfinite(loss) and not tc.allow_nonfinite_loss:
        raise NonFiniteLoss(f"the {what} is {loss} at step {it}: training diverged; lower --learning_rate and resume "
                            "from the last checkpoint with --init_from resume, or pass --allow_nonfinite_loss")


# ---------------------------------------------------------------------------------------- setup
def get_lr(it: int, tc: TrainConfig) -> float:
    """The learning rate of step it: linear warmup over warmup_iters, then --lr_schedule
    (variations/lr_schedule.py; cosine to min_lr at lr_decay_iters by default); --no-decay_lr: constant."""
    if not tc.decay_lr:
        return tc.learning_rate
    return build_schedule(tc).lr(it)


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Model, optimiser and the counters of one run; train_step, evaluate, state_dict are separate."""

    def __init__(self, model_config: GPTConfig, tc: TrainConfig, meta: dict, dd: Distributed):
        self.tc, self.dd, self.device = tc, dd, dd.device
        self.dtype = choose_dtype(tc.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if tc.gradient_accumulation_steps % dd.world_size:
            raise UserError(f"--gradient_accumulation_steps {tc.gradient_accumulation_steps} must be divisible by "
                            f"the number of processes ({dd.world_size})")
        self.accum = tc.gradient_accumulation_steps // dd.world_size
        self.tokens_per_iter = tc.batch_size * model_config.block_size * tc.gradient_accumulation_steps

        if tc.fsdp and not dd.enabled:
            raise UserError("--fsdp shards the model over the processes that torchrun starts; launch with "
                            "torchrun --standalone --nproc_per_node N train.py ... --fsdp, or drop --fsdp")
        torch.manual_seed(tc.seed)  # same initial weights on every rank
        self.model = GPT(model_config).to(self.device)
        self.model.gradient_checkpointing = tc.gradient_checkpointing
        if tc.fsdp:
            fully_shard_model(self.model)  # before the optimiser: it must hold the sharded parameters
        self.optimizer = build_optimizer(self.model, tc, self.device.type)  # --optimizer (variations/optimizer.py)
        # fp16 needs loss scaling; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.autocast = autocast(self.device, self.dtype)
        if tc.sft_data:  # conversations; targets -1 outside the completions (data/sft.py)
            self.data = SFTData(tc.sft_data, load_tokenizer(meta), tc.batch_size, model_config.block_size,
                                self.device, tc.sft_val_fraction, tc.sft_pack, model_config.vocab_size)
        else:
            self.data = TokenData(meta, tc.batch_size, model_config.block_size, self.device)
        self.train_gen = torch.Generator().manual_seed(tc.seed + dd.rank)  # per-rank data order
        torch.manual_seed(tc.seed + dd.rank)  # dropout differs across ranks

        self.iter_num, self.best_val_loss, self.best_iter = 0, float("inf"), None
        self.evals_since_best, self.wall_time_prev, self.last_val_loss = 0, 0.0, None
        self.learned_constants: dict = {}  # as of the last checkpoint (summary.json)
        self.net = self.model
        if tc.compile:
            self.net = torch.compile(self.net)
        if dd.enabled and not tc.fsdp:
            self.net = DDP(self.net, device_ids=[dd.local_rank] if self.device.type == "cuda" else None)

    # -- one optimiser step over `accum` micro-batches; returns the step's loss as a tensor
    def train_step(self) -> torch.Tensor:
        lr = get_lr(self.iter_num, self.tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr  # muon's matrices: their own peak
        total = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = self.data.batch("train", self.train_gen)
            sync = micro == self.accum - 1  # DDP: all-reduce gradients only on the last micro-batch
            with (self.net.no_sync() if isinstance(self.net, DDP) and not sync else nullcontext()), self.autocast:
                _, loss = self.net(x, y)
                loss = loss / self.accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return total

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """Mean loss over eval_iters batches per split (the same batches every time and for every --seed:
        EVAL_SEED), averaged over ranks; val is None when the data has no validation split (--sft_val_fraction 0)."""
        self.model.eval()
        out = {"val": None}
        for split in self.data.eval_splits:
            gen = torch.Generator().manual_seed(EVAL_SEED + self.dd.rank)
            losses = []
            for _ in range(self.tc.eval_iters):
                x, y = self.data.batch(split, gen)
                with self.autocast:
                    _, loss = self.model(x, y)
                losses.append(loss.item())
            out[split] = self.dd.mean(sum(losses) / len(losses))
        self.model.train()
        return out

    # -- checkpoint state; every rank must call state_dict (it gathers the ranks' sampler states)
    def state_dict(self, wall_time: float) -> dict:
        # every rank's generators (dropout differs across ranks); "torch"/"cuda" stay rank 0's for older readers
        rng = {"torch": torch.get_rng_state(), "data": self.dd.gather(self.train_gen.get_state()),
               "torch_ranks": self.dd.gather(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
            rng["cuda_ranks"] = self.dd.gather(rng["cuda"].cpu())
        if self.tc.fsdp:  # the same layout as unsharded runs: sample.py, export and resume read it alike
            model_sd, optim_sd = full_state_dicts(self.model, self.optimizer)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "model_config": asdict(self.model.config), "train_config": asdict(self.tc),
            "model": model_sd, "optimizer": optim_sd,
            "scaler": self.scaler.state_dict(), "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss, "best_iter": self.best_iter,
            "evals_since_best": self.evals_since_best, "last_val_loss": self.last_val_loss,
            "wall_time_s": wall_time, "rng": rng,
        }

    def load_weights(self, ckpt: dict):
        """--init_from RUN: the model's weights only; optimiser, step count and RNG start fresh. GPT-2
        weights (pretrained.py) name the parameters they lack (new components'), which keep their init."""
        new = set(ckpt.get("new_parameters", ()))
        try:
            if self.tc.fsdp:  # every rank holds the full weights and keeps its shard
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
                set_model_state_dict(self.model, ckpt["model"],
                                     options=StateDictOptions(full_state_dict=True, strict=not new))
            else:
                missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=not new)
                if set(missing) != new or unexpected:
                    raise RuntimeError(f"missing {sorted(set(missing) ^ new)[:3]}, unexpected {unexpected[:3]}")
        except (RuntimeError, KeyError) as e:
            raise UserError(f"--init_from checkpoint does not match the model it describes "
                            f"({str(e).splitlines()[0]}); it is corrupt or from another version") from None

    def load_state_dict(self, ckpt: dict):
        saved = ckpt["train_config"].get("optimizer", "adamw")  # checkpoints before --optimizer: AdamW's state
        if saved != self.tc.optimizer:
            raise UserError(f"--optimizer {self.tc.optimizer} differs from the checkpoint's {saved}, whose state "
                            "cannot carry over on resume; drop the flag, or start from its weights in a new run "
                            "(--init_from RUN --out_dir NEW)")
        try:
            if self.tc.fsdp:
                load_full_state_dicts(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
            else:
                self.model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint does not match the model it describes ({str(e).splitlines()[0]}); "
                            "it is corrupt or from another version") from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        self.best_iter, self.evals_since_best = ckpt["best_iter"], ckpt["evals_since_best"]
        self.wall_time_prev, self.last_val_loss = ckpt["wall_time_s"], ckpt.get("last_val_loss")
        rng = ckpt["rng"]

        def own(key):  # this rank's state when the checkpoint has one per rank (older ones: rank 0's for all)
            states = rng.get(f"{key}_ranks")
            return states[self.dd.rank] if states and self.dd.rank < len(states) else rng[key]
        torch.set_rng_state(own("torch"))
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(own("cuda"), self.device)
        if self.dd.rank < len(rng["data"]):
            self.train_gen.set_state(rng["data"][self.dd.rank])
        elif self.dd.master:
            print(f"warning: the checkpoint has data-sampler states for {len(rng['data'])} processes; "
                  "new ones start fresh", file=sys.stderr)


# ---------------------------------------------------------------------------------------- main
def init_checkpoint_path(init_from: str) -> Path:
    """--init_from RUN: a checkpoint file as given, or a run directory's best checkpoint (else its last)."""
    path = Path(init_from)
    if path.is_dir() or path.is_file():
        return resolve_checkpoint(path)
    raise UserError(f"--init_from {init_from}: not {', '.join(train_args.INIT_FROM)}, a GPT-2 size "
                    f"({', '.join(pretrained.SIZES)}), an existing run directory or checkpoint file, nor a Hugging Face "
                    "GPT-2 folder or .safetensors file; give one of those")


# model settings that may differ from an --init_from checkpoint: they change no weight
INIT_FROM_MAY_CHANGE = ("dropout",)


def load_init(tc: TrainConfig, model_flags: dict) -> tuple[dict, GPTConfig, dict]:
    """--init_from RUN: (RUN's checkpoint, its model config, the data meta). The tokenizer is RUN's
    (its meta.json); SFT needs no --dataset, continued pre-training checks that --dataset shares it."""
    if pretrained.is_gpt2_source(tc.init_from):  # Hugging Face GPT-2 weights (pretrained.py)
        model_config, state, new = pretrained.load_gpt2(tc.init_from, model_flags)
        if tc.sft_data:  # conversations are tokenized by GPT-2's BPE
            meta = {**pretrained.GPT2_TOKENIZER, "vocab_size": model_config.vocab_size}
        else:
            meta = load_meta(resolve_data_dir(tc.dataset))
            pretrained.check_tokenizer(meta, tc.dataset)
        return {"model": state, "new_parameters": new}, model_config, meta
    path = init_checkpoint_path(tc.init_from)
    if path.parent.resolve() == Path(tc.out_dir).resolve():
        raise UserError(f"--out_dir {tc.out_dir} is the run --init_from starts from; choose another --out_dir")
    ckpt = load_checkpoint(path)
    saved = dict(ckpt["model_config"])
    for key, value in model_flags.items():
        if key in INIT_FROM_MAY_CHANGE:
            saved[key] = value
        elif saved.get(key) != value:
            raise UserError(f"--{key} {value} differs from the {path} checkpoint's {saved.get(key)}; the model comes "
                            "from --init_from (drop the flag)")
    model_config = GPTConfig.from_dict(saved)
    meta = RunDir(path.parent).read_meta()
    if not tc.sft_data:  # continued pre-training on --dataset: same tokenizer, or the ids mean other things
        data_meta = load_meta(resolve_data_dir(tc.dataset))
        if load_tokenizer(data_meta).meta() != load_tokenizer(meta).meta():
            raise UserError(f"--dataset {tc.dataset} has a {data_meta['tokenizer']} tokenizer unlike that of "
                            f"--init_from {tc.init_from} ({meta['tokenizer']}, or another vocabulary); prepare the data "
                            "with the run's tokenizer")
        meta = data_meta
    return ckpt, model_config, meta


def build_configs(settings: train_args.Settings) -> tuple[GPTConfig, TrainConfig, dict, dict | None]:
    """(model config, training config, data meta, checkpoint or None), all checked before anything
    is written. A new run takes the user's settings; a resume takes the checkpoint's, with the
    user's training settings on top (the model cannot change); --init_from RUN takes RUN's model
    config and tokenizer with the user's training settings."""
    user = settings.train
    if user.get("init_from") == "resume":
        dataset = user.get("dataset", train_args.default_of("dataset"))
        out_dir = Path(user.get("out_dir") or train_args.default_out_dir(dataset))
        ckpt = RunDir(out_dir).load_checkpoint("last")
        model_config = GPTConfig.from_dict(ckpt["model_config"])
        for key, value in settings.model.items():
            if getattr(model_config, key) != value:
                raise UserError(f"--{key} {value} differs from the checkpoint's {getattr(model_config, key)}; "
                                "the model cannot change on resume (drop the flag, or start a new --out_dir)")
        saved = dict(ckpt["train_config"])
        if "learning_rate" in user and "min_lr" not in user:
            saved["min_lr"] = None  # re-derive from the new learning rate
        tc = TrainConfig(**{**saved, **user, "out_dir": str(out_dir)})
        meta = RunDir(out_dir).read_meta() if tc.sft_data else load_meta(resolve_data_dir(tc.dataset))
    elif user.get("init_from", "scratch") != "scratch":  # --init_from RUN
        tc = TrainConfig(**user)
        ckpt, model_config, meta = load_init(tc, settings.model)
        RunDir(tc.out_dir).check_new(tc.overwrite)
    else:
        ckpt = None
        tc = TrainConfig(**user)
        meta = load_meta(resolve_data_dir(tc.dataset))
        RunDir(tc.out_dir).check_new(tc.overwrite)
        model_config = GPTConfig(**{"vocab_size": pad_vocab(meta["vocab_size"]), **settings.model})
    if model_config.vocab_size < meta["vocab_size"]:
        raise UserError(f"--vocab_size {model_config.vocab_size} is smaller than the data set's vocabulary "
                        f"({meta['vocab_size']}); drop the flag or raise it")
    if not tc.sft_data:  # refused before anything is written: ids past the vocabulary, then sizes past memory
        check_token_ids(meta, model_config.vocab_size)
    train_args.check_fits(model_config, tc)
    if tc.patience is not None and tc.sft_data and tc.sft_val_fraction == 0:
        raise UserError("--patience stops on the validation loss, and --sft_val_fraction 0 holds out no examples; "
                        "drop --patience or hold some out")
    if tc.tensorboard:
        summary_writer_class()  # the package is there
    return model_config, tc, meta, ckpt


def ppa_estimate(model_config: GPTConfig, tc: TrainConfig):
    """Energy, latency and area of the configuration on --ppa_target (ppa/estimate.py); shapes only.
    Operations the configuration does not quantise run in the dtype this run trains in (or --ppa_format)."""
    from ppa.estimate import estimate
    with torch.device("meta"):  # no memory for the weights
        model = GPT(model_config)
    dtype = str(choose_dtype(tc.dtype, choose_device(tc.device))).removeprefix("torch.")
    return estimate(model, target=tc.ppa_target, tech=tc.ppa_tech, fmt=tc.ppa_format, dtype=dtype)


def main(argv: list[str] | None = None, on_eval=None) -> dict | None:
    """Train; returns the summary (None for --list_variants).

    on_eval(iter_num, {"train": loss, "val": loss}) -> bool, when given, is called on rank 0 after each
    evaluation (once its checkpoint and summary.json are written); returning True stops the run with
    stop_reason "pruned" (a search's pruner). Under DDP every rank passes it; only rank 0 calls it.
    """
    settings = train_args.parse_args(argv)
    if settings.list_variants:
        print_variants()
        return None
    model_config, tc, meta, ckpt = build_configs(settings)
    ppa = ppa_estimate(model_config, tc)  # a bad --ppa_target or table fails here, before anything is written
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    run = RunDir(tc.out_dir)
    def hold(held):  # one training process per run directory, for its whole life: rank 0 holds it for all
        held.enter_context(run.lock())
        if tc.init_from != "resume":
            run.check_new(tc.overwrite)  # again, holding the lock: another run may have started meanwhile
    dd = Distributed(tc.device)
    try:
        with dd.master_guard(hold):
            return _train(model_config, tc, meta, ckpt, dd, run, on_eval, ppa)
    finally:
        dd.close()


def _train(model_config: GPTConfig, tc: TrainConfig, meta: dict, ckpt: dict | None, dd: Distributed,
           run: RunDir, on_eval=None, ppa=None) -> dict:
    trainer = Trainer(model_config, tc, meta, dd)
    if ckpt is not None:
        if tc.init_from == "resume":
            trainer.load_state_dict(ckpt)
        else:  # --init_from RUN
            trainer.load_weights(ckpt)
        del ckpt
    model = trainer.model
    start_iter = trainer.iter_num
    peak = tc.peak_flops or peak_flops(trainer.device, trainer.dtype)

    notes = []  # what was done to the folder, said once the reporter is up
    if dd.master:
        stale = run.remove_stale_temp_files()
        if stale:
            notes.append(f"removed {stale} temporary file(s) left by killed writes in {run.path}")
        if tc.init_from != "resume":  # a new run (--overwrite): clear the old run's files, only those
            replaced = run.own_files()
            if replaced:
                notes.append(f"--overwrite: replacing {', '.join(replaced)} of the previous run in {run.path} "
                             "(other files are left alone)")
            run.clear_results()
        else:
            truncate_metrics(run.file(METRICS), start_iter)
            truncate_metrics(run.file(ACTIVATION_STATS), start_iter - 1)  # its step start_iter is recorded again
        run.write_config(train_args.resolved_dict(model_config, tc))
        run.write_meta(meta)
    cost_rows = model.cost(model_config.block_size)
    if dd.master:
        run.write_cost({"context": model_config.block_size, "rows": {k: c.to_dict() for k, c in cost_rows.items()},
                        "ppa": ppa.to_dict() if ppa else None})
    report = Reporter(run.path, tc.max_iters, start_iter, dd.master, tc.tensorboard)
    for note in notes:
        report.line(note)
    if tc.print_cost and dd.master:
        report.console.print(cost_table(group_by_component(cost_rows),
                                        f"hardware cost per token, forward, context {model_config.block_size}"))
        if ppa:
            for table in ppa_tables(ppa):
                report.console.print(table)
    report.line(f"{'resuming' if start_iter else 'training'} {model.num_params() / 1e6:.2f}M parameters on "
                f"{trainer.device} ({str(trainer.dtype).removeprefix('torch.')}, {dd.world_size} process(es)), "
                f"{trainer.tokens_per_iter:,} tokens/step, from step {start_iter} -> {run.path}")
    kernel_line = kernels.describe(model, trainer.device)  # --softmax_kernel: the choice and why, once per run
    if kernel_line:
        report.line(kernel_line)
    if optimizer_line(model, tc):  # muon: which parameters go to Muon and which to AdamW
        report.line(optimizer_line(model, tc))
    # --activation_stats_interval: hooks exist only during the recorded steps (activation_stats.py), on rank 0
    stats = (ActivationStats(model, parse_range(tc.activation_stats_range))
             if tc.activation_stats_interval and dd.master else None)
    if tc.sft_data:
        report.line(trainer.data.summary)
    sft = {"sft": True} if tc.sft_data else {}  # marks records whose losses are on completion tokens only

    prov = provenance(trainer.device, torch.get_num_threads(), meta.get("data_dir"))
    if tc.sft_data:
        prov["data"]["sft_data"] = fingerprint(Path(tc.sft_data))
    t_start = time.time()
    train_time, timed_iters = 0.0, 0  # optimiser steps only (no eval), excluding this process's first step
    last_loss, stop_reason, loss = None, None, None
    # a resumed run's first step was evaluated right before its checkpoint was written
    last_eval = start_iter if tc.init_from == "resume" else None

    def wall() -> float:
        return trainer.wall_time_prev + time.time() - t_start

    def make_summary(status: str) -> dict:
        tokens_per_s = trainer.tokens_per_iter / (train_time / timed_iters) if timed_iters else None
        return {
            "status": status, "stop_reason": stop_reason, "error": None,
            "best_val_loss": trainer.best_val_loss if math.isfinite(trainer.best_val_loss) else None,
            "best_iter": trainer.best_iter, "final_val_loss": trainer.last_val_loss,
            "final_train_loss": last_loss, "iters": trainer.iter_num,
            "tokens": trainer.iter_num * trainer.tokens_per_iter, "num_params": model.num_params(),
            "iter_time_ms": 1000 * train_time / timed_iters if timed_iters else None,
            "tokens_per_s": tokens_per_s,
            "mfu": estimate_mfu(model, tokens_per_s, peak) if tokens_per_s else None,
            "peak_memory_bytes": peak_memory_bytes(trainer.device), "wall_time_s": wall(),
            "device": str(trainer.device), "dtype": str(trainer.dtype).removeprefix("torch."),
            "world_size": dd.world_size, "threads": torch.get_num_threads(), "sft": bool(tc.sft_data),
            "softmax_kernel": kernels.select(model_config.softmax_kernel, trainer.device.type)[0],
            "learned_constants": trainer.learned_constants,
            "eval_tokens": tc.eval_iters * tc.batch_size * model_config.block_size * dd.world_size,
            "provenance": prov,
            **per_token_summary(cost_rows),
            **(ppa.summary() if ppa else dict.fromkeys(ppa_summary_keys())),
        }

    def checkpoint(best: bool):
        state = trainer.state_dict(wall())  # collective: every rank
        if dd.master:
            run.save_checkpoint(state, best)
            trainer.learned_constants = model.learned_constants(state["model"])  # the full state, even under FSDP

    try:
        while True:
            it = trainer.iter_num
            done = it >= tc.max_iters or stop_reason is not None
            if (it % tc.eval_interval == 0 or done) and it != last_eval:
                last_eval = it
                losses = trainer.evaluate()
                improved = losses["val"] is not None and losses["val"] < trainer.best_val_loss
                if improved:
                    trainer.best_val_loss, trainer.best_iter, trainer.evals_since_best = losses["val"], it, 0
                else:
                    trainer.evals_since_best += 1
                check_finite(losses["train"], "training loss", it, tc)  # before its weights are checkpointed
                check_finite(losses["val"], "validation loss", it, tc)
                trainer.last_val_loss = losses["val"]
                report.record({"iter": it, "type": "eval", "train_loss": losses["train"], "val_loss": losses["val"],
                               "lr": get_lr(it, tc), "tokens": it * trainer.tokens_per_iter, "wall_time_s": wall(),
                               **sft})
                val = "n/a" if losses["val"] is None else f"{losses['val']:.4f}"
                report.line(f"step {it}: {'completion-token ' if sft else ''}train loss {losses['train']:.4f}, "
                            f"val loss {val}{' (best)' if improved else ''}")
                checkpoint(improved)
                if dd.master:
                    run.write_summary(make_summary("running"))
                # the caller's verdict (rank 0), shared so that every rank stops at the same step
                if on_eval is not None and dd.any(dd.master and bool(on_eval(it, dict(losses)))) \
                        and stop_reason is None:
                    stop_reason = "pruned"
                    continue
                if tc.patience is not None and trainer.evals_since_best >= tc.patience and stop_reason is None:
                    stop_reason = "patience"
                    continue  # checkpoint and summary are written; the loop ends below
            if done:
                break

            t0 = time.time()
            recording = stats is not None and it % tc.activation_stats_interval == 0
            if recording:
                stats.attach()
            loss = trainer.train_step()
            if recording:
                append_rows(run.file(ACTIVATION_STATS), stats.detach(it))
            it = trainer.iter_num
            if it % tc.log_interval == 0 or it == tc.max_iters:
                last_loss = loss.item()  # synchronises with the device
                check_finite(last_loss, "training loss", it, tc)
            if trainer.device.type == "cuda" and it % tc.log_interval == 0:
                torch.cuda.synchronize(trainer.device)
            dt = time.time() - t0
            if it > start_iter + 1:  # the first step of a process pays for compilation and warm-up
                train_time, timed_iters = train_time + dt, timed_iters + 1
            if it % tc.log_interval == 0:
                lr = get_lr(it - 1, tc)
                tps = trainer.tokens_per_iter * timed_iters / train_time if timed_iters else None
                mfu = estimate_mfu(model, tps, peak) if tps else None
                report.record({"iter": it, "type": "train", "loss": last_loss, "lr": lr,
                               "tokens": it * trainer.tokens_per_iter, "iter_time_ms": 1000 * dt,
                               "tokens_per_s": tps, "mfu": mfu, **sft, **model.aux_stats()})
                report.line(f"iter {it}: loss {last_loss:.4f}, lr {lr:.2e}, {1000 * dt:.1f}ms"
                            + (f", mfu {100 * mfu:.1f}%" if mfu else ""))
            report.advance(it, f"loss {last_loss:.4f}" if last_loss is not None else "")

            if tc.max_seconds is not None and dd.any(wall() >= tc.max_seconds):  # ranks must agree
                stop_reason = "max_seconds"
            elif tc.max_tokens is not None and it * trainer.tokens_per_iter >= tc.max_tokens:
                stop_reason = "max_tokens"
    except Exception as e:
        error = record_failure(e, run, make_summary, dd.master, report)
        if error is e:
            raise
        raise error from None
    finally:
        report.close()

    if loss is not None:
        last_loss = loss.item()  # the last step's loss, whatever the log interval
    stop_reason = stop_reason or "max_iters"
    result = make_summary("completed")
    if dd.master:
        run.write_summary(result)
        if tc.tensorboard:
            write_hparams(run.path, {**{f"model/{k}": v for k, v in asdict(model_config).items()},
                                     **{f"train/{k}": v for k, v in asdict(tc).items()}}, result, result["iters"])
        best = f"{result['best_val_loss']:.4f}" if result["best_val_loss"] is not None else "n/a"
        report.line(f"done ({stop_reason}): best val loss {best} at step {result['best_iter']}, "
                    + (f"{result['tokens_per_s']:,.0f} tokens/s, " if result["tokens_per_s"] else "")
                    + f"{result['wall_time_s']:.0f}s")
    return result


def record_failure(e: Exception, run: RunDir, make_summary, master: bool, report: Reporter) -> Exception:
    """A run that ends in an error: summary.json says status failed and why (rank 0; best effort, as the
    disk may be full); the checkpoints are left as the last evaluation wrote them. Returns the error to
    raise: a full disk becomes a one-line UserError."""
    if isinstance(e, OSError):
        e = disk_full_error(e, e.filename or run.path) or e
    if master:
        reason = " ".join(str(e).split()) or type(e).__name__
        summary = {**make_summary("failed"), "stop_reason": "nan_loss" if isinstance(e, NonFiniteLoss) else "error",
                   "error": reason if isinstance(e, UserError) else f"{type(e).__name__}: {reason}"}
        try:
            run.write_summary(summary)
        except (OSError, UserError) as e2:
            report.line(f"could not record the failure in {run.file(SUMMARY)}: {e2}")
    return e


def print_variants():
    """--list_variants: every registered component by kind, with the flag that selects it."""
    from rich.console import Console
    from rich.table import Table

    from variations.__main__ import kind_flags
    from variations.registry import KINDS, TRAINING_KINDS, describe
    table = Table(title="registered components (details and knobs: docs/variations.md)")
    for col in ("kind", "flag", "name", "description"):
        table.add_column(col)
    for kind in KINDS + TRAINING_KINDS:  # the model's components, then the optimiser and the schedule
        for i, (name, doc) in enumerate(describe(kind)):
            table.add_row(kind if i == 0 else "", f"--{kind_flags(kind)[0]}" if i == 0 else "", name, doc)
        table.add_section()
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
