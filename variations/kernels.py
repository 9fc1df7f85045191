"""Which implementation computes the attention normaliser: `--softmax_kernel auto|triton|torch`.

  torch   the reference modules of variations/softmax.py (materialise the T x T scores); everywhere
  triton  the fused kernels: variations/triton_attention.py for the elementwise normalisers (memory
          linear in T) and variations/triton_softmax.py row kernels for the rest; needs a CUDA
          device, or TRITON_INTERPRET=1 (Triton's CPU interpreter: exact but slow, for tests)
  auto    triton on a CUDA device when Triton is importable, torch elsewhere (the default)

Plain softmax keeps using F.scaled_dot_product_attention (FlashAttention) whatever the choice.
This module imports Triton only when asked, so everything works without it.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from errors import UserError

KERNEL_CHOICES = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    """The installed Triton's version, or None when it cannot be imported."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except Exception:  # a broken install (say a CUDA-only wheel on an unsupported platform)
        return None
    return triton.__version__


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def select(choice: str, device_type: str) -> tuple[str, str]:
    """("triton" | "torch", the reason) for --softmax_kernel `choice` on a device of `device_type`."""
    if choice not in KERNEL_CHOICES:
        raise UserError(f"--softmax_kernel must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    version = triton_version()
    if choice == "torch":
        return "torch", "--softmax_kernel torch"
    if choice == "triton":
        if version is None:
            raise UserError("--softmax_kernel triton: Triton is not installed; pip install triton "
                            "(or the extra ppa-gpt[triton]), or use --softmax_kernel torch")
        if device_type != "cuda" and not interpreter_on():
            raise UserError(f"--softmax_kernel triton needs a CUDA device (this run is on {device_type}); "
                            "use --softmax_kernel auto/torch, or set TRITON_INTERPRET=1 for the slow CPU interpreter")
        how = "CPU interpreter" if interpreter_on() else "CUDA"
        return "triton", f"--softmax_kernel triton (Triton {version}, {how})"
    if device_type != "cuda":
        return "torch", f"auto: no CUDA device ({device_type})"
    if version is None:
        return "torch", "auto: Triton is not installed"
    if interpreter_on():
        return "torch", "auto: TRITON_INTERPRET is set (the interpreter is for tests; ask for --softmax_kernel triton)"
    return "triton", f"auto: CUDA and Triton {version}"


def has_kernel(normaliser) -> bool:
    """Whether the Triton kernels implement this normaliser (`kernel_spec`): every variant of
    variations/softmax.py; a variant elsewhere says `triton_kernel = False` when none does (pwl_softmax,
    variations/softmax_pwl.py), and attention then runs its torch module."""
    return getattr(normaliser, "triton_kernel", True)


def use_triton(choice: str, device: torch.device) -> bool:
    return select(choice, torch.device(device).type)[0] == "triton"


def describe(model, device: torch.device) -> str | None:
    """One line for the run log: the backend, why, and which layers take which path; None when no
    layer has a non-SDPA normaliser (the choice changes nothing)."""
    layers = [(i, block.attn) for i, block in enumerate(model.transformer.h) if block.attn.uses_softmax_kernel]
    if not layers:
        return None
    backend, reason = select(model.config.softmax_kernel, torch.device(device).type)
    if backend == "torch":
        return f"softmax kernel: torch reference ({reason})"
    paths = {}
    for i, attn in layers:
        if attn.quantised_inside:  # the kernels do not round at the activation sites: the torch path does
            path = f"torch, quantised at {'/'.join(attn.quantised_inside)}"
        elif not has_kernel(attn.softmax):  # a normaliser without a Triton kernel runs its module
            path = "torch, no Triton kernel for this normaliser"
        else:
            path = "fused attention" if attn.fusable else "fused rows"
        paths.setdefault(f"{path} ({attn.softmax.registry_name})", []).append(str(i))
    detail = "; ".join(f"{p}: layers {','.join(ls)}" for p, ls in paths.items())
    return f"softmax kernel: triton ({reason}); {detail}"


# The kernels run outside torch.compile's graph (a graph break around each call): Inductor then
# never has to trace the launches, and the compiled rest of the model is unchanged.

@functools.cache
def _rows():
    from variations.triton_softmax import fused_rows
    return torch.compiler.disable(fused_rows)


@functools.cache
def _attention():
    from variations.triton_attention import fused_attention
    return torch.compiler.disable(fused_attention)


def fused_rows(module, scores: torch.Tensor, window: int | None) -> torch.Tensor:
    """Causal `module(scores, mask)` by the Triton row kernel; scores (B, nh, T_q, T_k)."""
    return _rows()(module, scores, causal=True, window=window)


def fused_attention(module, q, k, v, window: int | None) -> torch.Tensor:
    """Causal attention weighted by an elementwise normaliser, by the Triton kernel: (B, nh, T_q, hs)."""
    return _attention()(module, q, k, v, window=window)
