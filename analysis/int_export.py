"""Integer export of post-training-quantised weights: integers, scales and zero points in safetensors.

    python analysis/ptq.py --out_dir out/quickstart --weight_bits 8 --export out/quickstart/int8
    from analysis.int_export import load_int_export, build_model
    state_dict = load_int_export("out/quickstart/int8")   # dequantised, every name of the model's state dict
    model = build_model("out/quickstart/int8")            # the PTQ model, rebuilt from the export alone

DIR/model.int.safetensors holds, for each quantised weight matrix W (shape (out, in)):
    W                 the integers q: int8 for bits <= 8, int16 up to 16 bits
    W.scale           s, fp32: shape (out,) per output channel (row), () per tensor
    W.zero_point      z, same integer type as q (affine scheme only)
and every other tensor of the model's state dict (norms, biases, the normalisers' constants, the
activation sites' calibrated ranges) as it is, floating-point ones in fp32. The LM head, tied to the
token embedding, is stored once under the first name (its aliases are listed in quant.json).

    x = (q - z) * s          (z = 0 for the symmetric scheme; s broadcast along each row)

symmetric:  s = max|W| / (2^(b-1) - 1), q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1)
affine:     s = (hi - lo) / (2^b - 1), lo = min(W, 0), hi = max(W, 0), z_u = round(-lo / s),
            q_u = clamp(round(W / s) + z_u, 0, 2^b - 1); stored as q = q_u - 2^(b-1) and z = z_u - 2^(b-1)
            (the signed convention of ONNX / TFLite int8), so both fit b-bit signed integers and q - z is unchanged
The ranges are taken per row (per_channel) or over the whole matrix (per_tensor); rounding is torch.round
(to nearest, ties to even). These are variations.linear.fake_quant's grids, so the dequantised weights
are bit-identical to the fake-quantised ones (analysis/ptq.py checks the logits, torch.equal).

DIR/quant.json describes every stored tensor (bits, scheme, granularity, shape, dtype, integer type,
the names of its scale and zero point, its aliases), the formula, the model config (GPTConfig, with
the activation sites PTQ set) and the SHA-256 of the safetensors file, which the loader checks so a
quant.json never describes another export's integers. Both files are written atomically, quant.json last.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from errors import UserError
from gpt_conf import GPTConfig
from io_utils import atomic_write_bytes, atomic_write_json, read_json
from variations.linear import EPS

WEIGHTS_FILE = "model.int.safetensors"
QUANT_FILE = "quant.json"
FORMAT = "ppa-gpt-int/1"
FORMULA = "x = (q - z) * s"


def int_dtype(bits: int) -> torch.dtype:
    """The signed integer type that holds a b-bit code: int8 up to 8 bits, int16 up to 16."""
    if not 2 <= bits <= 16:
        raise ValueError(f"integer export needs 2..16 bits, got {bits}")
    return torch.int8 if bits <= 8 else torch.int16


def quantise_int(w: torch.Tensor, bits: int, scheme: str, per_channel: bool):
    """(q, s, z) of a weight matrix (module docstring); z is None for symmetric. s is (out,) per channel,
    () per tensor; q and z are signed integers of int_dtype(bits)."""
    x = w.detach().float()
    dims = {"dim": -1, "keepdim": True} if per_channel else {}
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(**dims).clamp(min=EPS) / qmax
        q = torch.clamp(torch.round(x / scale), -qmax - 1, qmax)
        zero = None
    elif scheme == "affine":
        lo, hi = x.amin(**dims).clamp(max=0.0), x.amax(**dims).clamp(min=0.0)
        scale = (hi - lo).clamp(min=EPS) / (2 ** bits - 1)
        zero_u = torch.round(-lo / scale)
        q_u = torch.clamp(torch.round(x / scale) + zero_u, 0, 2 ** bits - 1)
        offset = 2 ** (bits - 1)
        q, zero = q_u - offset, (zero_u - offset).to(int_dtype(bits))
        if per_channel:
            zero = zero.squeeze(-1)
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    return q.to(int_dtype(bits)), (scale.squeeze(-1) if per_channel else scale).float(), zero


def dequantise_int(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x = (q - z) * s, s and z broadcast along each row (per channel) or scalars; cast to dtype."""
    if scale.dim():  # per channel: one per row
        scale = scale.reshape(-1, *([1] * (q.dim() - 1)))
        zero = zero.reshape(-1, *([1] * (q.dim() - 1))) if zero is not None else None
    diff = q.float() - (zero.float() if zero is not None else 0.0)  # integers: exact in fp32 up to 2^24
    return (diff * scale).to(dtype)


