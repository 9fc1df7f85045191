"""Generate text from a trained run: the model is rebuilt from its checkpoint alone.

    python sample.py --out_dir out/quickstart
    python sample.py --out_dir out/quickstart --start "ROMEO:" --num_samples 3 --max_new_tokens 300 \
        --temperature 0.8 --top_k 40 --top_p 0.95 --seed 7
    python sample.py --out_dir out/quickstart --start FILE:prompt.txt --ckpt last

The checkpoint is loaded with torch.load(weights_only=True); the tokenizer comes from the run's
meta.json (written by train.py). Generation uses a KV cache (--no-kv_cache to compare).
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from data.tokenizer import load_tokenizer
from errors import ArgumentParser, UserError, run_cli
from io_utils import load_checkpoint, read_json
from model import GPT
from train import choose_device, choose_dtype


def load_run(out_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode on device, tokenizer, checkpoint dict) of a run directory."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"run directory {out_dir} not found; train one with: python train.py --out_dir {out_dir}")
    path = out_dir / f"ckpt_{which}.pt"
    if which == "best" and not path.exists() and (out_dir / "ckpt_last.pt").exists():
        path = out_dir / "ckpt_last.pt"
    ckpt = load_checkpoint(path, map_location="cpu")
    model = GPT.from_checkpoint(ckpt).to(device).eval()
    tokenizer = load_tokenizer(read_json(out_dir / "meta.json", "tokenizer description"))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{out_dir}/meta.json describes {tokenizer.vocab_size} tokens but the model has "
                        f"{model.config.vocab_size}; the run directory mixes two runs")
    return model, tokenizer, ckpt


def read_start(start: str) -> str:
    """--start text, or the contents of a file given as FILE:path."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--start {start}: cannot read {path} ({e.__class__.__name__})") from None
    return start


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sample.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out_dir", default="out/quickstart", help="run directory written by train.py")
    p.add_argument("--ckpt", choices=("best", "last"), default="best", help="which checkpoint of the run")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path to read it from a file")
    p.add_argument("--num_samples", type=int, default=1, help="independent samples to draw")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    p.add_argument("--top_k", type=int, default=200, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set with this mass")
    p.add_argument("--seed", type=int, default=1337, help="random seed of the sampler")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="autocast dtype on CUDA (auto: bfloat16 where supported)")
    p.add_argument("--kv_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse keys/values of earlier positions (same tokens, faster)")
    return p


def main(argv: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise UserError("--num_samples must be at least 1 and --max_new_tokens at least 0")
    if args.temperature < 0:
        raise UserError(f"--temperature must not be negative, got {args.temperature}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")
    device = choose_device(args.device, None)
    dtype = choose_dtype(args.dtype, device)
    model, tok, _ = load_run(args.out_dir, args.ckpt, device)

    ids = tok.encode(read_start(args.start))
    if not ids:
        if tok.eot_token is None:
            raise UserError("--start is empty and this tokenizer has no end-of-text token to start from; give a prompt")
        ids = [tok.eot_token]
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]  # (1, T)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ctx = torch.autocast(device.type, dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else nullcontext()
    samples = []
    with ctx:
        for i in range(args.num_samples):
            y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                               top_p=args.top_p, use_cache=args.kv_cache, generator=gen,
                               vocab_limit=tok.vocab_size)
            text = tok.decode(y[0].tolist())
            samples.append(text)
            print(text)
            if i < args.num_samples - 1:
                print("-" * 40)
    return samples


if __name__ == "__main__":
    sys.exit(run_cli(main))
