"""Regenerate the JSONL documents of the offline lm-eval tasks in this folder from the Shakespeare plays.

    python data/lm_eval_tasks/build.py            # rewrite the *.jsonl files beside this script
    python data/lm_eval_tasks/build.py --check    # exit with an error if the committed files differ

The text is the validation split of data/shakespeare_char, rebuilt with data/prepare.py's own rule:
the plays of data.prepare.shakespeare_files() shuffled with seed 1337, joined with DOC_SEPARATOR, the
last 10% of the characters. The first SKIP_CHARS characters of that split are left out, because the
BPE set data/shakespeare cuts its split a few dozen characters later; everything used here is
validation text for both embedded data sets. Few-shot examples of shakespeare_nextline come from the
training part (they are shown to the model, never scored). Everything is deterministic (seed 1234).

    shakespeare_nextline.jsonl  {"context", "choices" (4 lines), "label"}: which line comes next
    shakespeare_nextline_fewshot.jsonl   the same, from the training text (fewshot_split: train)
    shakespeare_ppl.jsonl       {"text"}: passages for whole-document perplexity
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path


from data.prepare import DOC_SEPARATOR, read_document, shakespeare_files
from errors import ArgumentParser, UserError, run_cli
from io_utils import atomic_write_bytes

HERE = Path(__file__).resolve().parent
SPLIT_SEED, VAL_FRACTION = 1337, 0.1  # data/shakespeare_char/prepare.py's settings
SEED = 1234
SKIP_CHARS = 2000
NEXTLINE_DOCS, NEXTLINE_FEWSHOT_DOCS, CONTEXT_LINES, N_CHOICES = 200, 16, 4, 4
PPL_DOCS, PPL_CHARS = 64, 1200


def split_texts() -> tuple[str, str]:
    """(train text, validation text) of data/shakespeare_char, by data/prepare.py's rule."""
    docs = [(str(p), read_document(p)) for p in shakespeare_files()]
    docs = [(src, text) for src, text in docs if text]
    random.Random(SPLIT_SEED).shuffle(docs)  # the same call on the same list as data.prepare.prepare
    text = DOC_SEPARATOR.join(t for _, t in docs)
    cut = int(len(text) * (1 - VAL_FRACTION))
    return text[:cut], text[cut:]


def is_verse(line: str) -> bool:
    """A spoken line: not blank, not a stage direction ([Exit.]), not a speaker heading (HAMLET.)."""
    s = line.strip()
    return 15 <= len(s) <= 80 and not s.startswith("[") and not s.isupper()


def nextline_docs(text: str, n: int, rng: random.Random) -> list[dict]:
    """n documents: CONTEXT_LINES lines of one speech block, the true next line and 3 distractors."""
    lines = text.split("\n")
    pool = sorted({ln.rstrip() for ln in lines if is_verse(ln)})  # distractors: spoken lines anywhere
    # the target and its context lie in one block (no blank line between), so the context is the same speech
    eligible = [i for i in range(CONTEXT_LINES, len(lines) - 1)
                if is_verse(lines[i]) and all(ln.strip() for ln in lines[i - CONTEXT_LINES:i])]
    docs = []
    for i in sorted(rng.sample(eligible, n)):
        true = lines[i].rstrip()
        choices = [true] + rng.sample([ln for ln in pool if ln != true], N_CHOICES - 1)
        rng.shuffle(choices)
        docs.append({"context": "\n".join(lines[i - CONTEXT_LINES:i]) + "\n", "choices": choices,
                     "label": choices.index(true)})
    return docs


def ppl_docs(text: str, n: int, chars: int) -> list[dict]:
    """n passages of whole lines (at least `chars` characters), one starting in each n-th of the text,
    at the first paragraph (blank line) of its part."""
    docs = []
    part = len(text) // n
    for k in range(n):
        start = text.find("\n\n", k * part)
        if start < 0 or start >= (k + 1) * part:
            continue
        start += 2
        end = text.find("\n", start + chars)
        passage = text[start:end if end >= 0 else len(text)].strip("\n")
        if passage:
            docs.append({"text": passage})
    return docs


def build() -> dict[str, bytes]:
    """File name -> JSONL bytes of every task file."""
    train_text, val_text = split_texts()
    val_text = val_text[SKIP_CHARS:]
    rng = random.Random(SEED)
    files = {
        "shakespeare_nextline.jsonl": nextline_docs(val_text, NEXTLINE_DOCS, rng),
        "shakespeare_nextline_fewshot.jsonl": nextline_docs(train_text, NEXTLINE_FEWSHOT_DOCS, rng),
        "shakespeare_ppl.jsonl": ppl_docs(val_text, PPL_DOCS, PPL_CHARS),
    }
    return {name: "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
            for name, docs in files.items()}


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = ArgumentParser(prog="data/lm_eval_tasks/build.py", description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default=str(HERE), help="where to write the JSONL files (default: beside this script)")
    p.add_argument("--check", action="store_true", help="compare with the files in --out_dir instead of writing")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    built = build()
    if args.check:
        stale = [name for name, data in built.items()
                 if not (out / name).is_file() or (out / name).read_bytes() != data]
        if stale:
            raise UserError(f"{', '.join(stale)} in {out} differ from a rebuild; "
                            "run: python data/lm_eval_tasks/build.py")
    else:
        for name, data in built.items():
            atomic_write_bytes(out / name, data)
    counts = {name: data.count(b"\n") for name, data in built.items()}
    for name, data in built.items():
        print(f"{name}: {counts[name]} documents, {len(data) / 1000:.1f} kB")
    return counts


if __name__ == "__main__":
    sys.exit(run_cli(main))
