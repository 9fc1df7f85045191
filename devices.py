"""Devices and number formats: choosing the device and autocast dtype, memory high-water marks, and
peak FLOP/s for model FLOPs utilisation (MFU). One owner for what train.py, sample.py, chat.py, the
lm-eval adapter and the benchmarks each need.

    from devices import choose_device, choose_dtype, autocast
    device = choose_device("auto")                 # cuda > mps > cpu
    with autocast(device, choose_dtype("auto", device)):
        logits, _ = model(idx)
"""
from __future__ import annotations

import resource
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype choices


def choose_device(name: str, local_rank: int | None = None) -> torch.device:
    """--device: auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps; under torchrun cuda means cuda:LOCAL_RANK."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is bfloat16 on CUDA that supports it, float16 on older CUDA, float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for `dtype` on `device` (a no-op for float32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def peak_memory_bytes(device: torch.device) -> int:
    """The device's (CUDA, MPS) or this process's (CPU) memory high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    try:  # Linux: this process's own high-water mark (ru_maxrss can carry a parent's peak into a child)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024)


# Dense peak throughput (FLOP/s) of common accelerators: (bf16/fp16 tensor, tf32 tensor).
# Matched by substring of torch.cuda.get_device_name(), most specific first. Sources: vendor data sheets.
PEAK_FLOPS = [
    ("H100 PCIe", 756e12, 378e12), ("H100 NVL", 835e12, 418e12), ("H100", 989e12, 495e12),
    ("H200", 989e12, 495e12), ("GH200", 989e12, 495e12), ("B200", 2250e12, 1100e12), ("B100", 1750e12, 875e12),
    ("A100", 312e12, 156e12), ("A800", 312e12, 156e12), ("A10G", 70e12, 35e12), ("A10", 125e12, 62.5e12),
    ("A6000", 155e12, 77e12), ("L40S", 362e12, 183e12), ("L40", 181e12, 90.5e12), ("L4", 121e12, 60e12),
    ("RTX 4090", 165e12, 82.6e12), ("RTX 3090", 71e12, 35.6e12), ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12), ("MI300X", 1307e12, 654e12), ("MI250", 362e12, 45e12),
]


def peak_flops(device: torch.device | str, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of the device for matmuls in `dtype`, or None when unknown (CPU, MPS, other GPUs)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, tf32 in PEAK_FLOPS:
        if key in name:
            return half if dtype in (torch.bfloat16, torch.float16) else tf32
    return None


def estimate_mfu(model, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (None if unknown)."""
    if not peak:
        return None
    return model.flops_per_token() * tokens_per_s / peak
