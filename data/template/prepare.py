"""Template data set: tokenizes the input.txt beside this script into train.bin, val.bin, meta.json.

Copy the folder, put your UTF-8 text in input.txt, run the copy, train (see README.md):

    cp -r data/template data/mycorpus && cp my_text.txt data/mycorpus/input.txt
    python data/mycorpus/prepare.py [--tokenizer char|byte|tiktoken|bpe] [--encoding gpt2] [--tokenizer_file JSON]
    python train.py --dataset mycorpus
"""
from __future__ import annotations

import sys
from pathlib import Path


from data.prepare import prepare
from data.tokenizer import TOKENIZERS, TRAIN_HINT, BPETokenizer
from errors import ArgumentParser, UserError, run_cli

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="data/template/prepare.py", description="Tokenize input.txt beside this script.")
    parser.add_argument("--tokenizer", default="char", choices=list(TOKENIZERS),
                        help="how text becomes token ids (data/tokenizer.py); bpe needs --tokenizer_file")
    parser.add_argument("--encoding", default="gpt2", help="tiktoken encoding (only with --tokenizer tiktoken)")
    parser.add_argument("--tokenizer_file", default=None, metavar="JSON",
                        help="tokenizer.json of --tokenizer bpe, written by data/train_tokenizer.py")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="last fraction of the text used for val")
    args = parser.parse_args(argv)
    if args.tokenizer == BPETokenizer.name and args.tokenizer_file is None:
        raise UserError(f"--tokenizer {BPETokenizer.name} needs --tokenizer_file; {TRAIN_HINT}")
    text = HERE / "input.txt"
    if not text.is_file():
        raise UserError(f"{text} not found; put your UTF-8 training text there and run this script again")
    return prepare([text], HERE, tokenizer=args.tokenizer, encoding=args.encoding, val_fraction=args.val_fraction,
                   tokenizer_file=args.tokenizer_file)


if __name__ == "__main__":
    sys.exit(run_cli(main))
