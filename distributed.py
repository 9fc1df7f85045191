"""Processes for training: torchrun ranks and FSDP2 sharding.

`Distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and sets up the process
group (nccl on CUDA, gloo on CPU), or stands for a single process. `fully_shard_model`,
`full_state_dicts` and `load_full_state_dicts` implement --fsdp: one FSDP2 unit per Block, and
checkpoints gathered in full on rank 0 in torch's usual layout, interchangeable with unsharded runs.
Used by train.py; the choice of device and dtype is devices.py's.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from devices import choose_device
from errors import UserError


def launch_rank() -> int:
    """This process's rank from torchrun's environment (0 for a single process), readable before the
    process group exists."""
    return int(os.environ.get("RANK", 0))


class Distributed:
    """Rank and world of this process: torchrun's environment, or a single process."""

    def __init__(self, device_name: str):
        self.enabled = int(os.environ.get("RANK", -1)) != -1
        self.rank = launch_rank()
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ["LOCAL_RANK"]) if self.enabled else None
        self.device = choose_device(device_name, self.local_rank)
        if self.enabled:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.master = self.rank == 0

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (keeps stop decisions in step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, problem: str | None) -> str | None:
        """Every rank learns the first rank's problem (a refusal only one rank can see, such as rank 0's
        run-directory checks), so all of them stop with it instead of waiting at the next collective."""
        if not self.enabled:
            return problem
        for rank, p in enumerate(self.gather(problem)):
            if p:
                return p if rank == self.rank else f"(rank {rank}) {p}"
        return None

    @contextlib.contextmanager
    def master_guard(self, take):
        """Rank 0 calls `take(held)` (held: an ExitStack kept open for the block, e.g. the run directory's
        lock and checks); a UserError it raises reaches every rank (agree), on every node, so no rank
        waits at a collective for a rank 0 that has stopped."""
        with contextlib.ExitStack() as held:
            problem = None
            if self.master:
                try:
                    take(held)
                except UserError as e:
                    problem = str(e)
            problem = self.agree(problem)
            if problem:
                raise UserError(problem)
            yield

    def close(self):
        if self.enabled and dist.is_initialized():
            try:  # leave together: a rank tearing gloo down while a peer still talks to it can abort
                dist.barrier()
            finally:
                dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- FSDP
def fully_shard_model(model) -> None:
    """--fsdp: shard the model in place with FSDP2, one unit per Block (its weights are all-gathered
    just before it runs and freed after) and the rest (tied embedding/head, final norm) as the root."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:  # torch 2.5
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise UserError(f"--fsdp needs FSDP2 (torch >= 2.5), this is torch {torch.__version__}; "
                            "upgrade torch or drop --fsdp") from None
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)


def full_state_dicts(model, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimiser) state of a sharded model gathered in full on rank 0's CPU (the other ranks
    get empty dicts; collective). The optimiser state is re-keyed from parameter names to indices,
    torch's own layout, so checkpoints of sharded and unsharded runs are interchangeable."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    if not optimizer.state:  # before the first step: get_optimizer_state_dict would take a zero step
        return model_sd, optimizer.state_dict()  # (Adam's step count 1), so the runs would part ways
    named = get_optimizer_state_dict(model, optimizer, options=options)  # keyed by parameter name
    if not named:  # ranks other than 0
        return model_sd, {}
    index = {n: i for i, n in enumerate(n for g in named["param_groups"] for n in g["params"])}
    return model_sd, {"state": {index[n]: st for n, st in named["state"].items()},
                      "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]}


def load_full_state_dicts(model, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict):
    """Inverse of full_state_dicts: every rank holds the full state and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    if not optim_sd["state"]:  # saved before the first step (see full_state_dicts)
        return optimizer.load_state_dict(optim_sd)
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]  # index -> name
    named = {"state": {names[i]: st for i, st in optim_sd["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=options)
