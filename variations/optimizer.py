"""Optimisers: `--optimizer NAME` (train.py), with their knobs declared beside them.

Every class takes the training settings `(tc)` (a TrainConfig) and `build(model, device_type)` returns
the optimiser of the model's parameters; `check()` refuses settings the variant cannot use, before
anything is written. All read --learning_rate (the peak of --lr_schedule, which sets every param
group's `lr` each step, times the group's `lr_scale` where one is set) and --weight_decay, applied as
today's AdamW applies it: matrices and embeddings decay, vectors and scalars (norms, biases, learned
constants) do not. Torch's implementations are used wherever torch has one; Lion is written here from
its paper (torch has none). The optimiser's state is part of every checkpoint, so a resumed run
continues loss for loss (tests/test_optimizers.py).

FSDP (--fsdp): adamw, adam, sgd and lion work on the sharded parameters (elementwise updates) and
are checkpointed through torch's full optimiser state dict; adafactor (factored row/column moments)
and muon (orthogonalises whole matrices) need unsharded matrices and are refused under --fsdp.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from errors import UserError
from variations.registry import create, get, knob, register

SGD_MOMENTUM = knob("sgd_momentum", 0.9, "sgd: momentum (0: plain gradient descent)", minimum=0.0, scope="train")
SGD_NESTEROV = knob("sgd_nesterov", False, "sgd: Nesterov momentum (Sutskever et al., 2013); needs sgd_momentum > 0",
                    scope="train")
ADAFACTOR_BETA2_DECAY = knob("adafactor_beta2_decay", -0.8, "adafactor: exponent c of the second-moment decay "
                             "beta2_t = 1 - t^c (Shazeer & Stern, 2018); negative", scope="train")
ADAFACTOR_D = knob("adafactor_d", 1.0, "adafactor: clipping threshold d of the update's RMS", scope="train")
MUON_LR = knob("muon_lr", 0.02, "muon: peak learning rate of the hidden matrices (the schedule scales it as it "
               "scales --learning_rate, which the AdamW part uses)", scope="train")
MUON_MOMENTUM = knob("muon_momentum", 0.95, "muon: momentum of the hidden matrices", minimum=0.0, scope="train")
MUON_NESTEROV = knob("muon_nesterov", True, "muon: Nesterov momentum", scope="train")
MUON_NS_STEPS = knob("muon_ns_steps", 5, "muon: Newton-Schulz iterations of the orthogonalisation", minimum=1,
                     scope="train")
MUON_ADJUST_LR = knob("muon_adjust_lr", "original", "muon: per-matrix learning-rate adjustment of torch.optim.Muon: "
                      "original (sqrt(max(1, rows / cols)), Keller Jordan's) or match_rms_adamw (0.2 sqrt(max(rows, "
                      "cols)), Moonshot's: AdamW's learning rate carries over)",
                      choices=("original", "match_rms_adamw"), scope="train")


def decay_groups(model: nn.Module, weight_decay: float, params=None) -> list[dict]:
    """Param groups as train.py has always made them: tensors of 2 or more dimensions (matrices,
    embeddings) decay, the rest (norms, biases, learned constants) do not."""
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _fused(cls, device_type: str, fsdp: bool = False) -> dict:
    """fused=True (one kernel for all tensors) where torch has it for this optimiser and device; not on
    FSDP-sharded parameters (DTensor has no sharding rule for the fused SGD kernel)."""
    ok = device_type in ("cuda", "cpu") and not fsdp and "fused" in inspect.signature(cls).parameters
    return {"fused": True} if ok else {}


class OptimizerVariant:
    """Base of every optimiser: built from the training settings. `fsdp`: works on FSDP2-sharded
    parameters (train.py refuses --fsdp otherwise)."""

    fsdp: bool = True

    def __init__(self, tc):
        self.tc = tc

    def check(self) -> None:
        """A one-line UserError for settings this optimiser cannot use (called by TrainConfig)."""
        if self.tc.fsdp and not self.fsdp:
            raise UserError(f"--optimizer {self.registry_name} needs whole (unsharded) matrices and does not run "
                            "under --fsdp; drop --fsdp (use DDP) or pick adamw, adam, sgd or lion")

    def build(self, model: nn.Module, device_type: str):
        raise NotImplementedError

    def describe(self, model: nn.Module) -> str:
        """One line for the training log on where the parameters go ('' when there is nothing to say)."""
        return ""


@register("optimizer", "adamw")
class AdamW(OptimizerVariant):
    """AdamW (Loshchilov & Hutter, 2019), torch.optim.AdamW: --beta1, --beta2, decoupled --weight_decay; the default.

    Exactly the optimiser train.py has always built (GPT.configure_optimizers): fused kernel on CUDA
    and CPU, weight decay on matrices and embeddings only.
    """

    def build(self, model, device_type):
        tc = self.tc
        return model.configure_optimizers(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), device_type)


@register("optimizer", "adam")
class Adam(OptimizerVariant):
    """Adam (Kingma & Ba, 2015), torch.optim.Adam: --beta1, --beta2; --weight_decay is an L2 term added to the gradient (not decoupled).

    The weight decay goes to matrices and embeddings only, as for adamw; pass --weight_decay 0 for
    plain Adam.
    """

    def build(self, model, device_type):
        tc = self.tc
        return torch.optim.Adam(decay_groups(model, tc.weight_decay), lr=tc.learning_rate, betas=(tc.beta1, tc.beta2),
                                **_fused(torch.optim.Adam, device_type, tc.fsdp))


@register("optimizer", "sgd", knobs=[SGD_MOMENTUM, SGD_NESTEROV])
class SGD(OptimizerVariant):
    """Stochastic gradient descent with momentum, optionally Nesterov's, torch.optim.SGD; --weight_decay as an L2 term.

    Needs a far larger --learning_rate than the Adam family (0.1 to 1 on the debug and cpu presets).
    """

    def check(self):
        super().check()
        if self.tc.sgd_nesterov and self.tc.sgd_momentum == 0:
            raise UserError("--sgd_nesterov needs momentum: give --sgd_momentum above 0 (e.g. 0.9) or drop "
                            "--sgd_nesterov")

    def build(self, model, device_type):
        tc = self.tc
        return torch.optim.SGD(decay_groups(model, tc.weight_decay), lr=tc.learning_rate, momentum=tc.sgd_momentum,
                               nesterov=tc.sgd_nesterov, **_fused(torch.optim.SGD, device_type, tc.fsdp))


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2), per parameter:

        c = beta1 m + (1 - beta1) g          the update direction interpolates momentum and gradient
        p = p - lr (sign(c) + wd p)          a step of the same size in every coordinate, decoupled decay
        m = beta2 m + (1 - beta2) g          the momentum tracks the gradient more slowly
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"Lion: lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = (m * beta1).add_(g, alpha=1 - beta1).sign_()
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(g, alpha=1 - beta2)
        return loss


@register("optimizer", "lion")
class LionVariant(OptimizerVariant):
    """Lion (Chen et al., 2023): sign of an interpolated momentum, --beta1 / --beta2 as the paper's beta1 / beta2; decoupled --weight_decay.

    Written here from the paper (torch has none). Every coordinate moves by exactly lr, so the paper
    takes a learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger (and beta2 0.99).
    """

    def build(self, model, device_type):
        tc = self.tc
        return Lion(decay_groups(model, tc.weight_decay), lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


@register("optimizer", "adafactor", knobs=[ADAFACTOR_BETA2_DECAY, ADAFACTOR_D])
class Adafactor(OptimizerVariant):
    """Adafactor (Shazeer & Stern, 2018), torch.optim.Adafactor: factored second moments (one row and one column vector per matrix), no first moment.

    --learning_rate is torch's `lr` (its default 1e-2); --weight_decay is decoupled (times lr).
    Not under --fsdp (the row and column moments need whole matrices).
    """

    fsdp = False

    def check(self):
        super().check()
        if not self.tc.adafactor_beta2_decay < 0:
            raise UserError(f"--adafactor_beta2_decay must be negative (beta2_t = 1 - t^c), got "
                            f"{self.tc.adafactor_beta2_decay}")

    def build(self, model, device_type):
        tc = self.tc
        return torch.optim.Adafactor(decay_groups(model, tc.weight_decay), lr=tc.learning_rate,
                                     beta2_decay=tc.adafactor_beta2_decay, d=tc.adafactor_d)


class OptimizerChain:
    """Several optimisers over disjoint parameters, used as one (Muon + AdamW): `param_groups` lists
    all their groups (the schedule sets each group's lr), `step`, `zero_grad`, and `state_dict` keyed
    by the parts' names. torch.amp.GradScaler reads only `param_groups` and calls `step`."""

    def __init__(self, **parts):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict):
        if set(state) != set(self.parts):
            raise ValueError(f"optimiser state has parts {sorted(state)}, this optimiser {sorted(self.parts)}")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])