def alias_groups(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """First name -> the other names of the same storage (the tied LM head): {'transformer.wte.weight': ['lm_head.weight']}."""
    first, groups = {}, {}
    for name, t in state.items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else (name,)
        if key in first:
            groups[first[key]].append(name)
        else:
            first[key] = name
            groups[name] = []
    return groups


def encode(state: dict[str, torch.Tensor], plan: dict[str, int], scheme: str, granularity: str,
           model_config: dict, extra: dict | None = None) -> tuple[bytes, dict]:
    """(safetensors bytes, quant.json) of a state dict; the tensors named in `plan` (first names of their
    alias groups) are quantised to their bits, the rest stored as they are (floating point as fp32).
    `extra` (the run, the checkpoint, the activation sites' ranges) is added to quant.json as it is."""
    from safetensors.torch import save
    per_channel = granularity == "per_channel"
    tensors, described = {}, {}
    for name, aliases in alias_groups(state).items():
        t = state[name].detach().cpu()
        if name in plan:
            bits = plan[name]
            q, s, z = quantise_int(t, bits, scheme, per_channel)
            tensors[name], tensors[f"{name}.scale"] = q.contiguous(), s.contiguous()
            if z is not None:
                tensors[f"{name}.zero_point"] = z.contiguous()
            described[name] = {"quantised": True, "bits": bits, "scheme": scheme, "granularity": granularity,
                               "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                               "int_dtype": str(q.dtype).removeprefix("torch."), "scale": f"{name}.scale",
                               "zero_point": f"{name}.zero_point" if z is not None else None, "aliases": aliases}
        else:
            tensors[name] = (t.float() if t.is_floating_point() else t).contiguous()
            described[name] = {"quantised": False, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                               "stored_as": str(tensors[name].dtype).removeprefix("torch."), "aliases": aliases}
    missing = set(plan) - set(described)
    if missing:
        raise KeyError(f"plan names tensors that are not first names of the state dict: {sorted(missing)}")
    data = save(tensors, metadata={"format": FORMAT})
    quant = {"format": FORMAT, "formula": FORMULA,
             "formula_notes": "z = 0 (no zero_point tensor) for symmetric; s and z per output channel (one per "
                              "row, dim 0) for per_channel, scalars for per_tensor; affine codes are stored offset "
                              "by -2^(bits-1) so q and z are signed (q - z unchanged)",
             "weights_file": WEIGHTS_FILE, "weights_sha256": hashlib.sha256(data).hexdigest(),
             **(extra or {}), "model_config": model_config, "tensors": described}
    return data, quant


def decode(tensors: dict[str, torch.Tensor], quant: dict) -> dict[str, torch.Tensor]:
    """The dequantised state dict (every alias present) of an export's tensors and quant.json."""
    state = {}
    for name, d in quant["tensors"].items():
        dtype = getattr(torch, d["dtype"])
        if d["quantised"]:
            zero = tensors[d["zero_point"]] if d["zero_point"] else None
            value = dequantise_int(tensors[name], tensors[d["scale"]], zero, dtype)
        else:
            value = tensors[name].to(dtype)
        for alias in (name, *d["aliases"]):
            state[alias] = value
    return state


def write_export(dest: str | Path, data: bytes, quant: dict) -> Path:
    """DIR/model.int.safetensors then DIR/quant.json, each atomically."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--export {dest} is a file, not a folder; choose another --export")
    atomic_write_bytes(dest / WEIGHTS_FILE, data)
    atomic_write_json(dest / QUANT_FILE, quant)
    return dest


def read_export(dest: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, quant.json) of an export folder, the checksum checked."""
    from safetensors.torch import load
    dest = Path(dest)
    weights, quant_path = dest / WEIGHTS_FILE, dest / QUANT_FILE
    if not weights.is_file() or not quant_path.is_file():
        raise UserError(f"{dest} is not an integer export (needs {WEIGHTS_FILE} and {QUANT_FILE}); write one with: "
                        "python analysis/ptq.py --out_dir RUN --weight_bits 8 --export DIR")
    quant = read_json(quant_path, "integer export description")
    if not isinstance(quant, dict) or quant.get("format") != FORMAT:
        raise UserError(f"{quant_path} is not a {FORMAT} description; re-export with analysis/ptq.py --export")
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != quant.get("weights_sha256"):
        raise UserError(f"{weights} does not match {quant_path} (checksum differs: an export was interrupted or "
                        "files were mixed); re-export with analysis/ptq.py --export")
    return load(data), quant


def load_int_export(dest: str | Path) -> dict[str, torch.Tensor]:
    """The dequantised state dict of an export folder (load it into GPT(config) with strict=True)."""
    return decode(*read_export(dest))


def build_model(dest: str | Path):
    """The GPT of an export folder (its config from quant.json, weights dequantised), in eval mode."""
    tensors, quant = read_export(dest)
    return model_from(decode(tensors, quant), quant["model_config"])


def model_from(state: dict[str, torch.Tensor], model_config: dict):
    """GPT(model_config) holding `state` (strict), in eval mode."""
    from model import GPT
    model = GPT(GPTConfig.from_dict(model_config))
    model.load_state_dict(state, strict=True)
    return model.eval()


def round_trip(data: bytes, quant: dict):
    """The model the export bytes describe, rebuilt as a loader would (the check before writing)."""
    from safetensors.torch import load
    return model_from(decode(load(data), json.loads(json.dumps(quant))), quant["model_config"])
