"""Train a byte-level BPE tokenizer on your own text; writes a Hugging Face `tokenizers` JSON file.

    python data/train_tokenizer.py --input my_texts/ --vocab_size 8192 --out tokenizer.json
    python data/prepare.py --input my_texts/ --out_dir data/mycorpus --tokenizer bpe --tokenizer_file tokenizer.json

Inputs are found and read exactly as data/prepare.py finds and reads them (files as given, folders
searched recursively for --glob; UTF-8, byte-order mark dropped, universal newlines; one document per
file). The tokenizer is GPT-2's scheme: a ByteLevel pre-tokenizer and decoder, and BPE merges learnt
by tokenizers' BpeTrainer on top of all 256 byte symbols, so any text encodes and there is no unknown
token. The special tokens (default `CHAT_SPECIAL_TOKENS` of data/tokenizer.py) take ids 0..k-1. The
same input and flags give a byte-identical file. It prints the vocabulary size and the compression
on the input (UTF-8 bytes per token, as data/prepare.py would encode it).
"""
from __future__ import annotations

import sys
from pathlib import Path


from data.prepare import find_input_files, read_document
from data.tokenizer import CHAT_SPECIAL_TOKENS, train_bpe
from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes


def train_tokenizer(inputs: list[str | Path], out: str | Path, vocab_size: int, min_frequency: int = 2,
                    special_tokens: list[str] | tuple[str, ...] = CHAT_SPECIAL_TOKENS, glob: str = "*.txt") -> dict:
    """Train on the input files, write `out` atomically; returns the statistics it prints."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'tokenizer.json'}")
    files = find_input_files(inputs, glob)
    docs = [text for text in (read_document(p) for p in files) if text]
    if not docs:
        raise UserError(f"all {len(files)} input files are empty; pass files that contain text")

    bpe = train_bpe(docs, vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
                    show_progress=sys.stderr.isatty())
    atomic_write_bytes(out, bpe.tok.to_str(pretty=True).encode("utf-8"))

    # compression as prepare.py sees it: every document encoded on its own, special tokens not counted
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(bpe.encode(d)) for d in docs)
    stats = {
        "out": str(out),
        "vocab_size": bpe.vocab_size,
        "special_tokens": bpe.special_tokens,
        "files": len(docs),
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens,
    }
    print(f"vocab {bpe.vocab_size} ({len(bpe.special_tokens)} special tokens), {stats['bytes_per_token']:.2f} bytes "
          f"per token on {len(docs)} files ({n_bytes:,} bytes -> {n_tokens:,} tokens) -> {out}")
    if bpe.vocab_size < vocab_size:
        print(f"note: the input has too few pairs seen --min_frequency {min_frequency} times to fill "
              f"--vocab_size {vocab_size}; add text or lower --min_frequency")
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="data/train_tokenizer.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="text files, or folders searched recursively for --glob files")
    parser.add_argument("--vocab_size", type=int, required=True,
                        help="tokens in the vocabulary, special tokens and the 256 bytes included (e.g. 8192)")
    parser.add_argument("--out", required=True, metavar="JSON", help="tokenizer file to write, e.g. tokenizer.json")
    parser.add_argument("--min_frequency", type=int, default=2, help="a pair is merged only if seen this often")
    parser.add_argument("--special_tokens", nargs="*", default=list(CHAT_SPECIAL_TOKENS), metavar="TOKEN",
                        help="control tokens, ids 0..k-1 in this order (default: %(default)s); "
                             f"prepare.py ends documents with {CHAT_SPECIAL_TOKENS[0]} when it is among them")
    parser.add_argument("--glob", default="*.txt", help="file pattern inside input folders")
    args = parser.parse_args(argv)
    return train_tokenizer(args.input, args.out, args.vocab_size, min_frequency=args.min_frequency,
                           special_tokens=args.special_tokens, glob=args.glob)


if __name__ == "__main__":
    sys.exit(run_cli(main))