def muon_assignment(model: nn.Module) -> dict[str, str]:
    """parameter name -> 'muon' or 'adamw', as modded-nanogpt splits them: the 2-D matrices of the
    transformer blocks (attention q/k/v and output projections, MLP up and down projections, any
    other full matrix a block variant holds) go to Muon; everything else to AdamW: the token
    embedding (tied to the LM head), the learned position table, the final norm, and within the
    blocks every vector or scalar (norm weights, biases, learned normaliser constants) and any matrix
    with a dimension of 1 (a per-head vector stored as a column)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hidden = name.startswith("transformer.h.") and p.dim() == 2 and min(p.shape) > 1
        out[name] = "muon" if hidden else "adamw"
    return out


@register("optimizer", "muon", knobs=[MUON_LR, MUON_MOMENTUM, MUON_NESTEROV, MUON_NS_STEPS, MUON_ADJUST_LR])
class Muon(OptimizerVariant):
    """Muon (Jordan et al., 2024), torch.optim.Muon, for the blocks' 2-D matrices, with AdamW for embeddings, head, norms and scalars (modded-nanogpt's split).

    Muon: SGD momentum (--muon_momentum, Nesterov unless --no-muon_nesterov) whose update is
    orthogonalised by --muon_ns_steps Newton-Schulz iterations, at --muon_lr with decoupled
    --weight_decay. The rest: AdamW with --learning_rate, --beta1, --beta2, --weight_decay (embeddings
    decay, vectors do not), as the adamw optimiser. Which parameter goes where:
    variations.optimizer.muon_assignment (also printed when training starts). Both learning rates
    follow --lr_schedule. The fused q/k/v projection is orthogonalised as one matrix. Not under --fsdp.
    """

    fsdp = False

    def check(self):
        super().check()
        if not self.tc.muon_lr > 0:
            raise UserError(f"--muon_lr must be positive, got {self.tc.muon_lr}")

    def build(self, model, device_type):
        tc = self.tc
        where = muon_assignment(model)
        named = dict(model.named_parameters())
        hidden = [named[n] for n, part in where.items() if part == "muon"]
        rest = [named[n] for n, part in where.items() if part == "adamw"]
        muon = torch.optim.Muon(hidden, lr=tc.muon_lr, weight_decay=tc.weight_decay, momentum=tc.muon_momentum,
                                nesterov=tc.muon_nesterov, ns_steps=tc.muon_ns_steps, adjust_lr_fn=tc.muon_adjust_lr)
        for group in muon.param_groups:  # the schedule's lr times this: muon_lr at the peak
            group["lr_scale"] = tc.muon_lr / tc.learning_rate
        adamw = torch.optim.AdamW(decay_groups(model, tc.weight_decay, rest), lr=tc.learning_rate,
                                  betas=(tc.beta1, tc.beta2), **_fused(torch.optim.AdamW, device_type))
        return OptimizerChain(muon=muon, adamw=adamw)

    def describe(self, model):
        where = muon_assignment(model)
        named = dict(model.named_parameters())
        count = {part: sum(named[n].numel() for n, p in where.items() if p == part) for part in ("muon", "adamw")}
        tensors = {part: sum(1 for p in where.values() if p == part) for part in ("muon", "adamw")}
        return (f"muon: {tensors['muon']} hidden matrices ({count['muon']:,} parameters) to Muon at lr "
                f"{self.tc.muon_lr:g}; {tensors['adamw']} tensors ({count['adamw']:,}: embeddings, head, norms, "
                f"scalars) to AdamW at lr {self.tc.learning_rate:g}")


def build_optimizer(model: nn.Module, tc, device_type: str):
    """The --optimizer of `tc` for `model`'s parameters (after FSDP sharding, when --fsdp)."""
    return create("optimizer", tc.optimizer, tc).build(model, device_type)


def optimizer_line(model: nn.Module, tc) -> str:
    """The chosen optimiser's line for the training log, '' when it has nothing to say."""
    return get("optimizer", tc.optimizer)(tc).describe(model)
